#!/usr/bin/env bash
# Fetch, on the development machine, the wheels the GPU image lacks, into .whl/ (git-ignored),
# and copy the shared CIFAR-10 (JPEG q75) archive into .gpu-data/ (git-ignored) so both can
# travel to the device machine with `carry: [".whl", ".gpu-data"]`. See scripts/gpu_slice.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .gpu-data
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
    foolbox==3.3.4 eagerpy==0.30.0 GitPython==3.2.1 gitdb==4.0.12 smmap==5.0.3 adversarial-robustness-toolbox==1.20.1 \
    hydra-core==1.3.8 omegaconf==2.3.1 torchattacks==3.5.1
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) ships only as an sdist: build its wheel here.
pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
cp -f ../shared/data/cifar10-jpeg.tar.gz .gpu-data/
# The device machine gets no .git: pass on the commit (rerun this after committing).
git_dirty=$(git status --porcelain --untracked-files=no)
echo "$(git rev-parse --short=12 HEAD)${git_dirty:+-dirty}" >.gpu-data/COMMIT
ls -la .whl .gpu-data

#!/usr/bin/env bash
# Bundle what an offline GPU node needs to run the study with scripts/timeboxed_study.sh: wheels of
# the packages a stock PyTorch image lacks, for CPython 3.12 on x86-64 Linux, into .whl/, and the
# CIFAR-10 (JPEG q75) archive into .gpu-data/ (both git-ignored). Copy the repository with both
# folders to the node. docs/offline-gpu.md has the whole recipe.
#   bash scripts/offline_bundle.sh [path/to/cifar10-jpeg.tar.gz]
set -euo pipefail
cd "$(dirname "$0")/.."
archive=${1:-../shared/data/cifar10-jpeg.tar.gz}
mkdir -p .whl .gpu-data
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
    foolbox==3.3.4 eagerpy==0.30.0 GitPython==3.2.1 gitdb==4.0.12 smmap==5.0.3 adversarial-robustness-toolbox==1.20.1 \
    hydra-core==1.3.8 omegaconf==2.3.1 torchattacks==3.5.1
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) ships only as an sdist: build its wheel here.
pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
cp -f "$archive" .gpu-data/
# A copy made without .git cannot name its commit: record it, for the run records to name.
git_dirty=$(git status --porcelain --untracked-files=no)
echo "$(git rev-parse --short=12 HEAD)${git_dirty:+-dirty}" >.gpu-data/COMMIT
ls -la .whl .gpu-data

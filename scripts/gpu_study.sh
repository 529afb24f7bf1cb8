#!/usr/bin/env bash
# One ~10-minute GPU slice of the CIFAR-10 (JPEG q75) study (issue: publish the leaderboard).
# Runs on the device machine, from the repo root, after scripts/gpu_wheels.sh ran here:
#   run(command="bash scripts/gpu_study.sh", carry=[".whl", ".gpu-data"], timeout_s=600)
# The study is resumable per record: records already in results/runs/ (committed from earlier
# slices) are skipped, so each slice does the units still missing. The new records come back in
# $OUT/runs.tgz (the device tool returns at most 8 files); unpack it into results/runs/ here,
# commit, and run `python -m robust_mnv1.leaderboard`.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 ROBUST_MNV1_CACHE=/tmp/robust_mnv1_cache
out=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
# Stop starting new work well before the device tool's 10-minute limit so the records get packed.
timeout --signal=INT "${STUDY_SECONDS:-480}" python3 -m robust_mnv1.run experiment=study device=cuda \
    data=imagefolder data.root=.gpu-data/cifar10-jpeg.tar.gz "hydra.run.dir=/tmp/hydra" "$@" \
    2>&1 | grep -v 'batch/s' | tee "$out/study.log" || true
tar czf "$out/runs.tgz" results/runs

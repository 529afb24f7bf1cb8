#!/usr/bin/env bash
# Run `experiment=study` on a machine you hold for a fixed time (a short cluster allocation, an
# offline GPU node), train first and evaluate with the time that is left, then pack what it made
# so that another machine can publish it or carry on:
#
#   BUDGET=3600 PACK=/scratch/pack bash scripts/timeboxed_study.sh [Hydra overrides ...]
#
# Environment (all optional):
#   BUDGET   seconds for the whole script (default 3600); training gets all of it if it needs it
#   PACK     where the results are packed (default ./pack)
#   DATA     the CIFAR-10 (JPEG q75) archive (default ../shared/data/cifar10-jpeg.tar.gz)
#   DEVICE   auto, cuda or cpu (default auto)
#   JOBS     units run at once (default 4 on a GPU, 2 on a CPU; see study.jobs)
#   WHEELS   a folder of wheels to install first, for a node without a package index
#   PART_MB  size of the pieces the model tar is split into (default 14)
#
# It leaves in PACK: records.tgz (results/runs, unpack in the repository root) and the trained
# models of the cache as models.tar.part-NN pieces, smallest models first (reassemble with
# `cat models.tar.part-* | tar x -C ~/.cache/robust_mnv1`). Cache keys name the data by its
# sha256, not its path, so the models are found there and a later `experiment=study` run
# evaluates them without retraining. Everything resumes: rerunning continues from the
# finished records and from the last finished epoch of any interrupted training.
set -uo pipefail
start=$SECONDS
budget=${BUDGET:-3600}
pack=${PACK:-pack}
data=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
device=${DEVICE:-auto}
reserve=30 # seconds kept for packing
if [[ -n ${WHEELS:-} ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
if [[ -z ${JOBS:-} ]]; then
    JOBS=$(python3 -c "import torch; print(4 if torch.cuda.is_available() and '$device' != 'cpu' else 2)")
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
[[ $device == cpu ]] && export OMP_NUM_THREADS=1
cache=${ROBUST_MNV1_CACHE:-$HOME/.cache/robust_mnv1}
mkdir -p "$pack"
left() { echo $((budget - reserve - (SECONDS - start))); }

# phase NAME EVALUATE: the study in JOBS workers, stopped with SIGINT when the budget runs out
# (finished records and epochs are already on disk).
phase() {
    local limit
    limit=$(left)
    if ((limit < 20)); then
        echo "== $1: skipped, no time left"
        return 1
    fi
    echo "== $1: up to ${limit}s"
    timeout --signal=INT --kill-after=20 "$limit" python3 -m robust_mnv1.run experiment=study \
        device="$device" data.root="$data" study.jobs="$JOBS" study.evaluate="$2" \
        hydra.run.dir="outputs/timeboxed-$1" "${@:3}"
    local rc=$?
    echo "== $1: exit $rc after $((SECONDS - start))s"
    return $rc
}

phase train false "$@" && phase evaluate true "$@"

tar czf "$pack/records.tgz" results/runs
rm -f "$pack"/models.tar.part-*
# Smallest first, so that the first pieces hold the most models; each checkpoint before its
# sidecar, whose presence tells the cache that the weights beside it are complete.
(cd "$cache" && find models -name '*.safetensors' -printf '%s %p\n' | sort -n | cut -d' ' -f2- |
    while read -r f; do [[ -e $f.json ]] && printf '%s\n%s.json\n' "$f" "$f"; done) |
    tar cf - -C "$cache" -T - | split -b "${PART_MB:-14}m" -d -a 2 - "$pack/models.tar.part-"
ls -l "$pack"
echo "== done after $((SECONDS - start))s"

#!/usr/bin/env bash
# Restores one file in segments as a Slurm job array, one task per segment, then joins them in a
# job that depends on the array. Not run by the tests (there is no Slurm here);
# scripts/restore-on-ray.py is the tested way to spread segments, and this uses the same command.
#
#   N=$(gst-gpen-restore --plan 8 film.mp4 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["segments"]))')
#   jid=$(sbatch --parsable --array=0-$((N - 1)) examples/slurm-array.sh film.mp4 work/film "$N" --size 512 --fp16)
#   segs=$(for i in $(seq 0 $((N - 1))); do printf 'work/film/segment-%04d-of-%04d.mkv ' "$i" "$N"; done)
#   sbatch --dependency=afterok:"$jid" --wrap "gst-gpen-restore --join film-restored.mp4 $segs --audio-from film.mp4"
#
# Arguments: INPUT WORKDIR N [gst-gpen-restore options]. The work folder must be on a file system
# every node sees. A requeued or resubmitted task redoes its segment unless its file is already
# complete (checked by its frame count), so resubmitting the array after an interruption redoes
# only the unfinished segments.
#SBATCH --job-name=gpen-segments
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --requeue
#SBATCH --output=gpen-segment-%A_%a.log
set -euo pipefail
if [ $# -lt 3 ] || [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  echo "usage: sbatch --array=0-<N-1> $0 INPUT WORKDIR N [gst-gpen-restore options]" >&2
  exit 2
fi
input=$1 work=$2 n=$3
shift 3
mkdir -p "$work"
segment=$(printf '%s/segment-%04d-of-%04d.mkv' "$work" "$SLURM_ARRAY_TASK_ID" "$n")
exec gst-gpen-restore "$input" "$segment" --segment "$SLURM_ARRAY_TASK_ID/$n" "$@"

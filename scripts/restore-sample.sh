#!/usr/bin/env bash
# The main job: restore the faces of the sample footage (../shared/media/videos/short_hamilton_clip.mp4)
# with gpenfilter, into out/short_hamilton_clip-restored.mp4.
#   scripts/restore-sample.sh [gst-gpen-restore OPTIONS ...]      e.g.  scripts/restore-sample.sh --fp16
# With the official GPEN-BFR-512.pth in the weights folder it is a real restoration; without
# it a small test checkpoint with random weights runs instead, and the output is NOT a real
# restoration (the script says so). The face detector is RetinaFace (MobileNet-0.25, MIT) from
# ../shared/weights unless one is installed in the weights folder.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

input=../shared/media/videos/short_hamilton_clip.mp4
output=out/short_hamilton_clip-restored.mp4
mkdir -p out
weights=${GST_GPEN_MODEL_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/gst-gpen/weights}
if [ ! -f "$weights/GPEN-BFR-512.pth" ]; then
  echo "restore: GPEN-BFR-512.pth is not installed; trying to download it (scripts/install-weights.py)"
  python3 scripts/install-weights.py --dir "$weights" --timeout 20 GPEN-BFR-512 ParseNet-latest retinaface-mnet025-fd1mb \
    || echo "restore: the download failed (reasons above)"
fi
if [ -f "$weights/GPEN-BFR-512.pth" ]; then
  props=(--model "$weights/GPEN-BFR-512.pth" --size 512)
  echo "restore: using the official weights $weights/GPEN-BFR-512.pth"
else
  props=(--model ../shared/fixtures/gpen/gpen-256-tiny.pth --size 256)
  cat <<MSG
restore: the official GPEN-BFR-512.pth is not in $weights
         and could not be downloaded from this machine.
         Running with the TEST checkpoint ../shared/fixtures/gpen/gpen-256-tiny.pth (random weights):
         faces are found, aligned, run through GPEN and pasted back, but the output is NOT a
         real restoration.
MSG
fi
detector=""
for name in RetinaFace-R50.pth retinaface-mnet025-fd1mb.pth retinaface-mnet025-std.pth; do
  [ -f "$weights/$name" ] && { detector="$weights/$name"; break; }
done
props+=(--detector-model "${detector:-../shared/weights/retinaface-mnet025-fd1mb.pth}")

cargo build --release --bin gst-gpen-restore 2>&1 | tail -1
target/release/gst-gpen-restore "$input" "$output" "${props[@]}" "$@"

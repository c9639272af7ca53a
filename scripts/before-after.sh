#!/usr/bin/env bash
# Before/after picture of a real restoration for the manual (docs/performance.md): GPEN's own example photo
# (../shared/media/images/solvay_conference_1927.png, 1927, public domain) restored by gpenfilter
# with the official GPEN-BFR-512 weights, original left and restored right, into
# out/before-after.png.
#   scripts/before-after.sh [--model CHECKPOINT --size N]
# Without the official weights (scripts/install-weights.py GPEN-BFR-512) it says so and stops:
# a picture made with random test weights would not show a restoration. --model overrides that
# (for checking the command itself; the picture is then labelled as a test in the file name).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
weights=${GST_GPEN_MODEL_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/gst-gpen/weights}
model="$weights/GPEN-BFR-512.pth"; size=512; out=out/before-after.png
if [ "${1:-}" = "--model" ]; then model=$2; size=${4:-512}; out=out/before-after-TEST-WEIGHTS.png; fi
if [ ! -f "$model" ]; then
  echo "before-after: the official weights $model are not installed, so no real restoration can be shown." >&2
  echo "before-after: install them with scripts/install-weights.py GPEN-BFR-512 (needs internet), then run this again." >&2
  exit 1
fi
detector=../shared/weights/retinaface-mnet025-fd1mb.pth
[ -f "$weights/RetinaFace-R50.pth" ] && detector="$weights/RetinaFace-R50.pth"
input=../shared/media/images/solvay_conference_1927.png
cargo build --release --lib 2>&1 | tail -1
mkdir -p out
export GST_PLUGIN_PATH=$PWD/target/release
# Original and restored side by side, each at the photo's size.
width=$(python3 -c "import struct,sys; f=open(sys.argv[1],'rb'); f.read(16); print(struct.unpack('>I', f.read(4))[0])" "$input")  # PNG IHDR width
gst-launch-1.0 -q compositor name=c sink_1::xpos="$width" ! videoconvert ! pngenc ! filesink location="$out" \
  filesrc location="$input" ! decodebin ! videoconvert ! video/x-raw,format=RGB ! tee name=t \
  t. ! queue ! c. \
  t. ! queue ! gpenfilter model="$model" size="$size" detector-model="$detector" ! c.
echo "before-after: wrote $out (left: original, right: restored with $(basename "$model"))"

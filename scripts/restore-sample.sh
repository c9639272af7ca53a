#!/usr/bin/env bash
# The main job: restore a clip of aligned faces with gpenfilter (GPEN's --aligned mode).
#   scripts/restore-sample.sh [gpenfilter properties…]      e.g.  scripts/restore-sample.sh fp16=true
# The clip is assembled with GStreamer from the aligned face crops in ../shared/fixtures/gpen
# and written to out/aligned-faces.mp4; the restored clip is out/aligned-faces-restored.mp4.
# With the official GPEN-BFR-512.pth installed in the weights folder it is a real restoration;
# without it, a small test checkpoint with random weights runs instead, and the output is not a
# real restoration (the script says so).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --lib
export GST_PLUGIN_PATH="$PWD/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"

out=out
mkdir -p "$out/frames"
rm -f "$out"/frames/*.png
weights=${GST_GPEN_MODEL_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/gst-gpen/weights}
if [ -f "$weights/GPEN-BFR-512.pth" ]; then
  model="$weights/GPEN-BFR-512.pth"; size=512
  echo "restore: using the official weights $model"
else
  model=../shared/fixtures/gpen/gpen-256-tiny.pth; size=256
  cat <<MSG
restore: the official GPEN-BFR-512.pth is not in $weights
         (download it from the GPEN project, see README "Weights", or set GST_GPEN_MODEL_DIR).
         Running with the TEST checkpoint $model (random weights):
         the output shows that the pipeline works; it is NOT a real restoration.
MSG
fi

# 3 aligned crops x 20 frames each, at 10 frames per second.
n=0
for crop in ../shared/fixtures/gpen/gpen-256-tiny.input0.png ../shared/fixtures/gpen/gpen-256-tiny.input1.png \
            ../shared/fixtures/gpen/gpen-512-tiny.input0.png; do
  for _ in $(seq 20); do cp "$crop" "$(printf '%s/frames/%04d.png' "$out" "$n")"; n=$((n + 1)); done
done
gst-launch-1.0 -q multifilesrc location="$out/frames/%04d.png" caps="image/png,framerate=10/1" \
  ! pngdec ! videoconvert ! videoscale ! "video/x-raw,width=$size,height=$size" ! videoconvert \
  ! x264enc pass=quant quantizer=12 ! mp4mux ! filesink location="$out/aligned-faces.mp4"
echo "restore: assembled $out/aligned-faces.mp4 ($n frames of ${size}x${size} aligned faces)"

start=$(date +%s.%N)
gst-launch-1.0 -q filesrc location="$out/aligned-faces.mp4" ! decodebin ! videoconvert \
  ! gpenfilter aligned=true size="$size" model="$model" "$@" \
  ! videoconvert ! x264enc pass=quant quantizer=12 ! mp4mux ! filesink location="$out/aligned-faces-restored.mp4"
end=$(date +%s.%N)
echo "restore: wrote $out/aligned-faces-restored.mp4 ($n frames in $(python3 -c "print(f'{$end-$start:.1f}')") s)"

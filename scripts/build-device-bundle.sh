#!/usr/bin/env bash
# Builds everything the GPU check needs into one folder, on a build machine (this repository
# with .venv, cargo and GStreamer; no GPU needed), for a GPU machine with no network, cargo or
# apt: see "GPU check" in docs/memory.md. Output: out/device-bundle/ (and out/device-bundle.tar).
#
#   bin/cuda-tests        tests/cuda.rs built with --features cuda-tests
#   bin/bench_memory      examples/bench_memory.rs (budgets; 1080p frames per second end to end)
#   bin/bench_gpen        examples/bench_gpen.rs (the model alone: faces per second by batch size)
#   plugin/libgstgpen.so  the element, for gst-launch-1.0
#   lib/                  the non-torch shared libraries the binaries need (GStreamer, GLib, ...),
#                         used on the GPU machine only where it lacks them
#   shared/               the fixtures: the GPEN-512 fixture (MANIFEST.json cut to it, expected
#                         tensors cut to input and output), the detector weights, a test image
#                         and a 1080p MJPEG clip made from the sample clip
#   device-check.sh       the check (scripts/device-check.sh)
#
# Release build without LTO by default (BUNDLE_LTO=thin for the shipped setting): the check
# measures libtorch's kernels, which LTO does not touch, and thin LTO of the test binary is slow.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/out/device-bundle
shared=${GST_GPEN_SHARED:-$root/../shared}
start=$(date +%s)

export LIBTORCH=${LIBTORCH:-$root/.venv/libtorch}
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_PROFILE_RELEASE_LTO=${BUNDLE_LTO:-false}
[ -e "$LIBTORCH/lib/libtorch_cpu.so" ] || { echo "bundle: no libtorch at $LIBTORCH (run scripts/setup.sh)" >&2; exit 1; }
[ -e "$shared/fixtures/gpen/MANIFEST.json" ] || { echo "bundle: no fixtures under $shared (set GST_GPEN_SHARED)" >&2; exit 1; }
py=$root/.venv/bin/python

echo "bundle: building (release, lto=$CARGO_PROFILE_RELEASE_LTO)"
cargo build --release --features cuda-tests --lib --example bench_memory --example bench_gpen
test_bin=$(cargo test --release --features cuda-tests --test cuda --no-run --message-format=json \
  | "$py" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
[ -x "$test_bin" ] || { echo "bundle: no test executable for tests/cuda.rs" >&2; exit 1; }
built=$(date +%s)

rm -rf "$out"
mkdir -p "$out"/{bin,plugin,lib,shared/fixtures/gpen,shared/fixtures/parsenet,shared/fixtures/whole-frame,shared/weights,shared/media/images,shared/media/videos}
cp "$test_bin" "$out/bin/cuda-tests"
cp target/release/examples/bench_memory "$out/bin/bench_memory"
cp target/release/examples/bench_gpen "$out/bin/bench_gpen"
cp target/release/libgstgpen.so "$out/plugin/libgstgpen.so"
strip --strip-debug "$out"/bin/* "$out"/plugin/*.so

# The binaries find libtorch through a RUNPATH into .venv, which the GPU machine lacks; there
# LD_LIBRARY_PATH points at the system torch, which wins over a RUNPATH (not over an RPATH).
for f in "$out"/bin/* "$out"/plugin/*.so; do
  dyn=$(readelf -d "$f")
  if grep -q '(RPATH)' <<<"$dyn"; then echo "bundle: $f has an RPATH, which LD_LIBRARY_PATH cannot override" >&2; exit 1; fi
  grep -q '(RUNPATH)' <<<"$dyn" || echo "bundle: note: $f has no RUNPATH"
done

# Shared libraries outside libtorch and the C/C++ runtime (GStreamer, GLib, ORC, turbojpeg, ...).
ldd "$out"/bin/* "$out"/plugin/*.so | awk '/=> \//{print $1" "$3}' | sort -u | while read -r name path; do
  case "$path" in "$(readlink -f "$LIBTORCH")"/*|$LIBTORCH/*|*/site-packages/*) continue ;; esac
  case "$name" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libutil.so*|libresolv.so*|libgcc_s.so*|libstdc++.so*|ld-linux*) continue ;;
  esac
  cp -L "$path" "$out/lib/$name"
done

# Fixtures: the GPEN-512 fixture (the size users run; the 256 ones add 20 MiB), its expected tensors cut to what
# tests/cuda.rs reads (input, output).
models="gpen-512-tiny"
"$py" - "$shared/fixtures/gpen" "$out/shared/fixtures/gpen" $models <<'EOF'
import json, sys
from safetensors.torch import load_file, save_file
src, dst, names = sys.argv[1], sys.argv[2], sys.argv[3:]
manifest = json.load(open(f"{src}/MANIFEST.json"))
manifest["models"] = [m for m in manifest["models"] if m["file"][:-4] in names]
manifest["bundle"] = "cut for the device bundle: expected tensors hold input and output only"
json.dump(manifest, open(f"{dst}/MANIFEST.json", "w"), indent=1)
for m in manifest["models"]:
    t = load_file(f"{src}/{m['expected']}")
    save_file({k: t[k].contiguous() for k in ("input", "output")}, f"{dst}/{m['expected']}")
EOF
for m in $models; do cp "$shared/fixtures/gpen/$m.pth" "$out/shared/fixtures/gpen/"; done
cp "$shared"/weights/retinaface-mnet025-*.pth "$shared"/weights/LICENSE.retinaface-* "$out/shared/weights/"
cp "$shared/media/images/grace_hopper_512x512.jpg" "$shared/media/images/astronaut.png" "$out/shared/media/images/"
# Face parsing on CUDA: the ParseNet fixture, its input and expected logits, GPEN's whole frame.
cp "$shared/fixtures/gpen/gpen-512-tiny.output0.png" "$out/shared/fixtures/gpen/"
cp "$shared"/fixtures/parsenet/parsenet-tiny.{pth,expected.safetensors} "$out/shared/fixtures/parsenet/"
cp "$shared/fixtures/whole-frame/astronaut.parse-replicate.png" "$out/shared/fixtures/whole-frame/"

# A 1080p clip that needs only GStreamer's base and good plugins to decode (MJPEG in AVI).
frames=${BUNDLE_CLIP_FRAMES:-60}
if gst-launch-1.0 -q filesrc location="$shared/media/videos/short_hamilton_clip.mp4" ! qtdemux ! h264parse ! avdec_h264 \
  ! videoconvert ! videoscale ! video/x-raw,width=1920,height=1080 ! identity eos-after="$frames" \
  ! jpegenc quality=85 ! avimux ! filesink location="$out/shared/media/videos/hamilton-1080p.avi" >/dev/null; then
  :
else
  echo "bundle: could not make the 1080p clip (GStreamer plugins missing?); the gst-launch step will be skipped" >&2
  rm -f "$out/shared/media/videos/hamilton-1080p.avi"
fi

cp scripts/device-check.sh "$out/device-check.sh"
chmod +x "$out/device-check.sh"
git rev-parse HEAD >"$out/COMMIT" 2>/dev/null || true
tar -C "$root/out" -cf "$root/out/device-bundle.tar" device-bundle
end=$(date +%s)
echo "bundle: $out: $(du -sh "$out" | cut -f1) ($(du -sh "$root/out/device-bundle.tar" | cut -f1) as out/device-bundle.tar)"
echo "bundle: build $((built - start)) s, packing $((end - built)) s"
du -sh "$out"/* | sed 's/^/  /'

#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA device, from prebuilt binaries: no network, cargo or
# apt. Needs Python 3 with torch 2.11 (its libtorch is used) and an NVIDIA driver; GStreamer's
# libraries come from the bundle where the machine lacks them, gst-launch-1.0 is optional.
#
# Build the bundle on a build machine with scripts/build-device-bundle.sh, copy
# out/device-bundle.tar over, then: tar xf device-bundle.tar && device-bundle/device-check.sh
# (or run scripts/device-check.sh in a repository that has out/device-bundle). See "GPU check"
# in docs/memory.md. Steps (each prints its figures):
#   0. Speed, first (they are short, and the figures the GPU is lent for): bench_gpen, GPEN-512
#      in fp16 with random weights in the official shape, model only, whole maps: faces per
#      second at batch 1, 4, 16 and 32 after a warm-up, each forward waited for, and the
#      allocator's peak at each; then bench_memory on 1080p frames with 4 faces end to end
#      (upload, detection, crops, generator, paste, read back), GPEN-512 fp16, default budget:
#      frames per second after 3 warm-up frames. The summary sets them against the targets
#      in docs/memory.md for an H200 (1000 faces/s, 60 fps).
#   1. tests/cuda.rs: CUDA parity with the official CPU output (fp32, fp16); fp16 finiteness on
#      real-size random weights (GPEN-512/1024) and the cost of banding; the element with
#      device=auto fp16=true and the default budget on 1080p frames with 8 faces; two elements
#      sharing one model; a real out-of-memory handled by memory-policy=degrade; GPEN-512/1024
#      in fp32/fp16 under budgets 0, 2, 4, 8 GiB.
#   2. bench_memory: the same budgets over FRAMES frames (default 5): peak memory, fps, policy.
#   3. gst-launch-1.0 ... ! gpenfilter device=auto fp16=true ! fakesink on a 1080p clip (skipped
#      when gst-launch-1.0 or its demuxer/decoder plugins are missing: step 1 covers the element).
# Each step is cut at STEP_TIMEOUT (240 s; the speed steps at SPEED_TIMEOUT, 45 s) and the whole
# at TOTAL_TIMEOUT (290 s).
# Prints a summary and exits 1 if any step failed, 2 if the check could not run at all.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -x "$here/bin/cuda-tests" ]; then
  bundle=$here
elif [ -x "$here/../out/device-bundle/bin/cuda-tests" ]; then
  bundle=$(cd "$here/../out/device-bundle" && pwd)
else
  echo "device-check: no bundle beside this script or in out/device-bundle: build it with scripts/build-device-bundle.sh" >&2
  exit 2
fi
frames=${FRAMES:-5}
step_timeout=${STEP_TIMEOUT:-240}
speed_timeout=${SPEED_TIMEOUT:-45}
total_timeout=${TOTAL_TIMEOUT:-290}
work=$(mktemp -d "${TMPDIR:-/tmp}/gst-gpen-device-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

fail() { echo "device-check: $*" >&2; exit 2; }

# libtorch: the system Python's torch (a RUNPATH into the build machine's .venv is in the
# binaries; LD_LIBRARY_PATH takes precedence over it).
py=${PYTHON:-python3}
torch_dir=$("$py" -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null) ||
  fail "no torch in $py (set PYTHON to an interpreter with torch 2.11)"
torch_version=$("$py" -c 'import torch; print(torch.__version__)')
case "$torch_version" in 2.11.*) ;; *) echo "device-check: warning: torch $torch_version, the binaries were built against 2.11.0" >&2 ;; esac
[ -e "$torch_dir/lib/libtorch_cuda.so" ] || fail "$torch_dir/lib has no libtorch_cuda.so (a CPU-only torch?)"

# Bundled libraries only where the system has none of that name.
mkdir -p "$work/lib"
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
known=$("$ldconfig" -p 2>/dev/null || true)
missing=()
for f in "$bundle"/lib/*; do
  [ -e "$f" ] || continue
  name=$(basename "$f")
  if ! grep -qF "	$name (" <<<"$known"; then
    ln -s "$f" "$work/lib/$name"
    missing+=("$name")
  fi
done
export LD_LIBRARY_PATH="$torch_dir/lib:$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GST_GPEN_SHARED="$bundle/shared"
export GST_PLUGIN_PATH="$bundle/plugin"
export GST_REGISTRY="$work/registry.bin"
export RUST_BACKTRACE=1

echo "== device-check $(cat "$bundle/COMMIT" 2>/dev/null || echo '(no commit recorded)') on $(hostname), $(nproc) cores"
echo "torch $torch_version at $torch_dir"
echo "bundled libraries in use: ${missing[*]:-none (the system has them all)}"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader || true
else
  echo "nvidia-smi: not found"
fi
"$py" -c 'import torch; print("torch sees", torch.cuda.device_count(), "CUDA device(s)")' 2>&1 || true

# Nothing below can pass without a GPU: say so once, clearly, instead of N failures.
if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "device-check: no usable CUDA device here (torch.cuda.is_available() is False: no GPU, no driver, or a driver too old for this torch); nothing was run" >&2
  exit 2
fi
ldd "$bundle/bin/cuda-tests" | grep "not found" && fail "libraries missing for the binaries (above)"

results=()
figures=()
failed=0
# run_step NAME COMMAND...: with `log=FILE` before it, the output is also kept in FILE; with
# `cap=SECONDS`, the step's own limit is that instead of STEP_TIMEOUT.
run_step() {
  local name=$1
  shift
  echo
  echo "== $name: $*"
  local t0 rc limit
  t0=$(date +%s)
  limit=$((start + total_timeout - t0))
  [ $limit -gt "${cap:-$step_timeout}" ] && limit=${cap:-$step_timeout}
  if [ $limit -lt 10 ]; then
    results+=("FAIL  $name (not started: the check's $total_timeout s are spent)")
    failed=1
    return
  fi
  if [ -n "${log:-}" ]; then
    timeout "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  else
    timeout "$limit" "$@"
    rc=$?
  fi
  local secs=$(($(date +%s) - t0))
  if [ $rc -eq 0 ]; then
    results+=("PASS  $name (${secs} s)")
  else
    [ $rc -eq 124 ] && echo "device-check: $name timed out after $limit s"
    results+=("FAIL  $name (${secs} s, status $rc)")
    failed=1
  fi
}

# Speed. Model only: GPEN-512 fp16, random weights in the official shape, whole maps (what the
# element runs on a GPU with room); a warm-up forward, then 5 timed ones, at each batch size.
log=$work/gpen.out cap=$speed_timeout run_step "speed: GPEN-512 fp16 model only, batch 1/4/16/32" \
  "$bundle/bin/bench_gpen" --device cuda --size 512 --dtype fp16 --banding off --batch 1,4,16,32 --reps 5
while IFS= read -r line; do figures+=("$line"); done < <("$py" - "$work/gpen.out" 2>&1 <<'EOF'
import json, sys
best = 0.0
for line in open(sys.argv[1], errors="replace"):
    if not line.startswith("{"):
        continue
    try:
        r = json.loads(line)
    except ValueError:
        print(f"GPEN-512 fp16 model only: unreadable line: {line.strip()[:200]}")
        continue
    if "error" in r:
        print(f"GPEN-512 fp16 model only, batch {r['batch']}: failed: {r['error'][:200]}")
        continue
    best = max(best, r["faces_per_s"])
    print(f"GPEN-512 fp16 model only, batch {r['batch']:>2}: {r['faces_per_s']:8.1f} faces/s "
          f"({r['median_s'] * 1e3:.1f} ms a forward), allocator peak {r['peak_alloc_mib']} MiB")
if best:
    print(f"  best {best:.0f} faces/s against the H200 target of at least 1000: {'met' if best >= 1000 else 'NOT met'}")
else:
    print("GPEN-512 fp16 model only: no figure (see the step's output)")
EOF
)
# End to end: the restorer core on 1080p frames with 4 faces (detection every frame).
log=$work/frames.out cap=$speed_timeout run_step "speed: 1080p, 4 faces, end to end, GPEN-512 fp16" \
  "$bundle/bin/bench_memory" --device cuda --faces 4 --warmup 3 --frames 30 --sizes 512 --budgets 0 \
  --precisions fp16 --shared "$bundle/shared"
fps=$(awk '$1 == "512" && $2 == "fp16" && $3 == "0" && $5 ~ /^[0-9.]+$/ {print $5}' "$work/frames.out" 2>/dev/null | tail -1)
if [ -n "$fps" ]; then
  met=$(awk -v f="$fps" 'BEGIN {print (f >= 60 ? "met" : "NOT met")}')
  figures+=("1080p with 4 faces end to end, GPEN-512 fp16: $fps frames/s against the H200 target of at least 60: $met")
else
  figures+=("1080p with 4 faces end to end: no figure (see the step's output)")
fi

run_step "CUDA tests (tests/cuda.rs)" "$bundle/bin/cuda-tests" --test-threads=1 --nocapture
run_step "bench_memory (GPEN-512/1024, fp32/fp16, budgets 0/2/4/8 GiB, $frames frames)" \
  "$bundle/bin/bench_memory" --device cuda --frames "$frames" --sizes 512,1024 --budgets 0,2048,4096,8192 \
  --precisions fp32,fp16 --shared "$bundle/shared" --save-models "$work/models"

clip="$bundle/shared/media/videos/hamilton-1080p.avi"
model="$work/models/GPEN-BFR-512.safetensors"
if ! command -v gst-launch-1.0 >/dev/null; then
  results+=("SKIP  gst-launch-1.0 on a 1080p clip: gst-launch-1.0 is not installed (the element ran in the CUDA tests)")
elif ! gst-inspect-1.0 gpenfilter >/dev/null 2>&1; then
  echo "== gst-inspect-1.0 gpenfilter:"
  gst-inspect-1.0 gpenfilter 2>&1 | tail -5
  results+=("FAIL  gst-launch-1.0: the plugin in $bundle/plugin does not load")
  failed=1
elif ! gst-inspect-1.0 avidemux >/dev/null 2>&1 || ! gst-inspect-1.0 jpegdec >/dev/null 2>&1 ||
  ! gst-inspect-1.0 videoconvert >/dev/null 2>&1 || [ ! -e "$clip" ] || [ ! -e "$model" ]; then
  results+=("SKIP  gst-launch-1.0 on a 1080p clip: avidemux, jpegdec, videoconvert, the clip or the model is missing (the element ran in the CUDA tests)")
else
  run_step "gst-launch-1.0 gpenfilter device=auto fp16=true, default budget, 1080p clip" \
    gst-launch-1.0 -m filesrc location="$clip" ! avidemux ! jpegdec ! videoconvert \
    ! gpenfilter name=g device=auto fp16=true post-messages=true model="$model" detector-model="$bundle/shared/weights/retinaface-mnet025-fd1mb.pth" \
    ! fakesink sync=false
fi

echo
echo "== summary ($(($(date +%s) - start)) s)"
printf '  %s\n' "${results[@]}"
if [ ${#figures[@]} -gt 0 ]; then
  echo "== speed"
  printf '  %s\n' "${figures[@]}"
fi
exit $failed

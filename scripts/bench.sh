#!/usr/bin/env bash
# GPEN forward, batch 1, 2 threads: this project (tch) beside the PyTorch reference
# (../shared/reference/gpen_reference.py) in the same run, random weights in the official shapes.
#   scripts/bench.sh [REPS] [ROUNDS]     (defaults 3 and 2; 256 runs 5x REPS, being short)
# Every measurement runs in its own process (so peak RSS is its own); the rounds interleave
# reference and ours, and each figure is the best median over the rounds, which damps the
# noise of a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
reps=${1:-3}
rounds=${2:-2}
ref=../shared/reference/gpen_reference.py
py=.venv/bin/python
cargo build --release --example bench_gpen 2>&1 | tail -1
field() { $py -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$2"; }
best() { $py -c "import sys; print(min(float(x) for x in sys.argv[1:]))" "$@"; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; torch $($py -c 'import torch; print(torch.__version__)')"
printf '%-5s %-5s %10s %12s %7s %13s %13s\n' size dtype ours_s ref_fp32_s ratio ours_rss_mib ref_rss_mib
for size in 256 512; do
  if [ "$size" = 256 ]; then cm=1; narrow=0.5; n=$((reps * 5)); else cm=2; narrow=1; n=$reps; fi
  declare -A t=() rss=()
  for _ in $(seq "$rounds"); do
    j=$($py "$ref" bench --random "$size" --cm "$cm" --narrow "$narrow" --dtype fp32 --threads 2 --reps "$n")
    t[ref]+=" $(field median_s "$j")"; rss[ref]=$(field peak_rss_mib "$j")
    for dtype in fp32 bf16; do
      j=$(target/release/examples/bench_gpen --size "$size" --dtype "$dtype" --threads 2 --reps "$n")
      t[$dtype]+=" $(field median_s "$j")"; rss[$dtype]=$(field peak_rss_mib "$j")
    done
  done
  ref_s=$(best ${t[ref]})
  for dtype in fp32 bf16; do
    s=$(best ${t[$dtype]})
    printf '%-5s %-5s %10s %12s %7s %13s %13s\n' "$size" "$dtype" "$s" "$ref_s" \
      "$($py -c "print(f'{$s/$ref_s:.2f}')")" "${rss[$dtype]}" "${rss[ref]}"
  done
  unset t rss
done
echo "ratio = ours / reference fp32; seconds are the best median of $rounds rounds"

# Peak memory while restoring one face (weights resident), same precision, same measurement
# (peak resident size reset after the weights are built): scripts/reference_memory.py.
echo
printf '%-5s %-5s %14s %14s %7s %16s %16s %7s\n' size dtype ours_peak_mib ref_peak_mib ratio ours_extra_mib ref_extra_mib ratio
for size in 512 1024; do
  for dtype in fp32 bf16; do
    o=$(target/release/examples/bench_gpen --size "$size" --dtype "$dtype" --threads 2 --reps 1)
    r=$($py scripts/reference_memory.py "$size" --dtype "$dtype" --threads 2)
    $py - "$o" "$r" "$size" "$dtype" <<'PY'
import json, sys
o, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
oe, re_ = o["peak_rss_mib"] - o["resident_mib"], r["peak_rss_mib"] - r["resident_mib"]
print(f'{sys.argv[3]:<5} {sys.argv[4]:<5} {o["peak_rss_mib"]:>14} {r["peak_rss_mib"]:>14} {o["peak_rss_mib"]/r["peak_rss_mib"]:>7.2f} {oe:>16.1f} {re_:>16.1f} {oe/re_:>7.2f}')
PY
  done
done
echo "peak: resident size at its highest during the forwards; extra: that peak minus what was resident before"

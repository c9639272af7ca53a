#!/usr/bin/env bash
# Fuzzes the checkpoint readers (zip/legacy .pth pickles, safetensors) with cargo-fuzz and
# libFuzzer, seeded with every checkpoint in ../shared, for a bounded time. Not part of CI.
#
#   scripts/fuzz.sh [SECONDS=600] [JOBS=1]
#
# Needs cargo-fuzz (installed here on first use). On a stable toolchain RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass its -Z flags. Crashes land in fuzz/artifacts/checkpoint/; the summary line
# gives executions and coverage. libFuzzer's -malloc_limit_mb catches any single allocation
# beyond 2 GiB (the seeds are at most a few MiB), -rss_limit_mb a growing process.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
jobs=${2:-1}
here=$PWD
shared=$(cd "$here/../shared" && pwd)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# LIBTORCH comes from .cargo/config.toml (the venv made by scripts/setup.sh).
export LD_LIBRARY_PATH="$here/.venv/libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
corpus=fuzz/corpus/checkpoint
mkdir -p "$corpus" fuzz/seeds
# Seeds: every checkpoint in ../shared (copied so the corpus directory can grow freely).
find "$shared/fixtures" "$shared/weights" -type f \( -name '*.pth' -o -name '*.safetensors' \) -size -8M \
    -exec cp -n {} fuzz/seeds/ \;
# AddressSanitizer does not mix with the uninstrumented libtorch; coverage guidance and the
# allocation limits are what this run relies on.
cargo fuzz build --sanitizer none -O checkpoint
started=$(date +%s)
# More than one job: libFuzzer forks workers that log to fuzz-N.log in the current directory.
parallel=()
[ "$jobs" -gt 1 ] && parallel=(-jobs="$jobs" -workers="$jobs")
cargo fuzz run --sanitizer none -O checkpoint "$corpus" fuzz/seeds -- \
    -max_total_time="$seconds" "${parallel[@]}" -max_len=8388608 \
    -malloc_limit_mb=2048 -rss_limit_mb=4096 -print_final_stats=1 2>&1 | tee fuzz/last-run.log | grep -E 'stat::|#[0-9]+ +DONE|ERROR|SUMMARY|crash-' || true
echo "fuzzed $(( $(date +%s) - started )) s; artifacts: $(ls fuzz/artifacts/checkpoint 2>/dev/null | wc -l)"

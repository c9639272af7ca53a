#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA device: builds, runs the CUDA tests, then restores a
# synthetic 1080p clip with 8 faces with GPEN-512 and GPEN-1024 (random weights, official shapes)
# in fp32 and fp16 under budgets of 2, 4 and 8 GiB, printing peak allocator memory, frames per
# second and what the memory policy did. Run from the repository root: scripts/device-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -e .venv/libtorch ] || ./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "device-check: nvidia-smi not found"
cargo build --release --example bench_memory
cargo test --release --features cuda-tests --test cuda -- --nocapture
target/release/examples/bench_memory --device cuda --frames "${FRAMES:-10}" --sizes 512,1024 \
  --budgets 2048,4096,8192 --precisions fp32,fp16

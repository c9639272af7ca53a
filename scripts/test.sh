#!/usr/bin/env bash
# The test command: sets up what is missing, then builds and runs every test that needs no GPU.
# Tests read ../shared (fixtures, weights, media) in place; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
if [ ! -d ../shared/fixtures/gpen ]; then
  echo "test: ../shared (fixtures) must sit beside the repository root" >&2; exit 1
fi
# Faces as GstAnalytics metadata where GStreamer has it (1.24 or later; not on 1.22).
features=fault-injection
if pkg-config --atleast-version=1.24 gstreamer-analytics-1.0; then features+=,analytics; fi
echo "test: GStreamer $(pkg-config --modversion gstreamer-1.0), features $features"
# Formatting and lints first: CI refuses code that is not formatted or that clippy warns about.
cargo fmt --check
cargo clippy --all-targets --features "$features" -- -D warnings
cargo clippy --features cuda-tests --test cuda -- -D warnings   # compiles the GPU tests too
cargo build --lib --features "$features"   # the plugin .so that the gst-inspect test loads
cargo test --features "$features" --no-fail-fast "$@"

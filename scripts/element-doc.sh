#!/usr/bin/env bash
# Regenerates the property reference of docs/element.md, the block between
# <!-- gst-inspect:begin --> and <!-- gst-inspect:end -->, from `gst-inspect-1.0 gpenfilter` run on
# the debug build of the plugin (target/debug/libgstgpen.so), less the plugin's file name, version
# and release date. Then runs the other checks of tests/docs.rs: they fail when a property has no
# row in docs/element.md's table of when each property takes effect (add it by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --lib --features fault-injection
GST_GPEN_UPDATE_DOCS=1 cargo test --features fault-injection --test docs

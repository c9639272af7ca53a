#!/usr/bin/env bash
# meson → cargo.  cargo_wrapper.sh build SRC BUILD PROFILE OUTPUT | test SRC BUILD PROFILE
# GST_GPEN_FEATURES: the cargo features meson chose (analytics where GStreamer has it).
# Uses the project's .venv libtorch (scripts/setup.sh makes it); cargo's own target dir keeps
# incremental builds warm between meson and plain cargo use.
set -euo pipefail
action=$1 src=$2 build=$3 profile=$4
output=${5:+$(realpath -m "$5")}   # meson passes it relative to the build directory
cd "$src"
[ -e .venv/libtorch ] || ./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
flags=()
[ "$profile" = release ] && flags+=(--release)
features=()
[ -n "${GST_GPEN_FEATURES:-}" ] && features+=(--features "$GST_GPEN_FEATURES")
case "$action" in
  build)
    cargo build --lib "${flags[@]}" "${features[@]}"
    cp "target/$profile/libgstgpen.so" "$output"
    ;;
  test)
    cargo build --lib "${features[@]}"
    cargo test --no-fail-fast "${features[@]}"
    ;;
  *) echo "unknown action $action" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Runs the frame size/format matrix (tests/frame_matrix.rs: every accepted format at 1x1 to
# 333x251 with noise, padded rows, one 7680x4320 frame) under valgrind's memcheck, looking for
# reads and writes outside any allocation (our frame views over GStreamer's buffers are the
# risk). Uninitialised-value tracking is off: libtorch's vectorised kernels read padding
# lanes on purpose and drown everything else. Not part of CI (about 10 minutes).
#
#   scripts/valgrind-matrix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { sudo -n true 2>/dev/null && S=sudo || S=; $S apt-get install -y valgrind; }
export LD_LIBRARY_PATH="$PWD/.venv/libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=$(cargo test --test frame_matrix --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*frame_matrix[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "could not build tests/frame_matrix.rs" >&2; exit 1; }
log=target/valgrind-matrix.log
valgrind --tool=memcheck --undef-value-errors=no --error-exitcode=99 --num-callers=30 \
    --suppressions=scripts/valgrind.supp \
    --log-file="$log" "$bin" --test-threads 1 && status=0 || status=$?
grep -E "ERROR SUMMARY|Invalid (read|write)" "$log" | sort | uniq -c | head -20
echo "valgrind exit status $status (99: memcheck found errors; log: $log)"
exit "$status"

#!/usr/bin/env bash
# The GPU parity op tests on the host emulation of a CUDA device, with every kernel compiled
# under ThreadSanitizer (opt-in; about 10 minutes on 2 cores, too slow for CI). Each kernel
# thread is a TSan fiber switched without synchronisation and only barriers, warp operations,
# atomics and the end of a launch order accesses, so a missing __syncthreads or a non-atomic
# scatter between blocks is reported as a data race even though the threads take turns.
#   usage: scripts/host-tsan.sh [test filter, default: every op test]
# Needs gcc's libtsan (Debian: part of gcc) and, for the test binary, nothing else: the Rust
# code is not instrumented (TSan ignores it with ignore_noninstrumented_modules=1).
set -euo pipefail
cd "$(dirname "$0")/.."
tsan=$(realpath "$(${CXX:-c++} -print-file-name=libtsan.so)")
[ -f "$tsan" ] || { echo "host-tsan: no libtsan.so beside ${CXX:-c++}" >&2; exit 1; }
bin=$(cargo test --test cuda_parity --no-run 2>&1 | grep -o 'target/debug/deps/cuda_parity-[a-z0-9]*' | head -1)
[ -x "$bin" ] || { echo "host-tsan: could not build the cuda_parity test binary" >&2; exit 1; }
filter=("$@")
[ ${#filter[@]} -gt 0 ] || filter=(--skip steps --skip coverage)
DCL_CUDA_HOST_TSAN=1 DCL_TEST_CUDA=host LD_PRELOAD="$tsan" \
    TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1 ${TSAN_OPTIONS:-}" \
    "$bin" --test-threads 1 "${filter[@]}"

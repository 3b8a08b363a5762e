#!/usr/bin/env bash
# Installs NVRTC 13.0 from PyPI (the `nvidia-cuda-nvrtc` wheel, CUDA 13 line) into .whl/ so the
# kernels can be compiled without a GPU or a CUDA toolkit, and prints the directory that holds
# libnvrtc.so.13 and libnvrtc-builtins.so.13.0, for LD_LIBRARY_PATH.
#   usage: export LD_LIBRARY_PATH="$(bash .ci/nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Progress goes to stderr; stdout is only the directory. Idempotent: a second run reuses .whl/.
set -euo pipefail

# 13.0.x matches the `cuda-13000` binding level of cudarc in Cargo.toml.
VERSION="${DCL_NVRTC_VERSION:-13.0.88}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="$ROOT/.whl/nvrtc-$VERSION"

find_lib_dir() {
    local f
    f="$(find "$TARGET" -name 'libnvrtc.so.13' -print -quit 2>/dev/null || true)"
    [ -n "$f" ] && dirname "$f"
}

dir="$(find_lib_dir || true)"
if [ -z "$dir" ]; then
    PY="$(command -v python3 || command -v python || true)"
    if [ -z "$PY" ]; then
        echo "nvrtc.sh: python3 with pip is needed to install nvidia-cuda-nvrtc==$VERSION" >&2
        exit 1
    fi
    echo "nvrtc.sh: installing nvidia-cuda-nvrtc==$VERSION into $TARGET" >&2
    rm -rf "$TARGET"
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$TARGET" "nvidia-cuda-nvrtc==$VERSION" >&2
    dir="$(find_lib_dir || true)"
    if [ -z "$dir" ]; then
        echo "nvrtc.sh: the wheel installed but libnvrtc.so.13 was not found under $TARGET" >&2
        exit 1
    fi
fi

if ! ls "$dir"/libnvrtc-builtins.so.13* >/dev/null 2>&1; then
    echo "nvrtc.sh: libnvrtc-builtins.so.13.* missing beside $dir/libnvrtc.so.13" >&2
    exit 1
fi
# cudarc's loader tries the unversioned name first; the symlink also serves older binding levels.
[ -e "$dir/libnvrtc.so" ] || ln -s libnvrtc.so.13 "$dir/libnvrtc.so"
echo "$dir"

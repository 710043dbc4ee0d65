#!/usr/bin/env bash
# Installs the real TensorRT Python bindings of every version in tools/trt_bindings_versions.txt into
# throwaway target directories (DEST/tensorrt-<version>/, default .compat/), never into the venv: each
# version is imported by its own test interpreter (tests/test_trt_bindings.py) against a stub libnvinfer
# compiled there. Idempotent: a version already installed is kept. pip's cache makes a re-install cheap.
# Usage: bash tools/install_trt_bindings.sh [PYTHON] [DEST]   (`make trt-bindings` passes the venv's python)
set -euo pipefail
PY=${1:-python3}
DEST=${2:-.compat}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$DEST"
while read -r version requirement _major; do
    [[ -z "$version" || "$version" == \#* ]] && continue
    dir="$DEST/tensorrt-$version"
    if grep -qs "__version__ = \"$version\"" "$dir/tensorrt_bindings/__init__.py"; then
        continue
    fi
    echo "[trt-bindings] $requirement -> $dir"
    rm -rf "$dir" "$dir.tmp"
    "$PY" -m pip install --quiet --no-deps --only-binary=:all: --target "$dir.tmp" "$requirement"
    mv "$dir.tmp" "$dir"
done < "$HERE/trt_bindings_versions.txt"

#!/usr/bin/env bash
# Installs the TensorRT 10 type stubs and generates cuda-python runtime stubs for mypy. The `tensorrt-stubs` wheel depends on the real
# `tensorrt` package (which cannot install without a GPU driver), so it is installed without its
# dependencies; tools/fix_trt_stubs.py then repairs what mypy cannot read (no py.typed, parameters
# named `in`) by writing `tensorrt-stubs/` and `tensorrt_bindings-stubs/` stub packages.
# Usage: bash tools/install_trt_stubs.sh [PYTHON]   (the Makefile passes the venv's python)
set -euo pipefail
PY=${1:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$PY" -m pip install --quiet --no-deps "tensorrt-stubs==10.13.0.35.1"
"$PY" "$HERE/fix_trt_stubs.py"
# cuda-python ships no .pyi files: generate stubs for its runtime API from the Cython source it ships
"$PY" "$HERE/make_cuda_stubs.py"

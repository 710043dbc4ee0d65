#!/usr/bin/env bash
# Installs the TensorRT 10 type stubs for mypy. The `tensorrt-stubs` wheel depends on the real
# `tensorrt` package (which cannot install without a GPU driver), so it is installed without its
# dependencies; tools/fix_trt_stubs.py then repairs what mypy cannot read.
set -euo pipefail
PY=${1:-python3}
"$PY" -m pip install --quiet --no-deps "tensorrt-stubs==10.13.0.35.1"
if [ -f tools/fix_trt_stubs.py ]; then "$PY" tools/fix_trt_stubs.py; fi

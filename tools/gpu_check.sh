#!/usr/bin/env bash
# The GPU check, ready to run on a machine with a CUDA GPU, PyTorch with CUDA and cuda-python (no TensorRT,
# no onnxruntime-gpu needed): the CUDA wrapper's real calls, the torch backend on CUDA in FP32/FP16 against
# ONNX Runtime on the CPU, and `evit-ros doctor`. About 2-5 minutes; results in $OUT (default ./gpu_check_out):
# gpu_check.json, doctor.json, doctor.txt, gpu_check.log. Exit 0 when every check passed.
#   tools/gpu_check.sh            # on the GPU machine, from the repository root
#   tools/gpu_check.sh --dry-run  # CPU, small size: what the tests run here
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${OUT:-$repo/gpu_check_out}
py=${PYTHON:-}
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
mkdir -p "$out"
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
export EVIT_ROS_CACHE=${EVIT_ROS_CACHE:-$out/cache}
start=$(date +%s)
echo "[gpu_check] $(date -u +%FT%TZ) python: $($py -c 'import sys; print(sys.version.split()[0])'), out: $out"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
timeout 480 "$py" tools/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
rc_check=${PIPESTATUS[0]}
timeout 120 "$py" -m evit_ros doctor --json "$out/doctor.json" > "$out/doctor.txt" 2>&1
rc_doctor=$?
tail -n 4 "$out/doctor.txt"
echo "[gpu_check] checks exit $rc_check, doctor exit $rc_doctor (3: the auto backend cannot run here), $(( $(date +%s) - start )) s"
if [ "$rc_doctor" -ne 0 ] && [ "$rc_doctor" -ne 3 ]; then exit 1; fi
grep -q Traceback "$out/doctor.txt" && { echo "[gpu_check] doctor printed a traceback"; exit 1; }
exit "$rc_check"

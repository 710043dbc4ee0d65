"""Which GPU this machine has, for the engine cache key and the build command.

cuda-python first (exact SM count and memory); else ``nvidia-smi``; else the Jetson board name (a Jetson
without a working driver still builds the right key); else ``none``.
"""
from __future__ import annotations

import logging
import shutil
import subprocess

from evit_ros.device.identity import GpuIdentity, board_model
from evit_ros.errors import EvitError

log = logging.getLogger(__name__)


def detect_gpu() -> GpuIdentity:
    """Identity of CUDA device 0 via cuda-python; else nvidia-smi; else the Jetson board; else 'none'."""
    try:
        from evit_ros.device import cuda_runtime  # imports cuda-python: only when asked
        if cuda_runtime.device_count()[0] > 0:
            return cuda_runtime.gpu_identity(0)
    except EvitError as exc:
        log.debug('cuda-python GPU query failed: %s', exc)
    board = board_model()
    smi = shutil.which('nvidia-smi')
    if smi:
        try:
            out = subprocess.run([smi, '--query-gpu=name,compute_cap,memory.total', '--format=csv,noheader,nounits'],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            if out:
                name, cc, mem = (s.strip() for s in out.splitlines()[0].split(',', 2))
                return GpuIdentity(name, cc, 0, int(float(mem)), board)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    if board:
        for key, cc in (('Orin', '8.7'), ('Xavier', '7.2'), ('Thor', '11.0')):
            if key in board:
                return GpuIdentity(board, cc, 0, 0, board)
    return GpuIdentity('none', 'none', 0, 0, board)

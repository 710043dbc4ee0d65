"""Heap settings for frame-sized buffers: freed frames are reused instead of faulting in fresh pages."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# three frame-sized buffers (a received 2 MP rgb8 frame, its copy, one serialized output), touched then freed
CYCLES = '''
import resource, sys
import numpy as np
from evit_ros.heap import keep_frame_buffers, release_free_heap
took = keep_frame_buffers() if sys.argv[1] == 'keep' else None
def cycle():
    bufs = [np.ones(6 << 20, np.uint8) for _ in range(3)]
    del bufs
for _ in range(3):
    cycle()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
release_free_heap()
'''


def _faults_per_cycle(mode: str) -> tuple[str, float]:
    env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    env.pop('GLIBC_TUNABLES', None)     # glibc's own defaults (a tunable could fix the thresholds already)
    out = subprocess.run([sys.executable, '-c', CYCLES, mode], env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    return out[0], float(out[1])


def test_kept_frame_buffers_do_not_fault_every_frame() -> None:
    took, kept = _faults_per_cycle('keep')
    if took != 'True':
        pytest.skip('not glibc: mallopt is not available')
    _, default = _faults_per_cycle('default')
    print(f'minor page faults per cycle of three 6 MB buffers: default {default:.0f}, kept {kept:.0f}')
    assert kept <= 0.1 * default + 5, (kept, default)

"""Run ``evit-ros doctor`` in a child interpreter and check its report: the hook for the compatibility tests.

``doctor_code(json_path)`` is Python source that runs the command; prepend a bootstrap that puts another
stack in place (``cuda_compat_support.bootstrap(version)`` for a real cuda-python, or the real TensorRT
bindings of ``.compat/tensorrt-<ver>/``), run it, and pass the result to :func:`checked_report`.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

TOP_KEYS = ('python', 'ros', 'onnxruntime', 'torch', 'tensorrt', 'cuda', 'gpu', 'backends', 'engines')


def doctor_code(json_path: Path, *args: str) -> str:
    argv = ['doctor', '--json', str(json_path), *args]
    return f'import sys\nfrom evit_ros.cli.main import main\nsys.exit(main({argv!r}))\n'


def checked_report(proc: subprocess.CompletedProcess[str], json_path: Path, exit_code: int | None = None
                   ) -> dict[str, Any]:
    """The JSON report, after checking: no traceback, exit 0 or 3 (or ``exit_code``), every top-level key,
    and a ``{usable, reason}`` per backend."""
    both = proc.stdout + proc.stderr
    assert 'Traceback' not in both, both
    assert proc.returncode == exit_code if exit_code is not None else proc.returncode in (0, 3), both
    report = json.loads(json_path.read_text())
    assert set(TOP_KEYS) <= set(report), sorted(report)
    for name, state in report['backends'].items():
        assert isinstance(state['usable'], bool) and state['reason'], (name, state)
    assert (proc.returncode == 0) == report['verdict']['usable'], report['verdict']
    return report

"""mypy really checks the TensorRT code against the TensorRT 10 stubs (tools/fix_trt_stubs.py made them readable)."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fixer():  # noqa: ANN202 (module object loaded from tools/)
    spec = importlib.util.spec_from_file_location('fix_trt_stubs', REPO / 'tools' / 'fix_trt_stubs.py')
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fix_source_renames_keyword_params_and_fills_defaults() -> None:
    src = ('class P:\n'
           '    def configure(self, in: list[int], out: list[int], n: int = 1, m: int) -> None:\n'
           '        ...\n'
           '    def ok(self, inputs: int, *, k: int) -> int: ...\n')
    with pytest.raises(SyntaxError):
        ast.parse(src)
    fixed = _fixer().fix_source(src)
    ast.parse(fixed)
    assert 'def configure(self, in_: list[int], out: list[int], n: int = 1, m: int = ...) -> None:' in fixed
    assert 'def ok(self, inputs: int, *, k: int) -> int: ...' in fixed   # untouched


def test_mypy_reads_the_stubs_and_reports_a_wrong_call(tmp_path: Path) -> None:
    try:
        metadata.distribution('tensorrt-stubs')
    except metadata.PackageNotFoundError:
        pytest.skip('tensorrt-stubs is not installed (run tools/install_trt_stubs.sh)')
    pytest.importorskip('mypy')
    probe = tmp_path / 'probe.py'
    probe.write_text('import tensorrt as trt\n\n\n'
                     'def run(engine: trt.ICudaEngine, ctx: trt.IExecutionContext) -> None:\n'
                     '    engine.get_tensor_shape(0)\n'
                     '    ctx.execute_async_v3()\n'
                     '    ctx.set_tensor_address("images", 1234)\n')
    out = subprocess.run([sys.executable, '-m', 'mypy', '--config-file', str(REPO / 'mypy.ini'),
                          '--cache-dir', str(tmp_path / 'cache'), str(probe)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert 'probe.py:5: error: Argument 1 to "get_tensor_shape" of "ICudaEngine" has incompatible type "int"' in text
    assert 'probe.py:6: error: Missing positional argument "stream_handle"' in text
    assert 'probe.py:7' not in text
    assert 'Found 2 errors in 1 file' in text

"""mypy really checks the TensorRT code against the TensorRT 10 stubs (tools/fix_trt_stubs.py made them readable)
and the CUDA runtime calls against stubs generated from cuda-python (tools/make_cuda_stubs.py)."""
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



def _mypy_errors(probe: Path, tmp_path: Path, timeout: float) -> str:
    """Run the project's mypy configuration on one probe file that must have errors; its output."""
    out = subprocess.run([sys.executable, '-m', 'mypy', '--config-file', str(REPO / 'mypy.ini'),
                          '--cache-dir', str(tmp_path / 'cache'), str(probe)],
                         capture_output=True, text=True, cwd=REPO, timeout=timeout)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    return text


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
    text = _mypy_errors(probe, tmp_path, timeout=120)
    assert 'probe.py:5: error: Argument 1 to "get_tensor_shape" of "ICudaEngine" has incompatible type "int"' in text
    assert 'probe.py:6: error: Missing positional argument "stream_handle"' in text
    assert 'probe.py:7' not in text
    assert 'Found 2 errors in 1 file' in text


def test_mypy_checks_cuda_python_calls_against_generated_stubs(tmp_path: Path) -> None:
    """tools/make_cuda_stubs.py turns cuda-python's shipped Cython source into stubs mypy really uses."""
    pytest.importorskip('mypy')
    try:
        metadata.distribution('cuda-bindings')
    except metadata.PackageNotFoundError:
        pytest.skip('cuda-python is not installed')
    probe = tmp_path / 'probe_cuda.py'
    probe.write_text('from cuda.bindings import runtime as cudart\n\n'
                     'err, ptr = cudart.cudaMalloc(16)\n'
                     'ptr2 = cudart.cudaMalloc()\n'
                     'a, b = cudart.cudaStreamSynchronize(0)\n'
                     'cudart.cudaMemcpyAsync(ptr, 0, 16, 1, 0)\n'
                     'props = cudart.cudaGetDeviceProperties(0)[1]\n'
                     'n: int = props.multiProcessorCount\n'
                     'props.smCount\n'
                     'ok = cudart.cudaError_t.cudaSuccess\n')
    text = _mypy_errors(probe, tmp_path, timeout=180)
    assert 'probe_cuda.py:4: error: Missing positional argument "size" in call to "cudaMalloc"' in text
    assert 'probe_cuda.py:5: error: Need more than 1 value to unpack (2 expected)' in text
    assert 'probe_cuda.py:6: error: Argument 4 to "cudaMemcpyAsync" has incompatible type "int"' in text
    assert 'probe_cuda.py:9: error: "cudaDeviceProp" has no attribute "smCount"' in text
    assert 'Found 4 errors in 1 file' in text


def test_cuda_stub_generator_reads_signatures_and_returns() -> None:
    spec = importlib.util.spec_from_file_location('make_cuda_stubs', REPO / 'tools' / 'make_cuda_stubs.py')
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = ('class cudaError_t(_FastEnum):\n    cudaSuccess = (\n        0, "ok")\n\n'
           'class cudaMemcpyKind(_FastEnum):\n    cudaMemcpyHostToDevice = 1\n\n'
           'cdef class cudaDeviceProp:\n    def __init__(self, void_ptr _ptr = 0):\n        pass\n'
           '    @property\n    def totalGlobalMem(self):\n        return 0\n\n'
           'cudaHostAllocDefault = cyruntime.cudaHostAllocDefault\n\n'
           'def cudaMemcpyAsync(dst, src, size_t count, kind not None : cudaMemcpyKind, stream):\n'
           '    """ Copies.\n\n    Returns\n    -------\n    cudaError_t\n        ok\n    """\n'
           'def cudaGetDeviceProperties(int device):\n'
           '    """ Props.\n\n    Returns\n    -------\n    cudaError_t\n        ok\n'
           '    prop : :py:obj:`~.cudaDeviceProp`\n        props\n    """\n')
    out = mod.generate(src)
    assert ('def cudaMemcpyAsync(dst: Any, src: Any, count: int, kind: cudaMemcpyKind, stream: Any) '
            '-> tuple[cudaError_t]: ...') in out
    assert 'def cudaGetDeviceProperties(device: int) -> tuple[cudaError_t, cudaDeviceProp]: ...' in out
    assert '    cudaSuccess = ...' in out and '    totalGlobalMem: Any' in out and 'cudaHostAllocDefault: Any' in out

"""The TensorRT code against the real Python bindings of TensorRT 8.6.1, 10.3, 10.13 and 11.4, no GPU needed.

Each release runs tests/trt_bindings_checks.py in its own interpreter, with its bindings
(``make trt-bindings`` -> ``.compat/tensorrt-<version>/``) on the path and stub TensorRT libraries
compiled here with ``cc`` (tests/trt_bindings_support.py). Missing bindings fail the test (CI runs
``make test``, which installs them); set ``EVIT_TRT_BINDINGS=optional`` to skip instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trt_bindings_support import OPTIONAL_ENV, REPO, bindings_dir, bindings_env, build_stub_libs, versions

from evit_ros.export.onnx_export import export_onnx

MODEL = 'efficientvit-seg-b0-cityscapes'


@pytest.fixture(scope='module')
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The graphs every release parses: fp32 and mixed-precision labels, labels+confidence; batch 1..2."""
    from evit_ros.model import create_model
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(MODEL, pretrained=False).eval()
    d = tmp_path_factory.mktemp('trt_bindings_onnx')
    export_onnx(MODEL, d / 'dyn.onnx', height=64, width=128, model=model, head='labels', max_batch=2)
    export_onnx(MODEL, d / 'mixed.onnx', height=64, width=128, model=model, head='labels', max_batch=2,
                mixed_precision_fp16=True)
    export_onnx(MODEL, d / 'lc.onnx', height=64, width=128, model=model, head='labels+confidence', max_batch=2)
    return d


@pytest.mark.parametrize(('version', 'major'), [(v, m) for v, _req, m in versions()])
def test_tensorrt_code_against_the_real_bindings(version: str, major: int, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    if not (bindings_dir(version) / 'tensorrt_bindings' / '__init__.py').is_file():
        msg = (f'the TensorRT {version} bindings are not installed in {bindings_dir(version)}: run `make trt-bindings` '
               f'(or set {OPTIONAL_ENV}=optional to skip)')
        if os.environ.get(OPTIONAL_ENV) == 'optional':
            pytest.skip(msg)
        pytest.fail(msg)
    if shutil.which('cc') is None:
        pytest.fail('the stub TensorRT libraries need a C compiler (`cc`): apt-get install gcc')
    env = bindings_env(version, build_stub_libs(tmp_path / 'stub', major))
    env['EVIT_TRT_ONNX_DIR'] = str(request.getfixturevalue('onnx_dir'))   # exported once the bindings are there
    out = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--rootdir', str(REPO),
                          '--basetemp', str(tmp_path / 'inner'), str(REPO / 'tests' / 'trt_bindings_checks.py')],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f'TensorRT {version}:\n{text[-6000:]}'
    assert ' passed' in text and ' failed' not in text and ' error' not in text, text[-3000:]

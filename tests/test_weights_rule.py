"""One weight-resolution rule: `evit-ros export` without --checkpoint holds what the node loads; random only on request.

Also: the node's FATAL line for a missing ONNX prints a command that, run as printed with the venv's
`evit-ros`, produces exactly the graph the node then loads; and an export prints no TracerWarning.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evit_ros import contract
from evit_ros.backends import SYNTHETIC_CHECKPOINT
from evit_ros.contract import NODE_HEAD
from evit_ros.export.onnx_export import read_metadata
from evit_ros.fileio import file_sha256

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
H, W = 64, 128


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, 'PATH': f'{VENV_BIN}{os.pathsep}{os.environ.get("PATH", "")}', 'PYTHONPATH': str(REPO),
            'HOME': str(tmp / 'home'), 'EVIT_ROS_CHECKPOINTS': '', 'RCUTILS_LOGGING_BUFFERED_STREAM': '0'}


def _evit(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp / 'home').mkdir(exist_ok=True)
    return subprocess.run([str(VENV_BIN / 'evit-ros'), *args], capture_output=True, text=True, cwd=tmp,
                          env=_env(tmp), timeout=300)


def test_export_without_checkpoint_uses_the_nodes_weights_and_prints_no_tracer_warning(tmp_path: Path) -> None:
    out = _evit(tmp_path, 'export', '--height', str(H), '--width', str(W), '-o', 'demo.onnx')
    assert out.returncode == 0, out.stderr[-3000:]
    meta = read_metadata(tmp_path / 'demo.onnx')
    assert meta[contract.META_CHECKPOINT_SHA256] == file_sha256(SYNTHETIC_CHECKPOINT)
    assert 'packaged demo weights' in out.stderr and 'weights: ' in out.stdout
    assert 'TracerWarning' not in out.stderr and 'Warning:' not in out.stderr, out.stderr[-3000:]

    rnd = _evit(tmp_path, 'export', '--height', str(H), '--width', str(W), '--random-weights', '-o', 'random.onnx')
    assert rnd.returncode == 0, rnd.stderr[-3000:]
    assert read_metadata(tmp_path / 'random.onnx')[contract.META_CHECKPOINT_SHA256] == ''
    assert 'random' in rnd.stdout

    both = _evit(tmp_path, 'export', '--random-weights', '--checkpoint', str(SYNTHETIC_CHECKPOINT), '-o', 'x.onnx')
    assert both.returncode == 2 and 'not allowed with' in both.stderr


def test_export_of_a_model_without_weights_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    out = _evit(tmp_path, 'export', '--model', 'efficientvit-seg-b1-cityscapes', '--height', str(H), '--width',
                str(W), '-o', 'b1.onnx')
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()[-1]
    assert 'efficientvit_seg_b1_cityscapes.pt' in err and '--random-weights' in err
    assert 'Traceback' not in out.stderr and not (tmp_path / 'b1.onnx').exists()
    missing = _evit(tmp_path, 'export', '--checkpoint', 'nope.pt', '-o', 'x.onnx')
    assert missing.returncode == 1 and '--checkpoint nope.pt does not exist' in missing.stderr


def test_the_nodes_missing_onnx_command_produces_what_it_loads(tmp_path: Path) -> None:
    onnx = tmp_path / 'engines' / 'b0_node.onnx'
    onnx.parent.mkdir()
    (tmp_path / 'home').mkdir()
    node = [sys.executable, '-m', 'evit_ros.ros.segmentation_node', '--ros-args', '-p', 'backend.type:=onnxruntime',
            '-p', f'backend.onnx_path:={onnx}', '-p', f'input.height:={H}', '-p', f'input.width:={W}',
            '-p', 'backend.threads:=1']
    first = subprocess.run(node, capture_output=True, text=True, env=_env(tmp_path), timeout=120, cwd=tmp_path)
    text = first.stdout + first.stderr
    assert first.returncode == 2, text[-3000:]
    m = re.search(r'`(evit-ros export [^`]+)`', text)
    assert m, f'no export command in the FATAL message:\n{text[-3000:]}'
    command = m.group(1)
    assert f'--head {NODE_HEAD}' in command and f'-o {onnx}' in command
    made = subprocess.run(['bash', '-e', '-c', command], capture_output=True, text=True, env=_env(tmp_path),
                          timeout=300, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    assert read_metadata(onnx)[contract.META_CHECKPOINT_SHA256] == file_sha256(SYNTHETIC_CHECKPOINT)
    second = subprocess.run([*node, '-p', 'backend.build_only:=true'], capture_output=True, text=True,
                            env=_env(tmp_path), timeout=120, cwd=tmp_path)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]


@pytest.mark.parametrize('name', ['evit-ros', 'segmentation_node'])
def test_the_package_is_installed_in_the_venv(name: str) -> None:
    """`make venv` installs evit_ros editable: its commands are in the venv's bin and run this checkout."""
    exe = VENV_BIN / name
    assert exe.is_file(), f'{exe} is missing: run `make venv` (it installs the package with pip install -e .)'
    from importlib.metadata import distribution
    direct = distribution('evit_ros').read_text('direct_url.json') or ''
    assert '"editable": true' in direct.replace(' ', '').replace('"editable":true', '"editable": true')

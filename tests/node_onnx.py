"""The ONNX files the node tests run on: exported by the test when PyTorch is installed, or exported beforehand.

``make test-compat`` runs the node tests on Python 3.10 with ROS 2 Kilted and without PyTorch, like a JetPack 6
vehicle (NVIDIA's torch wheel is not on PyPI): it exports these files with the main venv first
(``python tests/node_onnx.py DIR``) and points ``$EVIT_ROS_TEST_ONNX_DIR`` at DIR. Where that variable is set, a
missing file fails the test (it never falls back to a skip).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO)) if str(REPO) not in sys.path else None

ONNX_DIR_ENV = 'EVIT_ROS_TEST_ONNX_DIR'
MODEL = 'efficientvit-seg-b0-cityscapes'
WEIGHTS = REPO / 'evit_ros' / 'data' / 'efficientvit_seg_b0_synthetic.pt'
# file name -> (height, width): b0 with the packaged synthetic-scene weights, head labels+confidence
FILES = {'b0_64x128.onnx': (64, 128),     # every node test
         'b0_352x640.onnx': (352, 640)}   # about a 640x360 aligned-depth camera (tests/test_ros_nav2.py)


def export(name: str, out: Path) -> Path:
    from evit_ros.export.onnx_export import export_onnx
    height, width = FILES[name]
    export_onnx(MODEL, out, height=height, width=width, checkpoint=str(WEIGHTS), head='labels+confidence')
    return out


_EXPORTED: dict[str, Path] = {}   # name -> this session's export: every test module runs the same read-only graph


def node_onnx(name: str, tmp_dir: Path) -> Path:
    """``name`` (a key of FILES) from ``$EVIT_ROS_TEST_ONNX_DIR`` when set, else exported into ``tmp_dir`` once a
    session (later calls get the first export; no test writes to it)."""
    import pytest
    given = os.environ.get(ONNX_DIR_ENV)
    if given:
        path = Path(given) / name
        if not path.is_file():
            pytest.fail(f'{ONNX_DIR_ENV}={given} has no {name}; export it with the main venv: '
                        f'.venv/bin/python tests/node_onnx.py {given} (make test-compat does)')
        return path
    pytest.importorskip('torch', reason=f'exporting {name} needs PyTorch; without it set {ONNX_DIR_ENV}')
    done = _EXPORTED.get(name)
    if done is None or not done.is_file():
        done = _EXPORTED[name] = export(name, tmp_dir / name)
    return done


def needs_onnx_source() -> None:
    """Skip a node test module where neither PyTorch nor exported files are there (call at import)."""
    import pytest
    if not os.environ.get(ONNX_DIR_ENV):
        pytest.importorskip('torch', reason=f'the node tests export their ONNX with PyTorch, or set {ONNX_DIR_ENV}')


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print('usage: python tests/node_onnx.py DIR   (exports every node-test ONNX into DIR)', file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        export(name, out / name)
        print(f'{out / name}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

"""The shipped demo checkpoint: strict loading, and the mIoU bar on held-out scenes through the deploy path.

The deploy path is the exported ONNX graph (uint8 RGB NHWC in, labels out; preprocessing in-graph) run
by ONNX Runtime on CPU, i.e. exactly what the node runs. A BGR/RGB mix-up must fail the bar, so this
test catches a swapped channel order anywhere upstream of the graph.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evit_ros.datasets import CITYSCAPES
from evit_ros.synthetic.bag import DEMO_CAMERA, DEMO_CAMERAS, frame_seed
from evit_ros.synthetic.scenes import generate_scene
from evit_ros.synthetic.train import MODEL_NAME

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / 'evit_ros' / 'data' / 'efficientvit_seg_b0_synthetic.pt'
H, W = 256, 512          # the demo's model size (config/demo.yaml input.height/width)
FRAMES = 24
MIOU_BAR = 0.85

torch = pytest.importorskip('torch')
try:
    from evit_ros.model import create_model
except ImportError:
    pytest.skip('the model zoo (evit_ros.model.create_model) has not landed', allow_module_level=True)


def _heldout() -> list[tuple[np.ndarray, np.ndarray]]:
    # the demo bag's front-camera scenes (fixed rig) and a few with other camera geometry
    frames = [generate_scene(frame_seed(7, DEMO_CAMERAS[0], i), H, W, DEMO_CAMERA) for i in range(FRAMES // 2)]
    frames += [generate_scene(2_000_000_000 + i, H, W) for i in range(FRAMES - len(frames))]
    return frames


@pytest.fixture(scope='module')
def onnx_session(tmp_path_factory):
    ort = pytest.importorskip('onnxruntime')
    from evit_ros.export.onnx_export import export_onnx

    torch.set_num_threads(2)
    path = tmp_path_factory.mktemp('onnx') / 'demo.onnx'
    export_onnx(MODEL_NAME, path, height=H, width=W, checkpoint=str(CHECKPOINT), head='labels', verify=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])


def _miou(session, swap: bool) -> tuple[float, dict[str, float]]:
    """mIoU over classes present (union > 0), with the evaluator's own confusion matrix (as `evit-ros eval`)."""
    from evit_ros.eval.metrics import ConfusionMatrix

    cm = ConfusionMatrix(CITYSCAPES.num_classes)
    for rgb, lab in _heldout():
        x = np.ascontiguousarray(rgb[..., ::-1]) if swap else rgb
        (labels,) = session.run(['labels'], {'images': x[None]})
        cm.update(lab, labels[0])
    s = cm.summary(CITYSCAPES.class_names, [])
    return s['miou_present'], {c['name']: c['iou'] for c in s['per_class'] if c['iou'] is not None}


def test_checkpoint_is_small_float32_and_loads_strictly() -> None:
    assert CHECKPOINT.is_file(), 'train it with `evit-ros train-synthetic`'
    assert CHECKPOINT.stat().st_size < 4_000_000
    ckpt = torch.load(CHECKPOINT, map_location='cpu', weights_only=True)
    sd = ckpt['state_dict']
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    model = create_model(MODEL_NAME, pretrained=False, checkpoint=str(CHECKPOINT))
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    assert all(torch.equal(loaded[k].float(), sd[k].float()) for k in sd)


@pytest.fixture(scope='module')
def scores(onnx_session) -> dict[bool, tuple[float, dict[str, float]]]:
    return {swap: _miou(onnx_session, swap) for swap in (False, True)}


def test_heldout_miou_reaches_the_bar_through_onnx(scores) -> None:
    miou, per_class = scores[False]
    assert miou >= MIOU_BAR, f'held-out mIoU {miou:.3f} < {MIOU_BAR}: {per_class}'
    assert len(per_class) >= 12   # most scene classes are present in the held-out frames


def test_swapped_channel_order_fails_the_bar(scores) -> None:
    good, _ = scores[False]
    bad, per_class = scores[True]
    assert bad < MIOU_BAR, f'BGR input still scores {bad:.3f}: the colors do not matter ({per_class})'
    assert bad < good - 0.1

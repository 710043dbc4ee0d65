"""The exported bicubic upsampling (transposed convolutions) is the same function as PyTorch's bicubic."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from evit_ros.model.upsample import BicubicUpsample, phase_weights


@pytest.mark.parametrize('scale', [2, 4, 8, 16])
@pytest.mark.parametrize('hw', [(1, 1), (3, 5), (16, 32)])
def test_convolution_form_equals_interpolate(scale: int, hw: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(scale)
    x = torch.randn(2, 7, *hw, generator=g) * 10
    ref = F.interpolate(x, scale_factor=scale, mode='bicubic', align_corners=False)
    up = BicubicUpsample(scale, 7)
    phased = up.phase_major(x)
    got = up.interleave_rows(phased)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)
    # phase-major rows: row p * h + k is output row k * s + p; one-channel maps interleave the same way
    h = hw[0]
    if scale > 1:
        torch.testing.assert_close(phased[:, :, h], ref[:, :, 1], rtol=0, atol=2e-5)
    torch.testing.assert_close(up.interleave_rows(phased[:, 3]), ref[:, 3], rtol=0, atol=2e-5)


def test_kernel_phases_are_partitions_of_unity() -> None:
    k = phase_weights(8)
    assert k.shape == (8, 5)
    for p in range(8):
        assert k[p].sum() == pytest.approx(1.0, abs=1e-12)


def test_export_has_no_resize_and_matches_in_onnxruntime() -> None:
    up = BicubicUpsample(8, 19).eval()
    x = torch.randn(1, 19, 8, 16)
    buf = io.BytesIO()
    torch.onnx.export(up, (x,), buf, dynamo=False, opset_version=17, input_names=['x'], output_names=['y'])
    model = onnx.load_from_string(buf.getvalue())
    ops = {n.op_type for n in model.graph.node}
    assert 'Resize' not in ops and 'Conv' in ops and 'Cast' not in ops
    sess = ort.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])
    y = sess.run(None, {'x': x.numpy()})[0]
    ref = F.interpolate(x, scale_factor=8, mode='bicubic', align_corners=False).numpy()
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5)

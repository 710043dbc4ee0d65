"""Exact bicubic upsampling by an integer factor, as two depthwise transposed convolutions.

``F.interpolate(mode='bicubic', align_corners=False)`` exports to an ONNX ``Resize(cubic)`` that ONNX
Runtime's CPU kernel runs more than ten times slower than the whole network at 512x1024. For an integer
scale ``s`` every output pixel is a fixed 4-tap combination per axis whose weights depend only on its
phase (output index mod ``s``), so the same function is a separable stride-``s`` ConvTranspose over the
edge-padded input (PyTorch clamps source indices, which replicate padding reproduces exactly).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic coefficient


def _cubic_weights(t: float) -> tuple[float, float, float, float]:
    """Weights of the taps at floor-1 .. floor+2 for fractional position ``t`` (Keys kernel, a=-0.75)."""
    a = CUBIC_A

    def near(x: float) -> float:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def transposed_kernel(scale: int) -> np.ndarray:
    """1-D ConvTranspose kernel (length ``5 * scale``): entry ``scale * (2 - d) + p`` weighs source offset
    ``d`` in -2..2 for output phase ``p``, on an input padded by 2."""
    k = np.zeros(5 * scale, np.float64)
    for p in range(scale):
        src = (p + 0.5) / scale - 0.5
        fl = int(np.floor(src))
        for j, w in enumerate(_cubic_weights(src - fl)):
            d = fl - 1 + j
            k[scale * (2 - d) + p] += w
    return k


def _replicate_pad2(x: torch.Tensor) -> torch.Tensor:
    """Edge padding by 2 on H and W as Slice/Concat (a Pad traces extra Casts and is not needed here)."""
    left, right = x[:, :, :, :1], x[:, :, :, -1:]
    x = torch.cat([left, left, x, right, right], dim=3)
    top, bottom = x[:, :, :1], x[:, :, -1:]
    return torch.cat([top, top, x, bottom, bottom], dim=2)


class BicubicUpsample(nn.Module):
    """``F.interpolate(x, scale_factor=scale, mode='bicubic', align_corners=False)`` for ``channels`` channels."""

    def __init__(self, scale: int, channels: int) -> None:
        super().__init__()
        if scale < 1 or channels < 1:
            raise ValueError(f'scale={scale} and channels={channels} must be >= 1')
        self.scale = int(scale)
        self.channels = int(channels)
        k = torch.tensor(transposed_kernel(self.scale), dtype=torch.float32)
        self.register_buffer('kernel_w', k.view(1, 1, 1, -1).repeat(self.channels, 1, 1, 1), persistent=False)
        self.register_buffer('kernel_h', k.view(1, 1, -1, 1).repeat(self.channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            # eager PyTorch has a fast native bicubic and a slow grouped transposed convolution
            return F.interpolate(x, scale_factor=self.scale, mode='bicubic', align_corners=False)
        return self.as_convolutions(x)

    def as_convolutions(self, x: torch.Tensor) -> torch.Tensor:
        """The traced form: edge pad, then stride-``scale`` depthwise ConvTranspose along W and along H."""
        s = self.scale
        kw, kh = self.kernel_w, self.kernel_h
        if kw.dtype != x.dtype:  # no Cast traced in fp32 exports
            kw, kh = kw.to(x.dtype), kh.to(x.dtype)
        xp = _replicate_pad2(x)
        y = F.conv_transpose2d(xp, kw, stride=(1, s), padding=(0, 4 * s), groups=self.channels)
        return F.conv_transpose2d(y, kh, stride=(s, 1), padding=(4 * s, 0), groups=self.channels)

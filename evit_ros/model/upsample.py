"""Exact bicubic upsampling by an integer factor, traced as small convolutions instead of ``Resize(cubic)``.

``F.interpolate(mode='bicubic', align_corners=False)`` exports to an ONNX ``Resize(cubic)`` that ONNX
Runtime's CPU kernel runs more than ten times slower than the whole network at 512x1024. For an integer
scale ``s`` every output pixel is a fixed 4-tap combination per axis whose weights depend only on its
phase (output index mod ``s``): per axis, a grouped convolution with ``s`` outputs per channel (one per
phase) over the edge-padded input (PyTorch clamps source indices, which replicate padding reproduces).

Along W the phases are interleaved right away (the tensor is still small). Along H the result is left
*phase-major* (row ``p * h + k`` holds output row ``k * s + p``): per-pixel reductions over channels
(argmax, max softmax) do not care about row order, so the segmentation head reduces first and interleaves
only the one-channel uint8 maps (:meth:`BicubicUpsample.interleave_rows`). Eager PyTorch keeps its own
fast native bicubic; both forms are the same function (tested to 2e-5).
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


def phase_weights(scale: int) -> np.ndarray:
    """``[scale, 5]``: weight of source offset ``d - 2`` (d = 0..4) for output phase ``p``."""
    k = np.zeros((scale, 5), np.float64)
    for p in range(scale):
        src = (p + 0.5) / scale - 0.5
        fl = int(np.floor(src))
        for j, w in enumerate(_cubic_weights(src - fl)):
            k[p, fl - 1 + j + 2] += w
    return k


def exporting() -> bool:
    """True while torch.onnx / the JIT tracer records the graph."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def _pad_rows(x: torch.Tensor) -> torch.Tensor:
    top, bottom = x[:, :, :1], x[:, :, -1:]
    return torch.cat([top, top, x, bottom, bottom], dim=2)


def _pad_cols(x: torch.Tensor) -> torch.Tensor:
    left, right = x[..., :1], x[..., -1:]
    return torch.cat([left, left, x, right, right], dim=3)


class BicubicUpsample(nn.Module):
    """``F.interpolate(x, scale_factor=scale, mode='bicubic', align_corners=False)`` for ``channels`` channels."""

    kernel_w: torch.Tensor
    kernel_h: torch.Tensor

    def __init__(self, scale: int, channels: int) -> None:
        super().__init__()
        if scale < 1 or channels < 1:
            raise ValueError(f'scale={scale} and channels={channels} must be >= 1')
        self.scale = int(scale)
        self.channels = int(channels)
        k = torch.tensor(phase_weights(self.scale), dtype=torch.float32)
        self.register_buffer('kernel_w', k.view(self.scale, 1, 1, 5).repeat(self.channels, 1, 1, 1),
                             persistent=False)
        self.register_buffer('kernel_h', k.view(self.scale, 1, 5, 1).repeat(self.channels, 1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not exporting():
            return F.interpolate(x, scale_factor=self.scale, mode='bicubic', align_corners=False)
        return self.interleave_rows(self.phase_major(x))

    def phase_major(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, h, w]`` -> ``[N, C, s*h, s*w]`` upsampled, columns in order, rows phase-major."""
        n, c, h, w = x.shape
        s = self.scale
        kw, kh = self.kernel_w, self.kernel_h
        if kw.dtype != x.dtype:  # no Cast traced in fp32 exports
            kw, kh = kw.to(x.dtype), kh.to(x.dtype)
        y = F.conv2d(_pad_cols(x), kw, groups=c)                                  # [N, C*s, h, w]
        y = y.reshape(n, c, s, h, w).permute(0, 1, 3, 4, 2).reshape(n, c, h, w * s)
        z = F.conv2d(_pad_rows(y), kh, groups=c)                                  # [N, C*s, h, W]
        return z.reshape(n, c, s * h, w * s)

    def interleave_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Phase-major rows -> natural order, for ``[N, C, s*h, W]`` or ``[N, s*h, W]``."""
        s = self.scale
        lead = t.shape[:-2]
        rows, cols = t.shape[-2], t.shape[-1]
        h = rows // s
        t = t.reshape(-1, s, h, cols).permute(0, 2, 1, 3)
        return t.reshape(*lead, rows, cols)

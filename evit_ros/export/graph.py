"""The deployable function: camera pixels in, task outputs out (see :mod:`evit_ros.contract`).

:class:`DeployGraph` wraps a segmentation network with the preprocessing and the head so the whole
path lives in one graph. It is what the exporter traces and what the torch backend runs, so every
backend computes exactly this function.

Order of operations (uint8-nhwc input): cast to float32 -> NHWC->NCHW (TensorRT rejects a Transpose
on UINT8, so the cast comes first) -> ``x / 255`` -> ``(x - mean) / std`` (folded into one multiply-add)
-> optional bicubic resize (align_corners=False, a=-0.75, like ``cv2.INTER_CUBIC`` of the official
evaluation, but on float values without uint8 rounding) from ``input_hw`` to ``model_hw`` -> network ->
head. ``labels`` upsamples the 1/8 logits to ``input_hw`` with bicubic/align_corners=False (the official
evaluation's ``resize``) and takes the argmax.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evit_ros.contract import HEADS, IMAGENET_MEAN, IMAGENET_STD, INPUT_FORMATS, NODE_HEAD
from evit_ros.errors import ExportError
from evit_ros.model.upsample import BicubicUpsample, exporting

LABELS_DTYPES = ('uint8', 'int32')


def _num_classes(model: nn.Module) -> int | None:
    """Output channels of the classifier (the last Conv2d registered), or None if there is none."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            last = m
    return None if last is None else int(last.out_channels)


def _hw(name: str, value: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ExportError(f'{name}={value!r} must be a (height, width) pair of positive integers') from exc
    if h <= 0 or w <= 0:
        raise ExportError(f'{name}={value!r} must be positive, e.g. (512, 1024)')
    return h, w


class DeployGraph(nn.Module):
    """Preprocessing + network + head; ``forward(images)`` returns the head's outputs in contract order."""

    scale: torch.Tensor
    bias: torch.Tensor
    class_ones: torch.Tensor

    def __init__(self, model: nn.Module, *, head: str = NODE_HEAD, input_format: str = 'uint8-nhwc',
                 model_hw: tuple[int, int] = (512, 1024), input_hw: tuple[int, int] | None = None,
                 labels_dtype: str = 'uint8', mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if head not in HEADS:
            raise ExportError(f'head={head!r} is not valid; use one of: {", ".join(HEADS)}')
        if input_format not in INPUT_FORMATS:
            raise ExportError(f'input_format={input_format!r} is not valid; use one of: {", ".join(INPUT_FORMATS)}')
        if labels_dtype not in LABELS_DTYPES:
            raise ExportError(f'labels_dtype={labels_dtype!r} is not valid; use uint8 or int32')
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ExportError(f'mean={mean!r}, std={std!r} must be 3 values each, std > 0')
        self.model = model
        self.head = head
        self.input_format = input_format
        self.model_hw = _hw('model_hw', model_hw)
        self.input_hw = _hw('input_hw', input_hw) if input_hw is not None else self.model_hw
        self.labels_dtype = labels_dtype
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # (x / 255 - mean) / std == x * scale + bias
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], dtype=torch.float32).view(1, 3, 1, 1)
        bias = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)], dtype=torch.float32)
        bias = bias.view(1, 3, 1, 1)
        self.register_buffer('scale', scale, persistent=False)
        self.register_buffer('bias', bias, persistent=False)
        # integer-factor bicubic as per-phase grouped convolutions when exported (same function, >10x faster
        # than Resize(cubic) in ONNX Runtime); see evit_ros/model/upsample.py
        self.upsample: BicubicUpsample | None = None
        classes = _num_classes(model)
        lh, lw = self.model_hw[0] // 8, self.model_hw[1] // 8
        ih, iw = self.input_hw
        self.register_buffer('class_ones', torch.ones((1, classes or 1, 1, 1)), persistent=False)
        if classes is not None and ih % lh == 0 and iw % lw == 0 and ih // lh == iw // lw and ih // lh > 1:
            self.upsample = BicubicUpsample(ih // lh, classes)

    def extra_repr(self) -> str:
        return (f'head={self.head}, input_format={self.input_format}, input_hw={self.input_hw}, '
                f'model_hw={self.model_hw}, labels_dtype={self.labels_dtype}')

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Graph input -> normalized float32 NCHW at the model size."""
        if self.input_format == 'uint8-nhwc':
            x = images.to(torch.float32).permute(0, 3, 1, 2)
            x = x * self.scale + self.bias
        else:
            x = images.to(torch.float32)
        if self.input_hw != self.model_hw:
            x = F.interpolate(x, size=self.model_hw, mode='bicubic', align_corners=False)
        return x

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Network logits ``[N, C, H/8, W/8]`` (float32) for graph inputs."""
        out = self.model(self.preprocess(images))
        return out.float() if out.dtype != torch.float32 else out

    def _labels(self, scores: torch.Tensor) -> torch.Tensor:
        return self._labels_dtype(torch.argmax(scores, dim=1))

    def _labels_dtype(self, ids: torch.Tensor) -> torch.Tensor:
        """Integer class ids -> the exported labels dtype. uint8 goes through float32 (exact for ids < 2**24):
        TensorRT 8.6 converts UINT8 only to/from FLOAT and HALF, so Cast(int32/int64 -> uint8) fails to build."""
        if self.labels_dtype == 'uint8':
            return ids.to(torch.float32).to(torch.uint8)
        return ids.to(torch.int32)

    def _upsample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.input_hw == (self.model_hw[0] // 8, self.model_hw[1] // 8):
            return logits
        return F.interpolate(logits, size=self.input_hw, mode='bicubic', align_corners=False)

    def apply_head(self, logits: torch.Tensor) -> Any:
        """Logits -> the outputs of ``contract.HEAD_OUTPUTS[head]`` (a tensor, or a tuple for two outputs)."""
        if self.head == 'logits':
            return logits
        if self.head == 'labels-lowres':
            return self._labels(logits)
        upsample = self.upsample if exporting() and self.upsample is not None \
            and logits.shape[1] == self.upsample.channels else None
        # exported: reduce over classes on phase-major rows, interleave only the per-pixel maps (see
        # upsample.py). They are interleaved as int32/float and cast to uint8 last: TensorRT rejects UINT8
        # intermediate tensors (its parser allows UINT8 only at network inputs and outputs).
        if upsample is not None:
            up = upsample.phase_major(logits)
            ids = upsample.interleave_rows(torch.argmax(up, dim=1).to(torch.int32))
            labels = self._labels_dtype(ids)
        else:
            up = self._upsample(logits)
            labels = self._labels(up)
        if self.head == 'labels':
            return labels
        if self.head == 'labels+logits':
            return labels, logits
        # max softmax = 1 / sum(exp(l - max l)); the channel sum as a 1x1 conv is far cheaper than Softmax on
        # axis 1 (runtimes transpose for it) or ReduceSum in ONNX Runtime
        peak = up.amax(dim=1, keepdim=True)
        if self.class_ones.shape[1] == up.shape[1]:
            ones = self.class_ones if self.class_ones.dtype == up.dtype else self.class_ones.to(up.dtype)
            conf = 1.0 / F.conv2d(torch.exp(up - peak), ones)[:, 0]
        else:
            conf = 1.0 / torch.exp(up - peak).sum(dim=1)
        conf = torch.round(conf * 255.0)
        if upsample is not None:
            conf = upsample.interleave_rows(conf)
        return labels, conf.to(torch.uint8)

    def forward(self, images: torch.Tensor) -> Any:
        return self.apply_head(self.logits(images))

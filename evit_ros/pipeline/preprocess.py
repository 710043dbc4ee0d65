"""Camera frames -> the model's input batch (uint8 NHWC RGB, or normalized float32 NCHW).

A :class:`ResizePlan` maps a source box of the camera frame onto a destination box of the model image:

* ``stretch``: whole frame -> whole model image (aspect ratio not kept; the official evaluation's choice
  when the camera already has the model's aspect ratio).
* ``letterbox``: whole frame -> a centred box of the model image keeping the aspect ratio; the margins are
  ``pad_value`` (and map back to nothing).
* ``crop``: a centred box of the frame with the model's aspect ratio -> whole model image; the frame outside
  the box is not seen by the model (its labels become 255 = ignore).

The plan is all :mod:`evit_ros.pipeline.postprocess` needs to map labels back exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from evit_ros.config import INTERPOLATIONS, RESIZE_MODES
from evit_ros.errors import ConfigError, FrameError

INTERPOLATION_FLAGS: dict[str, int] = {
    'bicubic': cv2.INTER_CUBIC, 'linear': cv2.INTER_LINEAR, 'area': cv2.INTER_AREA, 'nearest': cv2.INTER_NEAREST,
}


@dataclass(frozen=True)
class ResizePlan:
    """Source box ``src_box`` of the frame is resized onto ``dst_box`` of the model image.

    Boxes are ``(y0, x0, h, w)`` in integer pixels. ``scale_y``/``scale_x`` = destination / source size of
    the boxes (equal up to rounding for letterbox and crop).
    """

    src_hw: tuple[int, int]
    out_hw: tuple[int, int]
    mode: str
    src_box: tuple[int, int, int, int]
    dst_box: tuple[int, int, int, int]

    @property
    def scale_y(self) -> float:
        return self.dst_box[2] / self.src_box[2]

    @property
    def scale_x(self) -> float:
        return self.dst_box[3] / self.src_box[3]

    @property
    def offset_yx(self) -> tuple[int, int]:
        """Top-left of the content in the model image (letterbox padding), in model pixels."""
        return self.dst_box[0], self.dst_box[1]

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """``(y0, x0, h, w)`` of the frame region the model sees (the whole frame unless ``crop``)."""
        return self.src_box

    @property
    def is_identity(self) -> bool:
        return self.src_hw == self.out_hw and self.src_box == self.dst_box == (0, 0, *self.out_hw)

    def model_to_source_yx(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel-centre coordinates in the model image -> the frame (for intrinsics, boxes)."""
        sy0, sx0, sh, sw = self.src_box
        dy0, dx0, dh, dw = self.dst_box
        return ((np.asarray(y, float) - dy0 + 0.5) * sh / dh - 0.5 + sy0,
                (np.asarray(x, float) - dx0 + 0.5) * sw / dw - 0.5 + sx0)


def make_plan(src_hw: tuple[int, int], out_hw: tuple[int, int], mode: str) -> ResizePlan:
    """The resize plan of one frame size (see the module docstring for the modes)."""
    sh, sw = int(src_hw[0]), int(src_hw[1])
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if sh <= 0 or sw <= 0:
        raise FrameError(f'frame size {sw}x{sh} is empty; frames must be at least 1x1', 'size')
    if mode == 'stretch':
        return ResizePlan((sh, sw), (oh, ow), mode, (0, 0, sh, sw), (0, 0, oh, ow))
    if mode == 'letterbox':
        s = min(oh / sh, ow / sw)
        rh, rw = max(1, min(oh, round(sh * s))), max(1, min(ow, round(sw * s)))
        return ResizePlan((sh, sw), (oh, ow), mode, (0, 0, sh, sw), ((oh - rh) // 2, (ow - rw) // 2, rh, rw))
    if mode == 'crop':
        s = max(oh / sh, ow / sw)
        ch, cw = max(1, min(sh, round(oh / s))), max(1, min(sw, round(ow / s)))
        return ResizePlan((sh, sw), (oh, ow), mode, ((sh - ch) // 2, (sw - cw) // 2, ch, cw), (0, 0, oh, ow))
    raise ConfigError(f'resize mode {mode!r} is not valid; use one of: {", ".join(RESIZE_MODES)}')


def _check_frame(frame: np.ndarray, index: int) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f'{frame.dtype} {frame.shape}' if isinstance(frame, np.ndarray) else type(frame).__name__
        raise FrameError(f'frame {index} is {desc}; expected RGB uint8 [H, W, 3] (decode it first)', 'encoding')
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FrameError(f'frame {index} has size {frame.shape[1]}x{frame.shape[0]}; expected a non-empty image',
                         'size')


class Preprocessor:
    """Resizes camera frames into a reused uint8 ``[N, H, W, 3]`` batch according to a cached plan per size."""

    def __init__(self, out_hw: tuple[int, int], mode: str = 'stretch', interpolation: str = 'linear',
                 pad_value: int = 0) -> None:
        if mode not in RESIZE_MODES:
            raise ConfigError(f'resize mode {mode!r} is not valid; use one of: {", ".join(RESIZE_MODES)}')
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f'interpolation {interpolation!r} is not valid; use one of: {", ".join(INTERPOLATIONS)}')
        if not (0 <= int(pad_value) <= 255):
            raise ConfigError(f'pad_value={pad_value} must be in [0, 255]')
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.mode = mode
        self.interpolation = interpolation
        self.pad_value = int(pad_value)
        self._flag = INTERPOLATION_FLAGS[interpolation]
        self._plans: dict[tuple[int, int], ResizePlan] = {}
        self._buffer: np.ndarray | None = None

    def plan(self, src_hw: tuple[int, int]) -> ResizePlan:
        """The (cached) plan for frames of ``src_hw``."""
        key = (int(src_hw[0]), int(src_hw[1]))
        p = self._plans.get(key)
        if p is None:
            if len(self._plans) > 32:  # bounded: a camera changing size every frame must not grow memory
                self._plans.clear()
            p = self._plans[key] = make_plan(key, self.out_hw, self.mode)
        return p

    def batch_buffer(self, n: int) -> np.ndarray:
        """A reused uint8 ``[n, H, W, 3]`` buffer (grown, never shrunk)."""
        if self._buffer is None or self._buffer.shape[0] < n:
            self._buffer = np.empty((n, *self.out_hw, 3), np.uint8)
        return self._buffer[:n]

    def run_one(self, frame: np.ndarray, dst: np.ndarray) -> ResizePlan:
        """Resize one RGB frame into ``dst`` (``[H, W, 3]`` uint8, written in place); returns its plan."""
        p = self.plan(frame.shape[:2])
        sy0, sx0, sh, sw = p.src_box
        dy0, dx0, dh, dw = p.dst_box
        src = frame[sy0:sy0 + sh, sx0:sx0 + sw]
        if (sh, sw) == (dh, dw):
            target = dst[dy0:dy0 + dh, dx0:dx0 + dw]
            np.copyto(target, src)
        else:
            target = dst[dy0:dy0 + dh, dx0:dx0 + dw]
            res = cv2.resize(src, (dw, dh), dst=target, interpolation=self._flag)
            if not np.shares_memory(res, dst):  # older OpenCV may not write into a strided view
                np.copyto(target, res)
        if (dh, dw) != self.out_hw:
            dst[:dy0] = self.pad_value
            dst[dy0 + dh:] = self.pad_value
            dst[dy0:dy0 + dh, :dx0] = self.pad_value
            dst[dy0:dy0 + dh, dx0 + dw:] = self.pad_value
        return p

    def run(self, frames: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """Resize RGB uint8 frames (any sizes) into ``out`` or the internal reused buffer; returns ``[N, H, W, 3]``.

        The returned internal buffer is overwritten by the next call.
        """
        n = len(frames)
        if out is None:
            out = self.batch_buffer(n)
        elif out.shape != (n, *self.out_hw, 3) or out.dtype != np.uint8:
            raise ConfigError(f'out buffer is {out.dtype} {out.shape}; expected uint8 {(n, *self.out_hw, 3)}')
        for i, frame in enumerate(frames):
            _check_frame(frame, i)
            self.run_one(frame, out[i])
        return out


def normalize_nchw(batch_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   out: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` RGB -> float32 ``[N, 3, H, W]`` ``(x/255 - mean) / std`` (mean/std on the 0..1 scale).

    For graphs exported with ``input_format='float-nchw'``; uint8 graphs normalize inside and skip this.
    """
    n, h, w, c = batch_uint8.shape
    if out is None:
        out = np.empty((n, c, h, w), np.float32)
    elif out.shape != (n, c, h, w) or out.dtype != np.float32:
        raise ConfigError(f'out buffer is {out.dtype} {out.shape}; expected float32 {(n, c, h, w)}')
    for ch in range(c):
        scale = np.float32(1.0 / (255.0 * std[ch]))
        offset = np.float32(mean[ch] / std[ch])
        np.multiply(batch_uint8[..., ch], scale, out=out[:, ch], dtype=np.float32)
        np.subtract(out[:, ch], offset, out=out[:, ch])
    return out

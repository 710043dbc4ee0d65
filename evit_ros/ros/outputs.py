"""The node's per-frame output stage: what each camera's subscribers want, computed and published in order.

Order per batch: class ids (and confidence only if someone subscribes to it) for every frame, then per camera
the mask is published first, and only then are color, overlay, group masks, grid and boundary computed and
published, each only while it has a subscriber. Message payloads are the pipeline's own output buffers
(``array.array``-backed, see :func:`evit_ros.ros.conversions.backing_array`): nothing is copied before
``publish``, which serializes synchronously.

Each image output also has ``<output>/compressed`` (sensor_msgs/CompressedImage, image_transport's naming and
``format`` strings): mask and confidence as PNG (lossless: class ids survive), color mask and overlay as JPEG
(``outputs.jpeg_quality``). A compressed output counts as a subscriber of what it encodes (an overlay is
computed when only ``overlay/compressed`` is subscribed) and is encoded only while subscribed itself.

Timings per frame (ms): ``postprocess`` (labels + derived outputs), ``publish`` (all publish calls) and
``host`` = decode + preprocess + postprocess + publish, the node's own work besides inference.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from evit_ros.config import NodeConfig
from evit_ros.errors import EvitError
from evit_ros.pipeline import GroundProjector, Segmenter
from evit_ros.ros import conversions as conv

BOUNDARY_MAX_POINTS = 256
# OpenCV threads of the node's pipeline. Every OpenCV call here is short (0.1-3 ms on a 2 MP frame); with a
# thread pool, each call waits for its slowest worker, and on a loaded machine (inference threads spinning
# on the same cores) that wait is several times the work. One thread measured faster and far steadier; see
# the measurements in docs/performance.md (`python -m evit_ros.bench.stages --threads 1` vs `--threads 2`).
OPENCV_THREADS = 1


def pipeline_threads(n: int = OPENCV_THREADS) -> int:
    """Set OpenCV's (process-wide) thread count for the pipeline; returns what OpenCV reports."""
    cv2.setNumThreads(int(n))
    return int(cv2.getNumThreads())


@dataclass(frozen=True)
class Wants:
    """What one camera's subscribers want this frame (toggles and subscriber counts both)."""

    mask: bool
    color: bool
    overlay: bool
    confidence: bool
    group_masks: frozenset[str]
    grids: frozenset[str]
    boundaries: frozenset[str]
    fractions: bool = True      # class fractions for the next diagnostics report
    compressed: frozenset[str] = frozenset()   # of mask, color_mask, overlay, confidence: <output>/compressed
    # of the same four: the raw Image subscribed (color/overlay/confidence above say computed, for either form)
    raw: frozenset[str] = frozenset({'mask', 'color_mask', 'overlay', 'confidence'})


# <output>/compressed: codec of each image output (PNG keeps class ids and confidence exact)
COMPRESSED_CODECS = {'mask': ('mono8', 'png'), 'confidence': ('mono8', 'png'), 'color_mask': ('rgb8', 'jpeg'),
                     'overlay': ('rgb8', 'jpeg')}


def compressed_key(output: str) -> str:
    """The publisher key (and relative topic suffix) of an output's compressed twin: ``mask/compressed``."""
    return f'{output}/compressed'


def camera_wants(cam: Any, cfg: NodeConfig) -> Wants:
    """Subscriber counts of ``cam``'s publishers, gated by the ``outputs.*`` toggles."""
    out, p = cfg.outputs, cam.pubs

    def sub(pub: Any) -> bool:
        return pub.get_subscription_count() > 0

    gm, gg, gb = set(), set(), set()
    for g, gp in cam.group_pubs.items():
        if sub(gp['mask']):
            gm.add(g)
        if cam.cfg.camera_info_topic:
            if sub(gp['grid']):
                gg.add(g)
            if sub(gp['boundary']):
                gb.add(g)
    enabled = {'mask': out.mask, 'color_mask': out.color_mask, 'overlay': out.overlay, 'confidence': out.confidence}
    raw = frozenset(o for o, on in enabled.items() if on and sub(p[o]))
    compressed = frozenset(o for o, on in enabled.items()
                           if on and compressed_key(o) in p and sub(p[compressed_key(o)]))
    return Wants(mask='mask' in raw, color=bool({'color_mask'} & (raw | compressed)),
                 overlay=bool({'overlay'} & (raw | compressed)), confidence=bool({'confidence'} & (raw | compressed)),
                 group_masks=frozenset(gm), grids=frozenset(gg), boundaries=frozenset(gb),
                 fractions=cam.stats.fractions_due(), compressed=compressed, raw=raw)


class OutputStage:
    """Runs labels -> publish mask -> derive -> publish the rest for one batch of decoded frames."""

    def __init__(self, segmenter: Segmenter, stop: Any) -> None:
        self.segmenter = segmenter
        self.stop = stop
        self._bgr: dict[tuple[str, str], np.ndarray] = {}   # per camera and output: RGB->BGR scratch for JPEG

    def _publish_image(self, cam: Any, name: str, arr: np.ndarray, header: Any, want: Wants, cfg: NodeConfig
                       ) -> None:
        """Publish ``arr`` on the output ``name`` and on ``name/compressed``, each where subscribed."""
        encoding = 'mono8' if arr.ndim == 2 else 'rgb8'
        if name in want.raw:
            cam.pubs[name].publish(conv.numpy_to_image(arr, encoding, header, share=True))
        if name not in want.compressed:
            return
        _, codec = COMPRESSED_CODECS[name]
        scratch = None
        if arr.ndim == 3:
            key = (cam.cfg.name, name)
            scratch = self._bgr.get(key)
            if scratch is None or scratch.shape != arr.shape:
                scratch = self._bgr[key] = np.empty_like(arr)
        cam.pubs[compressed_key(name)].publish(conv.encode_compressed(
            arr, encoding, codec, header, quality=cfg.outputs.jpeg_quality, bgr=scratch))

    def run(self, cams: list[Any], msgs: list[Any], frames: list[np.ndarray], decode_ms: list[float],
            cfg: NodeConfig, engine_stats: Any, record: Callable[[Any, Any, Any, dict[str, float]], None]) -> None:
        """Process one batch; ``record(cam, msg, result, timings)`` is called after each camera's last publish."""
        wants = [camera_wants(c, cfg) for c in cams]
        results = self.segmenter.run_labels(frames, want_confidence=[w.confidence for w in wants],
                                            keys=[c.cfg.name for c in cams],
                                            confidence_threshold=cfg.diagnostics.low_confidence_threshold)
        for n, pre_ms, infer_ms in self.segmenter.runs:   # every engine run (more than one above its max batch)
            engine_stats.on_batch(n, {'preprocess': pre_ms, 'infer': infer_ms})
        for cam, msg, res, dec, want in zip(cams, msgs, results, decode_ms, wants, strict=True):
            if self.stop.is_set():
                return
            header = msg.header
            t0 = time.perf_counter()
            if want.mask or 'mask' in want.compressed:
                self._publish_image(cam, 'mask', res.labels, header, want, cfg)
            if want.confidence and res.confidence is not None:
                self._publish_image(cam, 'confidence', res.confidence, header, want, cfg)
            pub_ms = (time.perf_counter() - t0) * 1e3
            need_masks = want.group_masks | want.grids
            # the diagnostics report fractions of one frame per report; between reports only groups that
            # feed a subscribed output are computed
            self.segmenter.derive(res, want_color=want.color, want_overlay=want.overlay, group_masks=need_masks,
                                  want_fractions=want.fractions,
                                  compute_groups=True if want.fractions else need_masks | want.boundaries)
            t1 = time.perf_counter()
            self._publish_rest(cam, header, res, want, cfg)
            pub_ms += (time.perf_counter() - t1) * 1e3
            timings = dict(res.timings_ms)
            timings['decode'] = dec
            timings['publish'] = pub_ms
            timings['host'] = dec + timings.get('preprocess', 0.0) + timings.get('postprocess', 0.0) + pub_ms
            record(cam, msg, res, timings)

    def _publish_rest(self, cam: Any, header: Any, res: Any, want: Wants, cfg: NodeConfig) -> None:
        if want.color and res.color is not None:
            self._publish_image(cam, 'color_mask', res.color, header, want, cfg)
        if want.overlay and res.overlay is not None:
            self._publish_image(cam, 'overlay', res.overlay, header, want, cfg)
        projector = None
        for g, gr in res.groups.items():
            gp = cam.group_pubs.get(g)
            if gp is None:
                continue
            if g in want.group_masks and gr.mask is not None:
                gp['mask'].publish(conv.numpy_to_image(gr.mask, 'mono8', header, share=True))
            want_grid, want_boundary = g in want.grids, g in want.boundaries
            if not (want_grid or want_boundary):
                continue
            projector = projector or camera_projector(cam, res.labels.shape[:2], cfg)
            if projector is None:
                continue
            if want_grid and gr.mask is not None:
                gp['grid'].publish(conv.occupancy_grid(projector.project(gr.mask), resolution=projector.resolution,
                                                       origin_xy=projector.origin_xy, frame_id=cfg.grid.frame_id,
                                                       stamp=header.stamp))
            if want_boundary:
                gp['boundary'].publish(conv.polygon_stamped(boundary_polygon(cam, projector, gr.boundary_rows),
                                                            frame_id=cfg.grid.frame_id, stamp=header.stamp))


def boundary_polygon(cam: Any, projector: GroundProjector, rows: np.ndarray) -> np.ndarray:
    """Free-space polygon: the camera's ground point, then the boundary points left to right in the image."""
    pts = projector.boundary_points(rows)
    if len(pts) > BOUNDARY_MAX_POINTS:
        pts = pts[np.linspace(0, len(pts) - 1, BOUNDARY_MAX_POINTS).round().astype(int)]
    if not len(pts):
        return pts
    mount = cam.cfg.mount
    return np.vstack([[mount.x_m, mount.y_m], pts])


def camera_projector(cam: Any, mask_hw: tuple[int, int], cfg: NodeConfig) -> GroundProjector | None:
    """The camera's GroundProjector for this mask size, rebuilt when intrinsics, mount or grid change."""
    if not cam.cfg.camera_info_topic:
        return None
    if cam.info is None:
        cam.stats.grid_status = f'waiting for CameraInfo on {cam.cfg.camera_info_topic}: no grid/boundary yet'
        return None
    if cfg.outputs.mask_resolution == 'model' and cfg.input.resize_mode != 'stretch':
        cam.stats.grid_status = ('no grid: model-resolution masks with input.resize_mode='
                                 f'{cfg.input.resize_mode} do not map to the camera intrinsics; use '
                                 'outputs.mask_resolution=camera')
        return None
    k, h, w = cam.info
    key = (cam.info, tuple(mask_hw), cam.cfg.mount, cfg.grid)
    if key != cam.projector_key:
        cam.projector_key = key
        cam.projector = None
        if h <= 0 or w <= 0 or not any(k):
            cam.stats.grid_status = (f'CameraInfo on {cam.cfg.camera_info_topic} has no intrinsics (K all '
                                     'zero or size 0): calibrate the camera; no grid/boundary')
            return None
        try:
            cam.projector = GroundProjector(k, (h, w), mask_hw, cam.cfg.mount, cfg.grid)
        except EvitError as exc:
            cam.stats.grid_status = f'no grid: {exc}'
            return None
        rows, cols = cam.projector.shape
        cam.stats.grid_status = (f'ok: {cols}x{rows} cells of {cfg.grid.resolution_m} m in '
                                 f'{cfg.grid.frame_id}, {cam.projector.observed_cells} observed')
    return cam.projector


__all__ = ['BOUNDARY_MAX_POINTS', 'COMPRESSED_CODECS', 'OPENCV_THREADS', 'OutputStage', 'Wants', 'boundary_polygon',
           'camera_projector', 'camera_wants', 'compressed_key', 'pipeline_threads']

"""The node's per-frame output stage: what each camera's subscribers want, computed and published in order.

Order per batch: class ids (and confidence only if someone subscribes to it) for every frame, then per camera
the mask is published first, and only then are color, overlay, group masks, grid and boundary computed and
published, each only while it has a subscriber. Message payloads are the pipeline's own output buffers
(``array.array``-backed, see :func:`evit_ros.ros.conversions.backing_array`): nothing is copied before
``publish``, which serializes synchronously.

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
    return Wants(mask=out.mask and sub(p['mask']), color=out.color_mask and sub(p['color_mask']),
                 overlay=out.overlay and sub(p['overlay']), confidence=out.confidence and sub(p['confidence']),
                 group_masks=frozenset(gm), grids=frozenset(gg), boundaries=frozenset(gb),
                 fractions=cam.stats.fractions_due())


class OutputStage:
    """Runs labels -> publish mask -> derive -> publish the rest for one batch of decoded frames."""

    def __init__(self, segmenter: Segmenter, stop: Any) -> None:
        self.segmenter = segmenter
        self.stop = stop

    def run(self, cams: list[Any], msgs: list[Any], frames: list[np.ndarray], decode_ms: list[float],
            cfg: NodeConfig, engine_stats: Any, record: Callable[[Any, Any, Any, dict[str, float]], None]) -> None:
        """Process one batch; ``record(cam, msg, result, timings)`` is called after each camera's last publish."""
        wants = [camera_wants(c, cfg) for c in cams]
        results = self.segmenter.run_labels(frames, want_confidence=[w.confidence for w in wants])
        first = results[0].timings_ms
        engine_stats.on_batch(len(frames), {'preprocess': first.get('preprocess', 0.0),
                                            'infer': first.get('infer', 0.0)})
        for cam, msg, res, dec, want in zip(cams, msgs, results, decode_ms, wants, strict=True):
            if self.stop.is_set():
                return
            header = msg.header
            t0 = time.perf_counter()
            if want.mask:
                cam.pubs['mask'].publish(conv.numpy_to_image(res.labels, 'mono8', header, share=True))
            if want.confidence and res.confidence is not None:
                cam.pubs['confidence'].publish(conv.numpy_to_image(res.confidence, 'mono8', header, share=True))
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
        p = cam.pubs
        if want.color and res.color is not None:
            p['color_mask'].publish(conv.numpy_to_image(res.color, 'rgb8', header, share=True))
        if want.overlay and res.overlay is not None:
            p['overlay'].publish(conv.numpy_to_image(res.overlay, 'rgb8', header, share=True))
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


__all__ = ['BOUNDARY_MAX_POINTS', 'OPENCV_THREADS', 'OutputStage', 'Wants', 'boundary_polygon',
           'camera_projector', 'camera_wants', 'pipeline_threads']

"""Latency benchmark of the node's pipeline on one backend (``evit-ros bench``).

Each iteration runs exactly what the node runs per batch: preprocess (resize into the batch buffer),
backend inference, postprocess (labels back to the camera size, color mask, drivable groups). The
``torch-eager-host`` baseline is what a plain PyTorch node does instead: host-side normalization, an
eager forward to 1/8 logits, then upsampling and argmax on the host.
"""
from __future__ import annotations

import gc
import logging
import resource
import sys
import time
from typing import Any

import numpy as np

from evit_ros.config import BackendConfig, DrivableConfig, InputConfig, ModelConfig, OutputConfig
from evit_ros.contract import IMAGENET_MEAN, IMAGENET_STD, NODE_HEAD
from evit_ros.eval.metrics import LatencyStats

log = logging.getLogger(__name__)

BASELINE = 'torch-eager-host'
BENCH_BACKENDS = ('auto', 'tensorrt', 'onnxruntime', 'torch', BASELINE)
STAGES = ('preprocess', 'infer', 'postprocess', 'total')


def peak_rss_mb() -> float:
    """Peak resident set size of this process since start or the last :func:`reset_peak_rss` (MiB).

    Linux: ``VmHWM`` of /proc/self/status (resettable); elsewhere ``ru_maxrss`` (process lifetime).
    """
    hwm = _proc_status_kib('VmHWM')
    if hwm is not None:
        return hwm / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == 'darwin' else peak / 1024.0


def current_rss_mb() -> float:
    """Resident set size now (MiB); the peak when the current value is not available."""
    rss = _proc_status_kib('VmRSS')
    return rss / 1024.0 if rss is not None else peak_rss_mb()


def reset_peak_rss() -> bool:
    """Restart the peak-RSS counter (Linux ``clear_refs`` 5) so each backend's peak is its own; False if impossible."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _proc_status_kib(key: str) -> int | None:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def camera_frames(n: int, hw: tuple[int, int]) -> list[np.ndarray]:
    """``n`` distinct synthetic driving scenes (realistic content, so argmax and masks do real work)."""
    from evit_ros.synthetic.scenes import generate_scene
    h, w = hw
    gh, gw = max(32, (h // 32) * 32), max(32, (w // 32) * 32)
    import cv2
    out = []
    for i in range(n):
        rgb, _ = generate_scene(1000 + i, gh, gw)
        out.append(rgb if (gh, gw) == (h, w) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR))
    return out


class _EagerHostBaseline:
    """A plain PyTorch node: numpy normalization, eager forward, host upsample + argmax. The speed baseline."""

    def __init__(self, model: ModelConfig, input_cfg: InputConfig, threads: int) -> None:
        import torch

        from evit_ros.backends import resolve_checkpoint
        from evit_ros.model import create_model
        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.net: Any = create_model(model.name, checkpoint=resolve_checkpoint(model)).eval()
        self.hw = (input_cfg.height, input_cfg.width)
        self.mean = np.array(IMAGENET_MEAN, np.float32)
        self.std = np.array(IMAGENET_STD, np.float32)

    def run(self, frames: list[np.ndarray]) -> dict[str, float]:
        import cv2
        torch = self.torch
        t0 = time.perf_counter()
        h, w = self.hw
        batch = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames])
        x = ((batch.astype(np.float32) / 255.0 - self.mean) / self.std).transpose(0, 3, 1, 2)
        xt = torch.from_numpy(np.ascontiguousarray(x))
        t1 = time.perf_counter()
        with torch.inference_mode():
            logits = self.net(xt)
        t2 = time.perf_counter()
        with torch.inference_mode():
            up = torch.nn.functional.interpolate(logits, size=(h, w), mode='bicubic', align_corners=False)
            labels = up.argmax(1).to(torch.uint8).numpy()
        for f, lab in zip(frames, labels, strict=True):
            cv2.resize(lab, (f.shape[1], f.shape[0]), interpolation=cv2.INTER_NEAREST)
        t3 = time.perf_counter()
        return {'preprocess': (t1 - t0) * 1e3, 'infer': (t2 - t1) * 1e3, 'postprocess': (t3 - t2) * 1e3,
                'total': (t3 - t0) * 1e3}

    def describe(self) -> dict[str, str]:
        return {'backend': BASELINE, 'device': 'cpu', 'precision': 'fp32'}

    def close(self) -> None:
        self.net = None


class _PipelineRunner:
    """The node's pipeline (Segmenter over a backend), timed per stage."""

    def __init__(self, backend_cfg: BackendConfig, model: ModelConfig, input_cfg: InputConfig, batch: int,
                 head: str) -> None:
        from evit_ros.backends import create_backend
        from evit_ros.datasets import dataset_for_model
        from evit_ros.pipeline import Segmenter
        self.backend = create_backend(backend_cfg, model=model, input_cfg=input_cfg, head=head, max_batch=batch)
        self.want_confidence = head in ('labels+confidence', 'labels+logits')
        self.backend.load()
        self.segmenter = Segmenter(self.backend, input_cfg=input_cfg, outputs=OutputConfig(),
                                   drivable=DrivableConfig(), dataset=dataset_for_model(model.name))

    def run(self, frames: list[np.ndarray]) -> dict[str, float]:
        t0 = time.perf_counter()
        results = self.segmenter.process(frames, want_color=True, want_overlay=False,
                                           want_confidence=self.want_confidence)
        total = (time.perf_counter() - t0) * 1e3
        post = sum(r.timings_ms['postprocess'] for r in results)
        return {'preprocess': results[0].timings_ms['preprocess'], 'infer': results[0].timings_ms['infer'],
                'postprocess': post, 'total': total}

    def describe(self) -> dict[str, str]:
        return self.backend.describe()

    def close(self) -> None:
        self.backend.close()


def run_benchmark(*, backend: str, model: ModelConfig, input_cfg: InputConfig, camera_hw: tuple[int, int],
                  batch: int = 1, iters: int = 20, warmup: int = 3, threads: int = 0,
                  backend_cfg: BackendConfig | None = None, head: str = NODE_HEAD) -> dict[str, Any]:
    """Warm up, then time ``iters`` batches; returns the JSON-ready report.

    ``head`` is the graph head of the pipeline runs (the node uses ``labels+logits``; the baseline
    computes labels only, so ``labels`` is the like-for-like comparison with it).
    """
    cfg = backend_cfg or BackendConfig(type='auto' if backend == BASELINE else backend, threads=threads)
    gc.collect()
    own_peak = reset_peak_rss()   # the peak of this backend, not of everything the process did before
    rss_before = current_rss_mb()
    runner: Any
    if backend == BASELINE:
        runner = _EagerHostBaseline(model, input_cfg, threads)
    else:
        runner = _PipelineRunner(cfg, model, input_cfg, batch, head)
    frames = camera_frames(batch, camera_hw)
    stats = LatencyStats()
    try:
        for _ in range(max(0, warmup)):
            runner.run(frames)
        t0 = time.perf_counter()
        for _ in range(iters):
            stats.add_all(runner.run(frames))
        wall = time.perf_counter() - t0
        info = runner.describe()
        peak = peak_rss_mb()
    finally:
        runner.close()
    summary = stats.summary()
    total = summary['total']
    return {
        'backend': backend, 'resolved_backend': info.get('backend', backend), 'model': model.name,
        'head': 'labels (host)' if backend == BASELINE else head,
        'height': input_cfg.height, 'width': input_cfg.width, 'camera_height': camera_hw[0],
        'camera_width': camera_hw[1], 'batch': batch, 'iters': iters, 'threads': threads,
        'latency_ms': {k: total[k] for k in ('p50', 'p90', 'p99', 'max', 'mean')},
        'stages_ms': {s: summary[s] for s in STAGES if s in summary},
        'fps': round(iters * batch / wall, 3), 'rss_mb': round(peak, 1),
        'rss_added_mb': round(max(0.0, peak - rss_before), 1), 'rss_before_mb': round(rss_before, 1),
        'rss_scope': 'peak while this backend loaded and ran' if own_peak else 'process peak (not resettable here)',
        'describe': info,
    }


def format_report(rep: dict[str, Any]) -> str:
    head = (f"{rep['backend']} ({rep['resolved_backend']}, {rep['head']}) {rep['model']} "
            f"input {rep['height']}x{rep['width']} "
            f"camera {rep['camera_height']}x{rep['camera_width']} batch {rep['batch']} iters {rep['iters']}")
    lines = [head, f"{'stage':<13}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  (ms)"]
    for stage, s in rep['stages_ms'].items():
        lines.append(f"{stage:<13}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}")
    lines.append(f"throughput {rep['fps']:.2f} frames/s, peak RSS {rep['rss_mb']:.0f} MB "
                 f"({rep['rss_scope']}; +{rep['rss_added_mb']:.0f} MB over the {rep['rss_before_mb']:.0f} MB "
                 'before loading it)')
    return '\n'.join(lines)

#!/usr/bin/env python3
"""The checks only a CUDA GPU can run, as one prepared script (``tools/gpu_check.sh`` runs it, then doctor).

Needs PyTorch with CUDA and cuda-python; no TensorRT, no onnxruntime-gpu. Writes ``gpu_check.json`` to
``--out`` and prints one line per check. Parts:

1. ``cuda``: the wrapper's real calls (:mod:`evit_ros.device.cuda_runtime`): device count and identity,
   device and pinned buffers, host->device->host copies on a stream, events (GPU time of a copy), a CUDA graph
   captured from copies and replayed on new data, a failing allocation (must be a ``BackendError``), release.
2. ``torch``: the torch backend on CUDA in FP32, FP16 (autocast, attention kept FP32 by the model: what the
   TensorRT builder assumes) and FP16 everywhere (the attention core forced to FP16 too), against ONNX Runtime
   (CPU) on the held-out synthetic frames: label agreement, logit error, mIoU against the scene labels, latency.
   Whether FP16 needs the attention in FP32 is the agreement of "FP16 everywhere" against "FP16, attention FP32".

``--dry-run`` runs the same code on the CPU at a small size (what the test suite checks on a GPU-less machine):
the CUDA part records the reasons it cannot run, the torch part runs FP32 on the CPU against ONNX Runtime.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODEL = 'efficientvit-seg-b0-cityscapes'


def _part(results: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one check; its result or its error goes into ``results[name]``, the next check runs regardless."""
    t0 = time.perf_counter()
    try:
        res = fn()
        res['ok'] = bool(res.get('ok', True))
    except Exception as exc:   # noqa: BLE001 - a failed check is a result, not the end of the run
        res = {'ok': False, 'error': f'{type(exc).__name__}: {exc}', 'traceback': traceback.format_exc(limit=8)}
    res['seconds'] = round(time.perf_counter() - t0, 2)
    results[name] = res
    state = 'ok' if res['ok'] else f'FAILED ({res.get("error", "see JSON")})'
    print(f'[gpu_check] {name}: {state} in {res["seconds"]} s', flush=True)


# -- 1. the CUDA wrapper ---------------------------------------------------------------------------

def check_cuda(nbytes: int, graph_runs: int) -> dict[str, Any]:
    from evit_ros.device import cuda_runtime as c
    from evit_ros.errors import BackendError
    out: dict[str, Any] = {'cuda_python': c.bindings()[0], 'module': c.bindings()[1]}
    count, why = c.device_count()
    out['devices'] = count
    if count < 1:
        # dry run / no GPU: every call must still be a BackendError naming the driver
        errors = {}
        for name, fn in (('DeviceBuffer', lambda: c.DeviceBuffer(16)), ('Stream', c.Stream), ('Event', c.Event)):
            try:
                fn()
                errors[name] = 'no error without a GPU'
            except BackendError as exc:
                errors[name] = f'BackendError: {exc}'
        out.update(ok=all(v.startswith('BackendError') for v in errors.values()), skipped=f'no CUDA device: {why}',
                   errors_without_gpu=errors)
        return out
    c.set_device(0)
    out['gpu'] = c.gpu_identity(0).describe()
    n = nbytes // 4
    src = c.PinnedBuffer((n,), 'float32')
    dst = c.PinnedBuffer((n,), 'float32')
    dev = c.DeviceBuffer(src.nbytes)
    stream = c.Stream()
    start, stop = c.Event(), c.Event()
    try:
        src.array[:] = np.arange(n, dtype=np.float32)
        dst.array[:] = -1
        start.record(stream)
        stream.copy_htod(dev.ptr, src.array, src.nbytes)
        stream.copy_dtoh(dst.array, dev.ptr, dst.nbytes)
        stop.record(stream)
        stream.synchronize()
        stop.synchronize()
        ms = stop.elapsed_ms(start)
        out['roundtrip_equal'] = bool(np.array_equal(src.array, dst.array))
        out['roundtrip_ms'] = round(ms, 3)
        out['roundtrip_gb_s'] = round(2 * src.nbytes / (ms * 1e-3) / 1e9, 2) if ms > 0 else None
        # a CUDA graph of the same two copies, replayed on new host data
        stream.begin_capture()
        stream.copy_htod(dev.ptr, src.array, src.nbytes)
        stream.copy_dtoh(dst.array, dev.ptr, dst.nbytes)
        graph = stream.end_capture()
        replays_ok = True
        t0 = time.perf_counter()
        for i in range(graph_runs):
            src.array[:] = i
            graph.launch(stream)
            stream.synchronize()
            replays_ok &= bool((dst.array == i).all())
        out['graph_replay_ms'] = round((time.perf_counter() - t0) * 1e3 / graph_runs, 3)
        out['graph_replays_equal'] = replays_ok
        graph.destroy()
        try:   # an impossible allocation is a typed error, not a crash
            c.DeviceBuffer(1 << 50)
            out['huge_alloc'] = 'no error'
        except BackendError as exc:
            out['huge_alloc'] = f'BackendError: {exc}'
    finally:
        for ev in (start, stop):
            ev.destroy()
        stream.destroy()
        for buf in (dev, src, dst):
            buf.free()
    out['ok'] = out['roundtrip_equal'] and replays_ok and out['huge_alloc'].startswith('BackendError')
    return out


# -- 2. the torch backend against ONNX Runtime -----------------------------------------------------

def _frames(n: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    from evit_ros.synthetic.scenes import generate_scene
    from evit_ros.synthetic.train import HELDOUT_SEED_BASE
    pairs = [generate_scene(HELDOUT_SEED_BASE + i, height, width) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _miou(pred: np.ndarray, labels: np.ndarray) -> float:
    from evit_ros.datasets import CITYSCAPES
    from evit_ros.synthetic.train import confusion, iou_from_confusion
    cm = sum(confusion(p, g, CITYSCAPES.num_classes) for p, g in zip(pred, labels, strict=True))
    return round(float(iou_from_confusion(cm)[0]), 4)


def _run_backend(backend: Any, frames: np.ndarray, sync: Callable[[], None], iters: int) -> dict[str, Any]:
    labels, logits = [], []
    with backend:
        for f in frames:
            r = backend.infer(f[None])
            labels.append(r.labels[0].copy())
            logits.append(r.logits[0].copy())
        for _ in range(2):
            backend.infer(frames[:1])
        sync()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            backend.infer(frames[:1])
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
    return {'labels': np.stack(labels), 'logits': np.stack(logits), 'ms_median': round(float(np.median(times)), 2)}


def _compare(name: str, got: dict[str, Any], ref: dict[str, Any], gt: np.ndarray) -> dict[str, Any]:
    agree = float((got['labels'] == ref['labels']).mean()) * 100.0
    diff = np.abs(got['logits'].astype(np.float64) - ref['logits'].astype(np.float64))
    return {'mode': name, 'label_agreement_pct': round(agree, 4), 'logit_max_abs': float(f'{diff.max():.3g}'),
            'logit_mean_abs': float(f'{diff.mean():.3g}'), 'miou_vs_scene_labels': _miou(got['labels'], gt),
            'ms_median_batch1': got['ms_median'],
            'finite': bool(np.isfinite(got['logits']).all())}


def check_torch(device: str, frames_n: int, height: int, width: int, iters: int, workdir: Path) -> dict[str, Any]:
    import torch

    from evit_ros.backends import resolve_checkpoint
    from evit_ros.backends.torch_backend import TorchBackend
    from evit_ros.config import ModelConfig
    from evit_ros.contract import NODE_HEAD as HEAD
    from evit_ros.model import ops
    out: dict[str, Any] = {'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'device': device,
                           'size': [height, width], 'frames': frames_n, 'model': MODEL}
    ckpt = resolve_checkpoint(ModelConfig(MODEL))
    out['checkpoint'] = ckpt
    frames, gt = _frames(frames_n, height, width)
    cuda = device == 'cuda'
    if cuda:
        out['gpu'] = torch.cuda.get_device_name(0)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # the reference: ONNX Runtime on the CPU (the exported graph), else PyTorch FP32 on the CPU
    try:
        from evit_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
        from evit_ros.export.onnx_export import export_onnx
        onnx_path = workdir / f'b0_{height}x{width}.onnx'
        export_onnx(MODEL, onnx_path, height=height, width=width, checkpoint=ckpt, head=HEAD)
        ref = _run_backend(OnnxRuntimeBackend(onnx_path, device='cpu'), frames, lambda: None, max(1, iters // 4))
        out['reference'] = 'onnxruntime-cpu'
    except Exception as exc:   # noqa: BLE001 - no onnxruntime/onnx on the GPU machine: torch CPU instead
        out['reference'] = f'torch-cpu-fp32 (ONNX Runtime unavailable: {type(exc).__name__}: {exc})'
        ref = _run_backend(TorchBackend(MODEL, checkpoint=ckpt, input_hw=(height, width), head=HEAD, device='cpu',
                                        precision='fp32', max_batch=1), frames, lambda: None, max(1, iters // 4))
    out['reference_miou_vs_scene_labels'] = _miou(ref['labels'], gt)
    out['reference_ms_median_batch1'] = ref['ms_median']

    def backend(precision: str) -> TorchBackend:
        return TorchBackend(MODEL, checkpoint=ckpt, input_hw=(height, width), head=HEAD, device=device,
                            precision=precision, max_batch=1)
    results = {'fp32': _compare('fp32', _run_backend(backend('fp32'), frames, sync, iters), ref, gt)}
    if cuda:
        fp16_attn32 = _run_backend(backend('fp16'), frames, sync, iters)
        results['fp16_attention_fp32'] = _compare('fp16_attention_fp32', fp16_attn32, ref, gt)
        core = ops._LinearAttentionCore
        keep = core.forward
        core.forward = lambda self, qkv: self._attend(qkv)   # type: ignore[method-assign]  # attention in FP16 too
        try:
            fp16_all = _run_backend(backend('fp16'), frames, sync, iters)
        finally:
            core.forward = keep   # type: ignore[method-assign]
        results['fp16_everywhere'] = _compare('fp16_everywhere', fp16_all, ref, gt)
        results['fp16_everywhere_vs_attention_fp32'] = _compare('fp16_everywhere_vs_attention_fp32', fp16_all,
                                                                fp16_attn32, gt)
        a32 = results['fp16_attention_fp32']['label_agreement_pct']
        a16 = results['fp16_everywhere']['label_agreement_pct']
        out['fp16_needs_attention_fp32'] = bool(a16 < a32 - 0.1 or not results['fp16_everywhere']['finite'])
    out['modes'] = results
    out['ok'] = all(r['finite'] for r in results.values()) and results['fp32']['label_agreement_pct'] >= 99.0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=os.environ.get('OUT') or 'gpu_check_out', help='output folder (default $OUT '
                                                                                     'or gpu_check_out)')
    ap.add_argument('--dry-run', action='store_true', help='CPU, small size, few frames: what CI runs')
    ap.add_argument('--frames', type=int, help='held-out synthetic frames (default 32; dry run 2)')
    ap.add_argument('--height', type=int, help='network input height (default 512; dry run 64)')
    ap.add_argument('--width', type=int, help='network input width (default 1024; dry run 128)')
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    frames = args.frames or (2 if dry else 32)
    height, width = args.height or (64 if dry else 512), args.width or (128 if dry else 1024)
    import torch
    device = 'cuda' if torch.cuda.is_available() and not dry else 'cpu'
    results: dict[str, Any] = {'host': platform.node(), 'python': platform.python_version(), 'dry_run': dry,
                               'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    t0 = time.perf_counter()
    _part(results, 'cuda', lambda: check_cuda(64 << 20 if not dry else 1 << 20, 20 if not dry else 2))
    _part(results, 'torch', lambda: check_torch(device, frames, height, width, 3 if dry else 30, out))
    results['seconds'] = round(time.perf_counter() - t0, 1)
    if device != 'cuda' and not dry:
        results['torch']['ok'] = False
        results['torch']['error'] = 'PyTorch has no CUDA here: the torch part ran on the CPU only'
    path = out / 'gpu_check.json'
    path.write_text(json.dumps(results, indent=2, default=str) + '\n')
    print(f'[gpu_check] wrote {path}', flush=True)
    return 0 if all(results[k]['ok'] for k in ('cuda', 'torch')) else 1


if __name__ == '__main__':
    sys.exit(main())

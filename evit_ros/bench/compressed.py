"""Benchmark of the node's ``<output>/compressed`` topics: bytes per frame and encode cost at a camera size.

The outputs are the real ones: synthetic driving frames at the camera size go through the node's
:class:`~evit_ros.pipeline.Segmenter` (ONNX Runtime on CPU, the packaged demo weights, network input 512x1024
as the shipped config), and each of mask, confidence, color mask and overlay is encoded with
:func:`evit_ros.ros.conversions.encode_compressed`, the call the node makes (codec, BGR conversion into a kept
buffer, message payload copy). The raw ``sensor_msgs/Image`` size is printed beside it; the PNG mask is
decoded back and compared with the class ids.

    python -m evit_ros.bench.compressed --height 1080 --width 1920 --json compressed.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np

from evit_ros.bench import write_json
from evit_ros.contract import NODE_HEAD
from evit_ros.ros import conversions as conv
from evit_ros.ros.outputs import COMPRESSED_CODECS, OPENCV_THREADS


def _segmenter(model_hw: tuple[int, int], threads: int):   # noqa: ANN202 - Segmenter, imported lazily
    from evit_ros.backends import create_backend
    from evit_ros.config import BackendConfig, DrivableConfig, InputConfig, ModelConfig, OutputConfig
    from evit_ros.datasets import dataset_for_model
    from evit_ros.pipeline import Segmenter
    model, inp = ModelConfig(), InputConfig(height=model_hw[0], width=model_hw[1])
    backend = create_backend(BackendConfig(type='onnxruntime', threads=threads), model=model, input_cfg=inp,
                             head=NODE_HEAD)
    backend.load()
    return Segmenter(backend, input_cfg=inp, outputs=OutputConfig(), drivable=DrivableConfig(),
                     dataset=dataset_for_model(model.name)), backend


def _stats(values: list[float]) -> dict[str, float]:
    return {'min': float(np.min(values)), 'p50': float(np.percentile(values, 50)),
            'p90': float(np.percentile(values, 90)), 'max': float(np.max(values)), 'mean': float(np.mean(values))}


def run_compressed_benchmark(frame_hw: tuple[int, int] = (1080, 1920), model_hw: tuple[int, int] = (512, 1024),
                             frames: int = 4, iters: int = 5, jpeg_qualities: tuple[int, ...] = (90, 75),
                             png_levels: tuple[int, ...] = (1, 3), threads: int = 2) -> dict:
    """Bytes per frame and encode ms (p50/p90/max over ``frames`` x ``iters``) per output and codec setting."""
    from evit_ros.synthetic.scenes import generate_scene
    cv2.setNumThreads(OPENCV_THREADS)     # as the node's pipeline runs
    seg, backend = _segmenter(model_hw, threads)
    try:
        outs = []
        for i in range(frames):
            rgb = generate_scene(100 + i, *frame_hw)[0]
            r = seg.process([rgb], want_color=True, want_overlay=True, want_confidence=True)[0]
            outs.append({'mask': r.labels.copy(), 'confidence': r.confidence.copy(), 'color_mask': r.color.copy(),
                         'overlay': r.overlay.copy()})
    finally:
        backend.close()
    settings: list[tuple[str, str, int]] = []
    for name, (_, codec) in COMPRESSED_CODECS.items():
        for level in (png_levels if codec == 'png' else jpeg_qualities):
            settings.append((name, codec, level))
    rows = []
    for name, codec, level in settings:
        encoding = 'mono8' if outs[0][name].ndim == 2 else 'rgb8'
        scratch = np.empty_like(outs[0][name]) if encoding == 'rgb8' else None
        sizes, times = [], []
        exact = True
        for o in outs:
            arr = o[name]
            for it in range(iters + 1):
                t0 = time.perf_counter()
                msg = conv.encode_compressed(arr, encoding, codec, quality=level, png_level=level, bgr=scratch)
                dt = (time.perf_counter() - t0) * 1e3
                if it == 0:    # warm-up: first touch of the buffers
                    continue
                times.append(dt)
            sizes.append(len(msg.data))
            if codec == 'png':
                from evit_ros.pipeline.decode import decode_compressed_mask
                exact &= bool(np.array_equal(decode_compressed_mask(np.frombuffer(bytes(msg.data), np.uint8)), arr))
        rows.append({'output': name, 'format': msg.format, 'codec': codec,
                     'setting': f'{"quality" if codec == "jpeg" else "level"} {level}', 'raw_bytes': int(arr.nbytes),
                     'bytes_mean': float(np.mean(sizes)), 'bytes_max': int(np.max(sizes)),
                     'ratio': float(arr.nbytes / np.mean(sizes)), 'encode_ms': _stats(times),
                     **({'lossless_roundtrip': exact} if codec == 'png' else {})})
    return {'frame_hw': list(frame_hw), 'model_hw': list(model_hw), 'frames': frames, 'iters': iters,
            'opencv': cv2.__version__, 'numpy': np.__version__, 'cv2_threads': cv2.getNumThreads(),
            'cpus': os.cpu_count(), 'load_avg_1m': os.getloadavg()[0], 'png_level_used': conv.PNG_LEVEL,
            'rows': rows}


def format_table(report: dict) -> str:
    h, w = report['frame_hw']
    lines = [f'frame {h}x{w} ({h * w / 1e6:.1f} MP), {report["frames"]} synthetic frames x {report["iters"]}, '
             f'cv2 threads {report["cv2_threads"]}, load {report["load_avg_1m"]:.1f} on {report["cpus"]} CPUs',
             f'{"output":<12}{"codec":<6}{"setting":<12}{"raw KB":>9}{"KB/frame":>10}{"ratio":>7}'
             f'{"min ms":>8}{"p50 ms":>8}{"p90 ms":>8}{"max ms":>8}  exact']
    for r in report['rows']:
        e = r['encode_ms']
        exact = {True: 'yes', False: 'NO'}.get(r.get('lossless_roundtrip'), '-')
        lines.append(f'{r["output"]:<12}{r["codec"]:<6}{r["setting"]:<12}{r["raw_bytes"] / 1e3:>9.0f}'
                     f'{r["bytes_mean"] / 1e3:>10.1f}{r["ratio"]:>7.1f}{e["min"]:>8.2f}{e["p50"]:>8.2f}{e["p90"]:>8.2f}'
                     f'{e["max"]:>8.2f}  {exact}')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m evit_ros.bench.compressed',
                                 description='Bytes per frame and encode cost of the <output>/compressed topics.')
    ap.add_argument('--height', type=int, default=1080)
    ap.add_argument('--width', type=int, default=1920)
    ap.add_argument('--frames', type=int, default=4, help='distinct synthetic frames')
    ap.add_argument('--iters', type=int, default=5, help='encodes of each output per frame (after one warm-up)')
    ap.add_argument('--threads', type=int, default=2, help='ONNX Runtime threads for making the outputs')
    ap.add_argument('--json', default='', help='write the report to this JSON file')
    args = ap.parse_args(argv)
    report = run_compressed_benchmark((args.height, args.width), frames=args.frames, iters=args.iters,
                                      threads=args.threads)
    sys.stdout.write(format_table(report) + '\n')
    write_json(args.json, report)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())

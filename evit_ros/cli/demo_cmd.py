"""``evit-ros demo`` (``make demo``): the whole system on synthetic driving scenes, in one command.

Steps: generate a held-out synthetic two-camera bag -> export the shipped demo checkpoint to ONNX ->
start the real segmentation node (ROS 2 over DDS, ONNX Runtime on CPU) -> play the bag into it and
record its outputs -> evaluate mIoU, drivable IoU and latency -> write ``demo_out/`` and print a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from evit_ros.contract import NODE_HEAD
from evit_ros.errors import ConfigError, EvitError

DEFAULT_PARAMS = 'config/demo.yaml'
DEFAULT_CHECKPOINT = 'evit_ros/data/efficientvit_seg_b0_synthetic.pt'
NODE_MODULE = 'evit_ros.ros.segmentation_node'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', default='demo_out', help='output folder (default demo_out/)')
    parser.add_argument('--params-file', default=DEFAULT_PARAMS, help=f'node YAML (default {DEFAULT_PARAMS})')
    parser.add_argument('--checkpoint', default='', help='weights to export (default: model.checkpoint of the YAML)')
    parser.add_argument('--frames', type=int, default=40, help='frames per camera in the bag (default 40)')
    parser.add_argument('--seed', type=int, default=0, help='synthetic dataset seed (held-out scenes)')
    parser.add_argument('--rate', type=float, default=10.0, help='camera rate in Hz (default 10)')
    parser.add_argument('--domain-id', type=int, default=0,
                        help='ROS_DOMAIN_ID for the demo (default: $ROS_DOMAIN_ID if set, else one from the pid)')
    parser.add_argument('--node-timeout', type=float, default=60.0,
                        help='seconds to wait for the node to come up (default 60)')


class _Phases:
    """Wall time of each demo step, for the summary."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.times: dict[str, float] = {}
        self._name = ''
        self._start = 0.0

    def start(self, name: str) -> None:
        self._name, self._start = name, time.perf_counter()
        print(f'[demo] {name} ...', flush=True)

    def done(self, detail: str = '') -> None:
        dt = time.perf_counter() - self._start
        self.times[self._name] = round(dt, 2)
        print(f'[demo] {self._name}: {dt:.1f} s' + (f' ({detail})' if detail else ''), flush=True)

    @property
    def total(self) -> float:
        return time.perf_counter() - self.t0


def choose_domain_id(requested: int = 0, env: dict[str, str] | None = None) -> int:
    """--domain-id if given, else ROS_DOMAIN_ID when set (the user's network setup wins), else 100 + pid % 100."""
    if requested:
        return requested
    value = (os.environ if env is None else env).get('ROS_DOMAIN_ID', '').strip()
    if value:
        try:
            return int(value)
        except ValueError as exc:
            raise ConfigError(f'ROS_DOMAIN_ID={value!r} is not an integer; unset it or use 0-232') from exc
    return 100 + os.getpid() % 100


def _ros_env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('OMP_NUM_THREADS', '2')
    repo = str(Path(__file__).resolve().parents[2])
    env['PYTHONPATH'] = repo + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    return env


def node_params(params_file: Path, onnx_path: Path, out: Path) -> Path:
    """The demo YAML with ``backend.onnx_path`` set to the exported graph, written next to the outputs.

    (``-p`` overrides on the command line do not beat node-specific YAML entries, so the file is rewritten.)
    """
    import yaml
    doc = yaml.safe_load(params_file.read_text())
    for section in doc.values():
        if isinstance(section, dict) and isinstance(section.get('ros__parameters'), dict):
            section['ros__parameters'].setdefault('backend', {})['onnx_path'] = str(onnx_path)
    path = out / 'node_params.yaml'
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _fmt(v: Any, spec: str = '.3f') -> str:
    return format(v, spec) if isinstance(v, (int, float)) else 'n/a'


def run(args: argparse.Namespace) -> int:
    from evit_ros.config import load_config
    from evit_ros.synthetic.bag import write_synthetic

    out = Path(args.out)
    params_file = Path(args.params_file)
    cfg = load_config(params_file)
    checkpoint = args.checkpoint or cfg.model.checkpoint
    if not checkpoint or not Path(checkpoint).is_file():
        raise ConfigError(f'demo checkpoint {checkpoint!r} does not exist; run from the repository root or pass '
                          f'--checkpoint (train one with `evit-ros train-synthetic --out {DEFAULT_CHECKPOINT}`)')
    out.mkdir(parents=True, exist_ok=True)
    ph = _Phases()
    domain_id = choose_domain_id(args.domain_id)

    ph.start('generate synthetic bag')
    ds = write_synthetic(out / 'data', frames=args.frames, seed=args.seed, height=cfg.input.height,
                         width=cfg.input.width, rate_hz=args.rate)
    ph.done(f'{ds.frames} frames x {len(ds.cameras)} cameras, {ds.height}x{ds.width}, {ds.bag}')

    ph.start('export ONNX')
    from evit_ros.export.onnx_export import export_onnx
    onnx_path = out / 'model' / f'efficientvit_seg_b0_synthetic_{cfg.input.height}x{cfg.input.width}.onnx'
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    cams = len(cfg.cameras)
    report = export_onnx(cfg.model.name, onnx_path, height=cfg.input.height, width=cfg.input.width,
                         checkpoint=checkpoint, head=NODE_HEAD, max_batch=cams if cams > 1 else None)
    ph.done(f'{onnx_path}, labels agree {100 * report.label_agreement:.3f}% with PyTorch')

    node_info: dict[str, Any] = {}
    live, play_s = _run_live(args, cfg, ds, onnx_path, out, domain_id, ph, node_info)
    summary = _evaluate(cfg, ds, live, play_s, onnx_path, out, ph, node_info, args.rate)
    summary['phase_seconds'] = ph.times
    summary['total_seconds'] = round(ph.total, 1)
    (out / 'summary.json').write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(summary, out)
    return 0


def _topics(ds: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(c.image_topic for c in ds.cameras), tuple(c.label_topic for c in ds.cameras)


def _run_live(args: argparse.Namespace, cfg: Any, ds: Any, onnx_path: Path, out: Path, domain_id: int,
              ph: _Phases, node_info: dict[str, Any]) -> tuple[Any, float]:
    """Start the node, play the bag into it over DDS at real time and score what it publishes."""
    import importlib.util

    from evit_ros.ros.bag_player import run_live, start_node_process, stop_node_process

    if importlib.util.find_spec(NODE_MODULE) is None:
        raise EvitError(f'the segmentation node ({NODE_MODULE}) is not installed in this checkout; '
                        f'the bag is in {ds.bag} and the ONNX in {onnx_path}')
    ph.start('start node')
    params = node_params(Path(args.params_file), onnx_path.resolve(), out)
    proc = start_node_process(str(params), env=_ros_env(domain_id), log_path=out / 'node.log')
    ph.done(f'pid {proc.pid}, ROS_DOMAIN_ID {domain_id}, log {out / "node.log"}')
    for k, v in _ros_env(domain_id).items():   # the player (in this process) joins the node's domain
        if k.startswith('ROS_'):
            os.environ[k] = v
    image_topics, label_topics = _topics(ds)
    try:
        ph.start('play bag into the node over DDS and score its masks')
        t0 = time.perf_counter()
        state = run_live(str(ds.bag), image_topics=image_topics, label_topics=label_topics, config=cfg,
                         rate=1.0, start_node=False,
                         node_timeout_s=args.node_timeout, progress=False, samples=6, node_info=node_info,
                         node_process=proc)
        play_s = time.perf_counter() - t0
        ph.done(f'{state.counters.get("frames_received", 0)}/{state.counters.get("frames", 0)} masks received')
        return state, play_s
    finally:
        rc = stop_node_process(proc)
        if rc not in (0, None, -2, 130):
            print(f'[demo] node exited with code {rc}; see {out / "node.log"}', flush=True)


def _evaluate(cfg: Any, ds: Any, live: Any, play_s: float, onnx_path: Path, out: Path,
              ph: _Phases, node_info: dict[str, Any], rate_hz: float) -> dict[str, Any]:
    """Live report (what the node published) + offline pass through the same pipeline for overlay images."""
    from dataclasses import replace

    from evit_ros.datasets import dataset_for_model
    from evit_ros.eval.report import write_report
    from evit_ros.eval.runner import PipelineFactory, evaluate_bag, group_class_ids
    from evit_ros.eval.scoring import EvalSpec

    dataset = dataset_for_model(cfg.model.name)
    groups = group_class_ids(cfg, dataset.class_names)
    ph.start('write live report')
    from evit_ros.backends import describe_weights
    meta = {'model': cfg.model.name, 'weights': describe_weights(cfg.model, onnx_path), 'backend': 'onnxruntime (CPU)',
            'input': f'{cfg.input.height}x{cfg.input.width}', 'mode': 'live (node over DDS)',
            'bag': str(ds.bag), 'cameras': ', '.join(c.name for c in ds.cameras)}
    meta.update(node_info)   # what the node reported it runs (model, backend, input HxW)
    meta['mode'] = 'live'
    report = write_report(out, live, dataset.class_names, groups, meta)
    ph.done(f'{out}/report.md')

    overlays: list[str] = []
    hero = ''
    offline_miou = None
    ph.start('offline pass for overlays (same pipeline, no DDS)')
    try:
        off_cfg = replace(cfg, backend=replace(cfg.backend, onnx_path=str(onnx_path)))
        image_topics, label_topics = _topics(ds)
        spec = EvalSpec(image_topics, label_topics, samples=6, progress=False)
        seg = PipelineFactory(off_cfg)()   # one model load for the offline pass and the pictures
        try:
            off = evaluate_bag(str(ds.bag), spec, seg, dataset.num_classes)
            off_report = write_report(out / 'offline', off, dataset.class_names, groups,
                                      dict(meta, mode='offline (same Segmenter, no DDS)'))
            offline_miou = off_report['metrics']['miou_present']
            overlays, hero = _write_pictures(seg, ds, out)
        finally:
            seg.backend.close()
        ph.done(f'{len(overlays)} camera-size overlays in {out / "overlays"}, {hero}')
    except ImportError as exc:
        ph.done(f'skipped: {exc}')
    m = report['metrics']
    counters = report['counters']
    e2e = report['latency_ms'].get('end_to_end', {})
    received = counters.get('frames_received', 0)
    return {
        'frames': report['frames'], 'frames_out': received, 'cameras': len(ds.cameras),
        'miou': m['miou_present'], 'miou_offline': offline_miou,
        'drivable_iou': m['groups'].get('drivable'),
        'per_class_iou': {c['name']: c['iou'] for c in m['per_class'] if c['iou'] is not None},
        'latency_ms': {k: e2e.get(k) for k in ('p50', 'p90', 'p99', 'max', 'mean')},
        'fps': round(received / play_s, 2) if play_s > 0 else None,
        'dropped': counters.get('dropped', 0), 'overlays': overlays, 'picture': hero, 'weights': meta['weights'],
        'bag_fps': round(len(ds.cameras) * rate_hz, 2),
    }


HERO_NAME = 'demo_overlay.png'    # the README's picture (docs/demo_overlay.png) is a copy of this file
HERO_GAP = 4                      # white pixels between the panels
OVERLAY_FRAMES = (0, 10, 20, 30)  # frames of each camera written to overlays/ at camera size


def _write_pictures(seg: Any, ds: Any, out: Path) -> tuple[list[str], str]:
    """Camera-size overlays (the node's ``overlay`` output, from the same Segmenter) of a few frames per camera,
    and the README's picture: per camera (rows), the frame the node receives beside its overlay (first frame).

    The compressed camera's frame goes through the same JPEG encoding as in the bag, so the picture shows what
    the node really sees. Returns (overlay paths, picture path).
    """
    import cv2
    import numpy as np
    folder = out / 'overlays'
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    rows = []
    for cam in ds.cameras:
        for i in OVERLAY_FRAMES:
            src = ds.root / 'images' / cam.name / f'{i:06d}.png'
            if not src.is_file():
                continue
            bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            if cam.transport == 'compressed':   # what the node receives: the bag's JPEG at its quality
                _, jpg = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, ds.jpeg_quality])
                bgr = cv2.imdecode(jpg, cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            res = seg.process([rgb], want_color=False, want_overlay=True)[0]
            ovl = np.array(res.overlay)
            p = folder / f'{cam.name}_{i:06d}.png'
            cv2.imwrite(str(p), cv2.cvtColor(ovl, cv2.COLOR_RGB2BGR))
            paths.append(str(p))
            if i == OVERLAY_FRAMES[0]:
                gap = np.full((rgb.shape[0], HERO_GAP, 3), 255, np.uint8)
                rows.append(np.hstack([rgb, gap, ovl]))
    if not rows:
        return paths, ''
    width = max(r.shape[1] for r in rows)
    parts = []
    for k, r in enumerate(rows):
        if k:
            parts.append(np.full((HERO_GAP, width, 3), 255, np.uint8))
        parts.append(np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255))
    hero = out / HERO_NAME
    cv2.imwrite(str(hero), cv2.cvtColor(np.vstack(parts), cv2.COLOR_RGB2BGR))
    return sorted(paths), str(hero)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    """The summary, each field defined where it is printed (a number nobody can interpret is not a result)."""
    lat = summary.get('latency_ms', {})
    print('')
    print(f'evit-ros demo: {summary.get("frames", "?")} frames from {summary.get("cameras", "?")} cameras '
          f'in {summary["total_seconds"]:.0f} s -> {out}/')
    print(f'  weights      {summary.get("weights", "?")}')
    print(f'  masks        {summary.get("frames_out", "?")}/{summary.get("frames", "?")}   masks the node published '
          'for the frames the bag sent')
    print(f'  dropped      {summary.get("dropped", "n/a")}   frames sent whose mask never came (the node keeps only '
          'the newest frame per camera when it falls behind)')
    print(f'  mIoU         {_fmt(summary.get("miou"))}   mean IoU over the classes present, of the masks received')
    print(f'  drivable IoU {_fmt(summary.get("drivable_iou"))}   IoU of the drivable group (road)')
    print(f'  latency ms   p50 {_fmt(lat.get("p50"), ".1f")}  p90 {_fmt(lat.get("p90"), ".1f")}  p99 '
          f'{_fmt(lat.get("p99"), ".1f")}   end to end: mask received - frame stamp (sim time)')
    print(f'  frames/s     {_fmt(summary.get("fps"), ".1f")}   masks received per second of wall time while the '
          f'bag played (it sends {_fmt(summary.get("bag_fps"), ".0f")} frames/s)')
    print(f'  picture      {summary.get("picture") or "n/a"}   frame and overlay per camera (the README\'s picture)')
    print(f'  report: {out}/report.md  overlays: {out}/overlays/ (camera size)  plots: {out}/*.png')

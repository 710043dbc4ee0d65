"""``evit-ros eval``: mIoU, drivable-group IoU and latency of the node's pipeline on ROS 2 bags or Cityscapes."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evit_ros.errors import ConfigError

LOG = logging.getLogger('evit_ros.eval')
CITYSCAPES_FROM_ENV = '$CITYSCAPES_DATASET'


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group('data')
    src.add_argument('--bag', action='append', default=[], metavar='PATH',
                     help='ROS 2 bag (directory, .mcap or .db3); repeat for several bags')
    src.add_argument('--image-topic', action='append', default=[], metavar='T',
                     help='sensor_msgs/Image or CompressedImage topic; repeat per camera (camera = the topic without '
                          'its image suffix: /stereo/left/image_raw -> stereo_left)')
    src.add_argument('--label-topic', action='append', default=[], metavar='L',
                     help='mono8 ground-truth topic, one per --image-topic in the same order, matched by header stamp')
    src.add_argument('--labels-dir', default='', metavar='DIR',
                     help='ground-truth PNGs named DIR/<camera>/<stamp_ns>.png or DIR/<stamp_ns>.png')
    src.add_argument('--label-format', choices=('trainid', 'labelid'), default='trainid',
                     help='ground-truth ids (default: trainid): Cityscapes trainIds (0..18, 255 ignore) or labelIds '
                          '(0..33, mapped to trainIds); also the format of --save-predictions for bags')
    src.add_argument('--cityscapes', nargs='?', const=CITYSCAPES_FROM_ENV, default='', metavar='DIR',
                     help='evaluate a Cityscapes folder instead of bags (leftImg8bit/<split> + gtFine/<split>, or the '
                          'unzipped leftImg8bit_trainvaltest/ + gtFine_trainvaltest/); no DIR: $CITYSCAPES_DATASET')
    src.add_argument('--max-decompressed-mb', type=float, default=128.0, metavar='MB',
                     help='refuse a bag whose MCAP chunk or compressed message decompresses to more than MB (never '
                          'more than the size it declares; default 128): memory a hostile bag can take')
    src.add_argument('--max-temp-mb', type=float, default=8192.0, metavar='MB',
                     help='refuse a file-compressed bag (rosbag2 compression_mode file) larger than MB decompressed '
                          '(default 8192; never over 1000x its compressed size, floor 256): temp disk per worker')
    src.add_argument('--split', default='val', help='Cityscapes split (default: val; test has no public labels)')
    m = p.add_argument_group('model (defaults from --params-file, as the node)')
    m.add_argument('--params-file', default='', metavar='YAML', help='the node params file, e.g. config/evit_ros.yaml')
    m.add_argument('--model', default='', help='model name override, e.g. efficientvit-seg-b0-cityscapes')
    m.add_argument('--checkpoint', default='', help='checkpoint (.pt) override')
    m.add_argument('--backend', default='', choices=('auto', 'tensorrt', 'onnxruntime', 'torch'),
                   help='backend override (default: backend.type of --params-file, else auto)')
    m.add_argument('--onnx', default='', metavar='P', help='ONNX graph for the onnxruntime backend')
    m.add_argument('--engine', default='', metavar='P', help='TensorRT engine path')
    m.add_argument('--height', type=int, default=0, help='model input height override (multiple of 32)')
    m.add_argument('--width', type=int, default=0, help='model input width override (multiple of 32)')
    o = p.add_argument_group('output')
    o.add_argument('--report', default='eval_report', metavar='DIR', help='report directory (default: eval_report)')
    o.add_argument('--out-bag', default='', metavar='OUT', help='write /segmentation/<cam>/mask, color_mask and '
                   'overlay stamped like the inputs: OUT.mcap is one MCAP file, any other name a rosbag2 folder; '
                   'several bags or slices: a folder OUT with one bag per input bag, published in one rename; '
                   'must not exist')
    o.add_argument('--save-predictions', default='', metavar='DIR',
                   help='write each prediction as a PNG: bags DIR/<camera>/<stamp_ns>.png in --label-format; '
                        'Cityscapes DIR/<city>_<seq>_<frame>_pred_labelIds.png (cityscapesScripts format)')
    o.add_argument('--max-frames', type=int, default=0,
                   help='score the first N images of each shard (bag or slice), with their labels (0: all)')
    o.add_argument('--samples', type=int, default=8, help='overlay samples in samples.png (default 8)')
    o.add_argument('--no-progress', action='store_true', help='no progress line on stderr')
    x = p.add_argument_group('execution (bags run as shards on local processes or a Ray cluster)')
    x.add_argument('--executor', choices=('local', 'ray'), default='local',
                   help='local: --jobs processes on this machine; ray: actors on a Ray cluster (default local)')
    x.add_argument('--jobs', type=int, default=0, help='parallel workers (default: local 1, ray: as many as the '
                   "cluster's CPUs/GPUs fit with --task-cpus/--task-gpus)")
    x.add_argument('--ray-address', default='', metavar='ADDR', help='Ray cluster to use (default $RAY_ADDRESS; '
                   'neither: a local cluster is started for the run)')
    x.add_argument('--shard-seconds', type=float, default=0.0, metavar='S',
                   help='split bags longer than S seconds of log time into slices run in parallel (default 0: '
                   'one shard per bag)')
    x.add_argument('--max-retries', type=int, default=2,
                   help='attempts after the first for a failing shard or a lost worker (default 2)')
    x.add_argument('--task-cpus', type=float, default=1.0, help='CPUs reserved per Ray worker (default 1)')
    x.add_argument('--task-gpus', type=float, default=0.0, help='GPUs reserved per Ray worker (default 0)')
    x.add_argument('--ray-timeout', type=float, default=30.0, metavar='S',
                   help='seconds to connect to or start the Ray cluster before the run ends with one line (default 30)')
    lv = p.add_argument_group('live (play the bag into a running node over DDS)')
    lv.add_argument('--live', action='store_true', help='play into the node and score what it publishes')
    lv.add_argument('--rate', type=float, default=1.0, help='playback speed factor for --live (default 1.0)')
    lv.add_argument('--start-node', action='store_true', help='with --live: start the node as a subprocess')
    lv.add_argument('--node-timeout', type=float, default=60.0,
                    help='with --live: seconds to wait for the node to subscribe (default 60)')


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {'outputs.mask_resolution': 'camera'}   # labels are at camera resolution
    for key, val in (('model.name', args.model), ('model.checkpoint', args.checkpoint),
                     ('backend.type', args.backend), ('backend.onnx_path', args.onnx),
                     ('backend.engine_path', args.engine), ('input.height', args.height),
                     ('input.width', args.width)):
        if val:
            o[key] = val
    if (args.model or args.checkpoint or args.height or args.width) and not args.onnx:
        o['backend.onnx_path'] = ''   # the YAML's graph holds other weights or sizes: export these instead
    if args.onnx:
        o.update(onnx_overrides(args.onnx, args.height, args.width, args.model))
    return o


def onnx_overrides(onnx: str, height: int, width: int, model: str) -> dict[str, Any]:
    """What ``--onnx`` says about itself: input size and model from its metadata (the head is read by the backend).

    Given ``--height``/``--width`` must agree with the graph; the error names eval's own flags.
    """
    from evit_ros import contract
    from evit_ros.backends import read_onnx_metadata  # type: ignore[attr-defined,unused-ignore]
    if not Path(onnx).is_file():
        raise ConfigError(f'--onnx {onnx} does not exist; pass an ONNX exported by `evit-ros export`, or drop '
                          '--onnx to export one from --model/--checkpoint')
    meta = read_onnx_metadata(onnx)
    out: dict[str, Any] = {}
    size = meta.get(contract.META_INPUT_SIZE, '')
    if size:
        gh, gw = (int(v) for v in size.split('x'))
        if (height and height != gh) or (width and width != gw):
            raise ConfigError(f'--onnx {onnx} takes {size} frames, but --height {height or gh} --width {width or gw} '
                              f'were given; drop --height/--width (eval reads the size from the graph) or re-export '
                              f'the graph with `evit-ros export --height {height or gh} --width {width or gw}`')
        out['input.height'], out['input.width'] = gh, gw
    elif not (height and width):
        raise ConfigError(f'--onnx {onnx} has no {contract.META_INPUT_SIZE} metadata (not exported by '
                          '`evit-ros export`); pass --height and --width')
    name = meta.get(contract.META_MODEL, '')
    if name and not model:
        out['model.name'] = name
    return out   # the head: the backend reads the graph's own (evit.head), as the node does


def check_numbers(args: argparse.Namespace) -> None:
    """Numeric options that argparse accepts but no run can use (negative counts, nan, inf) are one line."""
    import math
    for flag, value in (('--jobs', args.jobs), ('--max-frames', args.max_frames), ('--samples', args.samples),
                        ('--max-retries', args.max_retries)):
        if value < 0:
            raise ConfigError(f'{flag} {value} must be >= 0')
    for flag, fvalue, low in (('--task-cpus', args.task_cpus, 'positive'), ('--task-gpus', args.task_gpus, '>= 0'),
                              ('--shard-seconds', args.shard_seconds, '>= 0'),
                              ('--ray-timeout', args.ray_timeout, 'positive'), ('--rate', args.rate, 'positive'),
                              ('--node-timeout', args.node_timeout, 'positive')):
        bad = not math.isfinite(fvalue) or fvalue < 0 or (low == 'positive' and fvalue == 0)
        if bad:
            raise ConfigError(f'{flag} {fvalue} is not valid; give a finite {low} number')


def check_outputs(args: argparse.Namespace) -> None:
    """Every output path and the label folder are checked before the model is loaded: a bad path fails in a
    second, not after the run. Staging folders that killed runs left next to the outputs are removed first."""
    from evit_ros.eval.bags import check_new_bag_path
    from evit_ros.eval.predictions import check_predictions_dir, remove_stale_partials
    from evit_ros.eval.report import check_report_dir
    check_report_dir(args.report)
    if args.labels_dir:
        ld = Path(args.labels_dir)
        if not ld.is_dir():
            raise ConfigError(f'--labels-dir {ld} is {"a file" if ld.exists() else "missing"}; give the folder of '
                              'ground-truth PNGs (DIR/<camera>/<stamp_ns>.png or DIR/<stamp_ns>.png)')
        if not os.access(ld, os.R_OK | os.X_OK):
            raise ConfigError(f'--labels-dir {ld} is not readable')
    if args.out_bag and args.live:
        raise ConfigError('--out-bag is not available with --live (record the node\'s topics with ros2 bag record)')
    if args.out_bag:   # one bag, or for several bags or slices the folder of one bag per input bag
        out = Path(args.out_bag)
        for gone in remove_stale_partials(out.parent, f'.{out.name}.partial-'):
            LOG.info('removed %s, left by a run that was killed', gone)
        check_new_bag_path(out)
    if args.save_predictions:
        if args.live:
            raise ConfigError('--save-predictions is not available with --live')
        for gone in remove_stale_partials(args.save_predictions, '.partial-'):
            LOG.info('removed %s, left by a run that was killed', gone)
        check_predictions_dir(args.save_predictions)


def _label_source(args: argparse.Namespace) -> str:
    if args.cityscapes:
        return f'gtFine/{args.split}'
    if args.labels_dir:
        return f'--labels-dir {args.labels_dir}'
    return ' '.join(f'--label-topic {t}' for t in args.label_topic)


def _summary_lines(report: dict[str, Any], report_dir: str) -> list[str]:
    m = report['metrics']
    pct = (lambda v: 'n/a' if v is None else f'{100 * v:.2f}%')  # noqa: E731
    dropped = f' dropped {report["dropped"]}' if report.get('mode') == 'live' else ''
    lines = [f'frames {report["frames"]} scored {report["frames_scored"]}{dropped} | mIoU(present) '
             f'{pct(m["miou_present"])} mIoU({m["num_classes"]}) {pct(m["miou_19"])} pixel acc '
             f'{pct(m["pixel_accuracy"])} | report: {Path(report_dir)}/report.md']
    problems = dict(report['bad_data'])
    for key in ('duplicate_stamps', 'frames_bad_gt', 'labels_without_image', 'frames_without_gt'):
        if report.get(key) and (report['frames_scored'] or key in ('duplicate_stamps', 'frames_bad_gt')):
            problems[key] = report[key]
    if problems:
        lines.append('data problems: ' + ', '.join(f'{k} {v}' for k, v in problems.items()))
    for src, why in report.get('failed_sources', {}).items():
        lines.append(f'not evaluated: {src}: {why}')
    for line in (report.get('shards') or {}).get('same_bag_given_twice', []):
        lines.append(f'note: {line}')
    return lines


def run(args: argparse.Namespace) -> int:
    from evit_ros.config import load_config
    from evit_ros.datasets import dataset_for_model
    from evit_ros.eval.bag_reader import ReadLimits
    from evit_ros.eval.executors import ExecutionOptions
    from evit_ros.eval.report import write_report
    from evit_ros.eval.runner import PipelineFactory, evaluate_bags, group_class_ids, run_events
    from evit_ros.eval.scoring import EvalSpec
    from evit_ros.eval.verdict import nothing_scored_reason, partial_score_reason

    if not args.bag and not args.cityscapes:
        raise ConfigError('nothing to evaluate: pass --bag PATH (with --image-topic) or --cityscapes DIR')
    check_numbers(args)
    if args.executor == 'ray' and (args.live or args.cityscapes):
        raise ConfigError('--executor ray evaluates --bag shards; --live and --cityscapes run locally')
    execution = ExecutionOptions(args.executor, args.jobs, args.ray_address, args.shard_seconds, args.max_retries,
                                 args.task_cpus, args.task_gpus, progress=not args.no_progress,
                                 ray_timeout=args.ray_timeout)
    limits = ReadLimits(args.max_decompressed_mb, args.max_temp_mb)
    check_outputs(args)
    pairs = None
    if args.cityscapes and not args.live:   # the dataset layout is checked before the model is loaded
        from evit_ros.eval.cityscapes import cityscapes_pairs, dataset_root
        root = dataset_root('' if args.cityscapes == CITYSCAPES_FROM_ENV else args.cityscapes)
        pairs = cityscapes_pairs(root, args.split)
    overrides = _overrides(args)   # reads an --onnx graph's metadata: once
    cfg = load_config(args.params_file or None, overrides=overrides)
    dataset = dataset_for_model(cfg.model.name)
    groups = group_class_ids(cfg, dataset.class_names)
    backend = cfg.backend.type
    if backend == 'auto' and not args.live:   # the header names the runtime that runs, not 'auto'
        from evit_ros.backends import choose_auto
        backend = choose_auto(cfg.backend)[0]
    from evit_ros.backends import describe_weights  # type: ignore[attr-defined,unused-ignore]
    meta: dict[str, Any] = {'model': cfg.model.name, 'weights': describe_weights(cfg.model, cfg.backend.onnx_path),
                            'backend': backend,
                            'input': f'{cfg.input.height}x{cfg.input.width}',
                            'params_file': args.params_file or '(defaults)', 'mode': 'live' if args.live else 'offline'}

    with _sigterm_as_interrupt():
        if args.live:
            from evit_ros.ros.bag_player import run_live
            if len(args.bag) != 1:
                raise ConfigError('--live plays exactly one --bag')
            node_info: dict[str, Any] = {}
            state = run_live(args.bag[0], image_topics=tuple(args.image_topic), label_topics=tuple(args.label_topic),
                             config=cfg, label_format=args.label_format, rate=args.rate, start_node=args.start_node,
                             params_file=args.params_file, node_timeout_s=args.node_timeout,
                             max_frames=args.max_frames, progress=not args.no_progress,
                             node_params=overrides if args.start_node else None,
                             num_classes=dataset.num_classes, samples=args.samples, node_info=node_info,
                             read_limits=limits)
            meta.update(node_info)   # what the node really runs, read from it (not the evaluator's defaults)
            meta['rate'] = args.rate
        elif pairs is not None:
            from evit_ros.eval.cityscapes import TOPIC, iter_cityscapes
            from evit_ros.eval.scoring import EvalState
            spec = EvalSpec((TOPIC,), max_frames=args.max_frames, out_bag=args.out_bag, samples=args.samples,
                            progress=not args.no_progress, save_predictions=args.save_predictions)
            seg = PipelineFactory(cfg)()
            state = run_events(iter_cityscapes(root, args.split, pairs), EvalState(dataset.num_classes), spec, seg,
                               source=f'{root}:{args.split}', out_bag=args.out_bag, label_format='labelid',
                               cityscapes=True)
            meta['dataset'] = f'cityscapes/{args.split}'
        else:
            spec = EvalSpec(tuple(args.image_topic), tuple(args.label_topic), args.labels_dir, args.label_format,
                            args.max_frames, args.out_bag, samples=args.samples, progress=not args.no_progress,
                            save_predictions=args.save_predictions, read_limits=limits)
            state = evaluate_bags(args.bag, spec, PipelineFactory(cfg), dataset.num_classes, execution=execution)
            meta['executor'] = args.executor
    from evit_ros.eval.report import build_report
    label_source = _label_source(args)
    report = build_report(state, dataset.class_names, groups, meta)
    error = nothing_scored_reason(report, label_source=label_source)
    if not label_source and not error:
        report['meta']['ground_truth'] = 'none given: latency only'
    partial = None if error else partial_score_reason(report, label_source=label_source)
    report = write_report(args.report, state, dataset.class_names, groups, error=error, report=report,
                          partial=partial)
    for line in _summary_lines(report, args.report):
        print(line)
    if error:
        print(f'evit-ros eval: error: nothing was scored: {error}', file=sys.stderr)
        return 130 if report['interrupted'] else 1
    if partial:
        print(f'evit-ros eval: error: the score is not trustworthy: {partial}', file=sys.stderr)
        return 130 if report['interrupted'] else 1
    if report['failed_sources']:
        return 1
    return 130 if report['interrupted'] else 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a run like Ctrl-C: the partial report is written and the out-bag finished, never half-written."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:   # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)

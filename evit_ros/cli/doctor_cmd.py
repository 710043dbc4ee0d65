"""``evit-ros doctor``: what this machine can run and why not; exit 0 when the configured backend is usable.

The first command to run after installing on a vehicle (docs/vehicle.md). The facts come from
:mod:`evit_ros.backends.doctor`; this module reads the node YAML, prints, and writes ``--json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

EXIT_UNUSABLE = 3   # ran fine, the configured backend cannot run here (1: usage error, e.g. a bad params file)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--params-file', help='node YAML (config/evit_ros.yaml): check its backend and the '
                                              'engine/ONNX files it would load (default: backend auto)')
    parser.add_argument('--json', metavar='FILE', help='also write the report as JSON to FILE')


def node_transport() -> dict[str, object]:
    """What segmentation_node would run on, started from this shell (its own Fast DDS profile or the user's setup),
    and the kernel's cap on its UDP receive buffer, with the fix when it is too low."""
    from evit_ros.ros import transport
    choice = transport.planned()
    out: dict[str, object] = {'summary': choice.summary, 'node_profile_applies': choice.applied,
                              'rmem_max': choice.rmem_max,
                              'udp_receive_buffer_bytes': choice.receive_buffer_bytes}
    if choice.capped():
        out['reason'] = choice.cap_fix()
    return out


def run(args: argparse.Namespace) -> int:
    from evit_ros.backends import doctor
    from evit_ros.config import load_config
    cfg = load_config(args.params_file) if args.params_file else None
    report = doctor.collect(cfg, params_file=args.params_file)
    report['ros']['node_transport'] = node_transport()
    print(doctor.render(report), flush=True)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + '\n')
        print(f'wrote {out}')
    return 0 if report['verdict']['usable'] else EXIT_UNUSABLE

"""Every benchmark in one room: each prints a table and writes JSON (speed is measured here, never in tests).

========================  =======================================================================
module                    what it measures
========================  =======================================================================
``backends``              ``evit-ros bench``: backends against a plain PyTorch baseline, per stage
``stages``                ``evit-ros bench --stages`` / ``python -m evit_ros.bench.stages``: host
                          stages only (decode .. occupancy grid), no network
``heads``                 ``python -m evit_ros.bench.heads``: each graph head's cost as a share of
                          the network on ONNX Runtime
``node``                  ``python -m evit_ros.bench.node``: the node over DDS against bare
                          inference, a no-work echo node and a plainly written node
``node_baselines``        the reference processes ``node`` starts (plain, floor, echo)
``eval_executors``        ``python -m evit_ros.bench.eval_executors``: local vs Ray eval executors
``rig``                   ``python -m evit_ros.bench.rig``: a surround rig of N cameras through the
                          node (delivered rate, frames missing, latency, batch sizes, CPU)
``compressed``            ``python -m evit_ros.bench.compressed``: bytes and encode cost of the
                          ``<output>/compressed`` topics
``uncertainty``           ``python -m evit_ros.bench.uncertainty``: the confidence signal on held-out
                          vs unknown frames
========================  =======================================================================

The node benchmarks talk DDS, so they import rclpy (inside functions, as :mod:`evit_ros.ros` does at the
top): the only rclpy importers outside :mod:`evit_ros.ros`.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages, rounded for a report (None where the platform has none): every benchmark
    states the machine's load next to its timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def write_json(path: str, report: Any) -> None:
    """Write a benchmark's report to ``path`` (``--json``) and say so; nothing when ``path`` is empty."""
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + '\n')
        sys.stdout.write(f'wrote {path}\n')


__all__ = ['loadavg', 'write_json']

"""The offline evaluator: stream bags (or Cityscapes) through the node's pipeline and accumulate metrics.

Every image is processed (nothing dropped, batch 1, deterministic). The scoring itself (pairing images
with labels, counters, samples) is :mod:`evit_ros.eval.scoring`, shared with the shard function and the
live player; this module builds the pipeline and runs one stream, one bag or many bags.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.errors import ConfigError, DataError
from evit_ros.eval.bags import BagEvent
from evit_ros.eval.scoring import EvalSpec, EvalState, Progress, Scorer, default_palette, feed_events

LOG = logging.getLogger('evit_ros.eval')


@dataclass(frozen=True)
class PipelineFactory:
    """Builds the node's pipeline (backend + Segmenter) from the node's configuration, inside each process."""

    config: Any   # evit_ros.config.NodeConfig

    def __call__(self) -> Any:
        from evit_ros.backends import create_backend  # type: ignore[attr-defined,unused-ignore]
        from evit_ros.contract import NODE_HEAD
        from evit_ros.datasets import dataset_for_model
        from evit_ros.pipeline import Segmenter
        cfg = self.config
        backend = create_backend(cfg.backend, model=cfg.model, input_cfg=cfg.input, head=NODE_HEAD,
                                 logger=LOG)
        backend.load()
        return Segmenter(backend, input_cfg=cfg.input, outputs=cfg.outputs, drivable=cfg.drivable,
                         dataset=dataset_for_model(cfg.model.name))


def group_class_ids(config: Any, class_names: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Drivable groups of the configuration as class-id lists of the model's dataset."""
    index = {n: i for i, n in enumerate(class_names)}
    out = []
    for name, classes in config.drivable.groups:
        ids = []
        for c in classes:
            key = c.strip().lower().replace('_', ' ')
            if key not in index:
                raise ConfigError(f'drivable.{name}.classes has unknown class {c!r}; valid: {", ".join(class_names)}')
            ids.append(index[key])
        out.append((name, ids))
    return out


def run_events(events: Iterable[BagEvent], state: EvalState, spec: EvalSpec, segmenter: Any, *, source: str,
               out_bag: str = '', total: int = 0, palette: np.ndarray | None = None,
               label_format: str | None = None, cityscapes: bool = False) -> EvalState:
    """Score one stream of events into ``state``; Ctrl-C stops early and marks the state interrupted.

    An error (e.g. a truncated bag) removes this source's unfinished out-bag and propagates; after Ctrl-C the
    out-bag of the frames done is finished and kept, like the partial report.
    """
    pal = palette if palette is not None else default_palette(state.num_classes)
    scorer = Scorer(state, spec, segmenter, out_bag, source, pal)
    scorer.cityscapes = cityscapes
    fmt = label_format or spec.label_format
    scorer.gt_format = fmt   # ids of ground truth travelling with images (Cityscapes gtFine: labelid)
    progress = Progress(Path(source).name or source, min(total, spec.max_frames) if spec.max_frames else total,
                        spec.progress)
    try:
        feed_events(((ev, True) for ev in events), state, spec, scorer, fmt, progress.update)
    except KeyboardInterrupt:
        state.interrupted = True
        LOG.warning('interrupted after %d frames of %s; writing the partial report', scorer.frames, source)
    except BaseException:
        scorer.abort()
        progress.close(scorer.frames)
        raise
    scorer.flush()
    progress.close(scorer.frames)
    state.sources.append(source)
    return state


def evaluate_bag(bag: str, spec: EvalSpec, segmenter: Any, num_classes: int,
                 state: EvalState | None = None) -> EvalState:
    """Evaluate one whole bag with an already-built segmenter (the shard function on a one-bag shard)."""
    from evit_ros.eval.shards import merge_results, plan_shards, run_shard
    plan = plan_shards([bag], spec)
    if plan.rejected:
        raise DataError(plan.rejected[0].error)
    result = run_shard(plan.shards[0], spec, segmenter, num_classes, out_part=spec.out_bag)
    merged = merge_results([result], num_classes, spec.samples)
    if state is None:
        return merged
    state.merge(merged)
    return state


def evaluate_bags(bags: Sequence[str], spec: EvalSpec, factory: Callable[[], Any], num_classes: int,
                  jobs: int = 1, execution: Any = None) -> EvalState:
    """Evaluate bags as shards on an executor (default: ``jobs`` local processes); see ``evit_ros.eval.executors``.

    ``execution`` is an ``ExecutionOptions`` (executor, workers, time slices, retries).
    """
    from evit_ros.eval.executors import ExecutionOptions, evaluate_shards
    opts = execution if execution is not None else ExecutionOptions(jobs=jobs, progress=spec.progress)
    return evaluate_shards(tuple(bags), spec, factory, num_classes, opts)


__all__ = ['PipelineFactory', 'evaluate_bag', 'evaluate_bags', 'group_class_ids', 'run_events']

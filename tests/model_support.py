"""Test-side data for tests/test_model_*.py: the official spec copy, golden weights/inputs, a model cache.

``golden_state_dict`` / ``golden_inputs`` re-implement the deterministic procedure that produced the
vectors in tests/data/golden/ (specified in the official-output README): entry i of the ordered
[key, shape] list is drawn from ``np.random.default_rng([seed, i])``; inputs from
``np.random.default_rng([seed, 1_000_003, k])``. The stored ``sd_fingerprint`` proves a rebuild is
bit-identical before any output is compared.
"""
from __future__ import annotations

import gzip
import json
from collections import OrderedDict
from functools import cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / 'data'
GOLDEN_DIR = DATA / 'golden'
GOLDEN_MODELS = ('efficientvit-seg-b0-cityscapes', 'efficientvit-seg-l1-cityscapes')
INPUT_STREAM = 1_000_003
INPUT_SHAPES = ((1, 3, 128, 256), (2, 3, 96, 160))


@cache
def official_specs() -> dict:
    """Per zoo name: ordered state_dict [key, shape] list, parameter count, classes, BN eps, ... ."""
    with gzip.open(DATA / 'efficientvit_seg_specs.json.gz', 'rt', encoding='utf-8') as f:
        return json.load(f)['models']


def golden_state_dict(entries: list, seed: int = 0) -> OrderedDict[str, np.ndarray]:
    """The deterministic synthetic weights for an ordered [key, shape] list."""
    f32 = np.float32
    bn = {k[:-len('.running_mean')] for k, _ in entries if k.endswith('.running_mean')}
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for i, (key, shape) in enumerate(entries):
        shape = tuple(int(s) for s in shape)
        prefix, _, leaf = key.rpartition('.')
        rng = np.random.default_rng([seed, i])
        if prefix in bn:
            value = {
                'weight': lambda r, s: r.random(s, dtype=f32) * f32(1.0) + f32(0.5),
                'bias': lambda r, s: r.standard_normal(s, dtype=f32) * f32(0.1),
                'running_mean': lambda r, s: r.standard_normal(s, dtype=f32) * f32(0.1),
                'running_var': lambda r, s: r.random(s, dtype=f32) * f32(1.5) + f32(0.5),
                'num_batches_tracked': lambda r, s: np.zeros(s, dtype=np.int64),
            }[leaf](rng, shape)
        elif leaf == 'weight' and len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape, dtype=f32) * f32(np.sqrt(1.0 / max(fan_in, 1)))
        elif leaf == 'bias' and len(shape) == 1:
            value = rng.standard_normal(shape, dtype=f32) * f32(0.05)
        else:
            raise ValueError(f'no rule for {key} {shape}')
        out[key] = value
    return out


def golden_inputs(seed: int = 0) -> list[np.ndarray]:
    xs = []
    for k, shape in enumerate(INPUT_SHAPES):
        x = np.random.default_rng([seed, INPUT_STREAM, k]).standard_normal(shape)
        xs.append(np.ascontiguousarray((np.round(x * 64.0) / 64.0).astype(np.float32)))
    return xs


def fingerprint(sd: OrderedDict[str, np.ndarray]) -> np.ndarray:
    return np.asarray([(float(np.asarray(a, np.float64).sum()), float(np.abs(np.asarray(a, np.float64)).sum()))
                       for a in sd.values()], dtype=np.float64).reshape(-1, 2)


def fingerprints_equal(a: np.ndarray, b: np.ndarray, rtol: float = 1e-9) -> bool:
    if a.shape != b.shape:
        return False
    return bool(np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(a[:, 1:2]), 1.0)))


def load_golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / f'{name}.npz', allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


_MODELS: dict = {}


def golden_model(name: str):
    """Eval-mode model with the golden weights, built once per test session."""
    if name not in _MODELS:
        import torch

        from evit_ros.model import create_model
        sd = golden_state_dict(official_specs()[name]['state_dict'])
        model = create_model(name)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
        _MODELS[name] = model.eval()
    return _MODELS[name]

"""Train the demo model (efficientvit-seg-b0-cityscapes) on procedurally generated scenes, on CPU.

Training and held-out scenes come from disjoint seed ranges, so the held-out mIoU printed here and
measured later by ``evit-ros eval`` is on scenes the model never saw. Everything is seeded: the same
command on the same torch build gives the same weights. Checkpoints are written periodically (atomic
rename), so an interrupted run still leaves usable weights.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.contract import IMAGENET_MEAN, IMAGENET_STD
from evit_ros.datasets import CITYSCAPES, IGNORE_ID
from evit_ros.errors import ConfigError
from evit_ros.synthetic.scenes import generate_scene

LOG = logging.getLogger(__name__)

MODEL_NAME = 'efficientvit-seg-b0-cityscapes'
# Seeds >= HELDOUT_SEED_BASE are never used for training; evaluation and the demo bag draw from there.
HELDOUT_SEED_BASE = 1_000_000_000
TRAIN_SEED_STRIDE = 10_000_000


@dataclass(frozen=True)
class TrainConfig:
    out: str
    seed: int = 0
    steps: int = 3000
    batch: int = 8
    height: int = 256
    width: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    class_weight_power: float = 0.25
    threads: int = 2
    eval_every: int = 100
    eval_scenes: int = 16
    log: str = ''
    resume: str = ''

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1:
            raise ConfigError(f'steps={self.steps}, batch={self.batch}: both must be >= 1')
        if self.height % 32 or self.width % 32 or self.height < 32 or self.width < 32:
            raise ConfigError(f'training size {self.height}x{self.width} must be multiples of 32, e.g. 256x512')
        if not (0 < self.lr < 1):
            raise ConfigError(f'lr={self.lr} must be in (0, 1), e.g. 3e-3')


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes x num_classes confusion matrix (rows: ground truth) ignoring IGNORE_ID pixels."""
    valid = gt != IGNORE_ID
    idx = gt[valid].astype(np.int64) * num_classes + np.clip(pred[valid].astype(np.int64), 0, num_classes - 1)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> tuple[float, dict[str, float]]:
    """(mIoU over classes present in the ground truth, per-class IoU) from a confusion matrix."""
    tp = np.diag(cm).astype(np.float64)
    gt = cm.sum(1)
    union = gt + cm.sum(0) - tp
    per = {CITYSCAPES.class_names[c]: float(tp[c] / union[c]) for c in range(len(tp)) if gt[c] > 0}
    return (float(np.mean(list(per.values()))) if per else 0.0), per


def to_tensor_batch(images: list[np.ndarray]) -> Any:
    """uint8 RGB HxWx3 images -> normalized float NCHW tensor (the same normalization the deploy graph does)."""
    import torch
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def predict_labels(model: Any, images: list[np.ndarray]) -> np.ndarray:
    """Argmax labels at the input size (bilinear logits upsampling) for uint8 RGB images, eval mode."""
    import torch
    import torch.nn.functional as F
    with torch.inference_mode():
        x = to_tensor_batch(images)
        logits = model(x)
        logits = F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=False)
        return logits.argmax(1).to(torch.uint8).numpy()


def heldout_miou(model: Any, n: int, height: int, width: int, seed_base: int = HELDOUT_SEED_BASE,
                 swap_channels: bool = False) -> tuple[float, dict[str, float]]:
    """Held-out mIoU of a torch model on ``n`` scenes (``swap_channels`` feeds BGR to check color matters)."""
    cm = np.zeros((CITYSCAPES.num_classes,) * 2, np.int64)
    was_training = model.training
    model.eval()
    for i in range(n):
        rgb, lab = generate_scene(seed_base + i, height, width)
        if swap_channels:
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        cm += confusion(predict_labels(model, [rgb])[0], lab, CITYSCAPES.num_classes)
    model.train(was_training)
    return iou_from_confusion(cm)


def _augment(rng: np.random.Generator, rgb: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < 0.5:
        rgb, lab = rgb[:, ::-1], lab[:, ::-1]
    gain = rng.uniform(0.8, 1.2)
    rgb = np.clip(rgb.astype(np.float32) * gain + rng.uniform(-15, 15), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(lab)


def class_weights(height: int, width: int, scenes: int = 64, seed_base: int = 0, power: float = 0.5) -> np.ndarray:
    """Loss weights (median frequency / frequency) ** power over generated scenes, so thin classes count."""
    counts = np.zeros(CITYSCAPES.num_classes, np.float64)
    for i in range(scenes):
        _, lab = generate_scene(seed_base + i, height, width)
        counts += np.bincount(lab[lab != IGNORE_ID].ravel(), minlength=CITYSCAPES.num_classes)[:len(counts)]
    present = counts > 0
    freq = counts / counts.sum()
    w = np.ones_like(freq)
    w[present] = np.clip((np.median(freq[present]) / freq[present]) ** power, 0.5, 5.0)
    return w.astype(np.float32)


def save_checkpoint(model: Any, path: str | Path, meta: dict[str, Any]) -> None:
    """Float32 state_dict in the official key layout under 'state_dict', plus small metadata; atomic write."""
    import torch
    sd = {k: (v.detach().float().clone() if v.is_floating_point() else v.detach().clone())
          for k, v in model.state_dict().items()}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + '.tmp')
    torch.save({'state_dict': sd, 'meta': json.loads(json.dumps(meta, default=str))}, tmp)
    os.replace(tmp, p)


def train(cfg: TrainConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run training; returns the final metrics dict (also written next to the checkpoint as JSON)."""
    import torch
    import torch.nn.functional as F

    from evit_ros.model import create_model

    say = progress or LOG.info
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    rng = np.random.default_rng(cfg.seed)
    model = create_model(MODEL_NAME, pretrained=False, checkpoint=cfg.resume or None)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.steps * cfg.warmup_frac))
    seed0 = cfg.seed * TRAIN_SEED_STRIDE
    weights = torch.from_numpy(class_weights(cfg.height, cfg.width, seed_base=seed0 + TRAIN_SEED_STRIDE - 1000,
                                              power=cfg.class_weight_power))
    say('class weights: ' + ', '.join(f'{n} {w:.2f}' for n, w in zip(CITYSCAPES.class_names, weights.tolist(),
                                                                        strict=True)))

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    log_f = open(cfg.log, 'a') if cfg.log else None   # noqa: SIM115 - closed in finally
    t0 = time.time()
    history: list[dict[str, Any]] = []
    best = {'miou': -1.0}
    meta: dict[str, Any] = {
        'model': MODEL_NAME, 'train': asdict(cfg), 'heldout_seed_base': HELDOUT_SEED_BASE,
        'description': 'demo weights trained on evit_ros.synthetic scenes only (not real images)',
        'input_size': f'{cfg.height}x{cfg.width}', 'normalization': 'RGB /255, ImageNet mean/std',
    }
    ema = None
    try:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g['lr'] = lr_at(step)
            imgs, labs = [], []
            for i in range(cfg.batch):
                rgb, lab = generate_scene(seed0 + step * cfg.batch + i, cfg.height, cfg.width)
                rgb, lab = _augment(rng, rgb, lab)
                imgs.append(rgb)
                labs.append(lab)
            x = to_tensor_batch(imgs)
            y = torch.from_numpy(np.stack(labs)).long()
            logits = F.interpolate(model(x), size=y.shape[-2:], mode='bilinear', align_corners=False)
            loss = F.cross_entropy(logits, y, weight=weights, ignore_index=IGNORE_ID)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = float(loss.detach())
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
            last = step == cfg.steps - 1
            if step % 10 == 0 or last:
                rec = {'step': step, 'loss': round(lv, 4), 'loss_ema': round(ema, 4), 'lr': lr_at(step),
                       'elapsed_s': round(time.time() - t0, 1)}
                if log_f:
                    log_f.write(json.dumps(rec) + '\n')
                    log_f.flush()
            if (step + 1) % cfg.eval_every == 0 or last:
                miou, per = heldout_miou(model, cfg.eval_scenes, cfg.height, cfg.width)
                rec = {'step': step + 1, 'heldout_miou': round(miou, 4), 'per_class': {k: round(v, 3)
                       for k, v in per.items()}, 'elapsed_s': round(time.time() - t0, 1)}
                history.append(rec)
                say(f'step {step + 1}/{cfg.steps} loss {ema:.3f} held-out mIoU {miou:.3f} '
                    f'({time.time() - t0:.0f} s)')
                if log_f:
                    log_f.write(json.dumps(rec) + '\n')
                    log_f.flush()
                meta.update({'steps_done': step + 1, 'heldout_miou': miou, 'per_class_iou': per,
                             'wall_time_s': round(time.time() - t0, 1), 'torch': str(torch.__version__)})
                save_checkpoint(model, cfg.out, meta)
                if miou > best['miou']:
                    best = {'miou': miou, 'step': step + 1}
    finally:
        if log_f:
            log_f.close()
    result = {'checkpoint': cfg.out, 'wall_time_s': round(time.time() - t0, 1), 'final': history[-1] if history
              else None, 'best': best}
    Path(cfg.out).with_suffix('.json').write_text(json.dumps(result, indent=2))
    return result

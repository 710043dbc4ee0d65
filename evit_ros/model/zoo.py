"""The EfficientViT-Seg model zoo: official names, configurations, checkpoint file names and structures.

The registry the rest of :mod:`evit_ros.model` builds on; weights are loaded by :mod:`evit_ros.model.checkpoint`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from evit_ros.errors import ModelError
from evit_ros.model.ops import set_norm_eps
from evit_ros.model.seg import EfficientViTBackbone, EfficientViTLargeBackbone, EfficientViTSeg, SegHead

__all__ = ['ModelSpec', 'MODEL_SPECS', 'list_models', 'model_spec', 'build_model',
           'checkpoint_filename']


@dataclass(frozen=True)
class _Backbone:
    family: str  # 'b' (EfficientViTBackbone) or 'l' (EfficientViTLargeBackbone)
    width_list: tuple[int, ...]
    depth_list: tuple[int, ...]
    dim: int


@dataclass(frozen=True)
class _Head:
    head_width: int
    head_depth: int
    expand_ratio: float
    middle_op: str
    final_expand: float | None


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines one zoo model (architecture, classes, BN eps)."""

    name: str
    variant: str
    dataset: str
    n_classes: int
    norm_eps: float
    backbone: _Backbone
    head: _Head

    @property
    def act_func(self) -> str:
        return 'gelu' if self.backbone.family == 'l' else 'hswish'


_BACKBONES = {
    'b0': _Backbone('b', (8, 16, 32, 64, 128), (1, 2, 2, 2, 2), 16),
    'b1': _Backbone('b', (16, 32, 64, 128, 256), (1, 2, 3, 3, 4), 16),
    'b2': _Backbone('b', (24, 48, 96, 192, 384), (1, 3, 4, 4, 6), 32),
    'b3': _Backbone('b', (32, 64, 128, 256, 512), (1, 4, 6, 6, 9), 32),
    'l1': _Backbone('l', (32, 64, 128, 256, 512), (1, 1, 1, 6, 6), 32),
    'l2': _Backbone('l', (32, 64, 128, 256, 512), (1, 2, 2, 8, 8), 32),
}
_HEADS = {
    ('b0', 'cityscapes'): _Head(32, 1, 4, 'mbconv', 4),
    ('b1', 'cityscapes'): _Head(64, 3, 4, 'mbconv', 4),
    ('b2', 'cityscapes'): _Head(96, 3, 4, 'mbconv', 4),
    ('b3', 'cityscapes'): _Head(128, 3, 4, 'mbconv', 4),
    ('l1', 'cityscapes'): _Head(256, 3, 1, 'fmbconv', None),
    ('l2', 'cityscapes'): _Head(256, 5, 1, 'fmbconv', None),
    ('b1', 'ade20k'): _Head(64, 3, 4, 'mbconv', None),
    ('b2', 'ade20k'): _Head(96, 3, 4, 'mbconv', None),
    ('b3', 'ade20k'): _Head(128, 3, 4, 'mbconv', None),
    ('l1', 'ade20k'): _Head(128, 3, 4, 'fmbconv', 8),
    ('l2', 'ade20k'): _Head(128, 3, 4, 'fmbconv', 8),
}
_N_CLASSES = {'cityscapes': 19, 'ade20k': 150}

MODEL_SPECS: dict[str, ModelSpec] = {
    f'efficientvit-seg-{variant}-{dataset}': ModelSpec(
        name=f'efficientvit-seg-{variant}-{dataset}', variant=variant, dataset=dataset,
        n_classes=_N_CLASSES[dataset], norm_eps=1e-7 if variant.startswith('l') else 1e-5,
        backbone=_BACKBONES[variant], head=head,
    )
    for (variant, dataset), head in _HEADS.items()
}


def list_models() -> list[str]:
    """The official zoo names, Cityscapes models first (the order of the official README)."""
    return list(MODEL_SPECS)


def model_spec(name: str) -> ModelSpec:
    """Spec of a zoo model; ModelError listing the valid names for anything else."""
    spec = MODEL_SPECS.get(str(name).strip().lower())
    if spec is None:
        raise ModelError(f'unknown model {name!r}; valid names: {", ".join(MODEL_SPECS)} '
                         f'(there is no b0 ADE20K model)')
    return spec


def checkpoint_filename(name: str) -> str:
    """Official checkpoint file name of a zoo model, e.g. ``efficientvit_seg_b0_cityscapes.pt``."""
    spec = model_spec(name)
    return f'efficientvit_seg_{spec.variant}_{spec.dataset}.pt'


def build_model(name: str) -> EfficientViTSeg:
    """Untrained model with the official structure and BN eps (train mode, default init)."""
    spec = model_spec(name)
    bb, hd = spec.backbone, spec.head
    backbone: nn.Module
    if bb.family == 'b':
        backbone = EfficientViTBackbone(bb.width_list, bb.depth_list, dim=bb.dim, expand_ratio=4,
                                        norm='bn2d', act_func='hswish')
    else:
        backbone = EfficientViTLargeBackbone(bb.width_list, bb.depth_list, qkv_dim=bb.dim, norm='bn2d',
                                             act_func='gelu')
    w = bb.width_list
    head = SegHead(
        fid_list=('stage4', 'stage3', 'stage2'), in_channel_list=(w[4], w[3], w[2]), stride_list=(32, 16, 8),
        head_stride=8, head_width=hd.head_width, head_depth=hd.head_depth, expand_ratio=hd.expand_ratio,
        middle_op=hd.middle_op, final_expand=hd.final_expand, n_classes=spec.n_classes, dropout=0.0,
        norm='bn2d', act_func=spec.act_func,
    )
    model = EfficientViTSeg(backbone, head)
    set_norm_eps(model, spec.norm_eps)
    return model

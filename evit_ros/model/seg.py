"""EfficientViT backbones (B and L families), the segmentation head and the seg model."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from evit_ros.errors import ModelError
from evit_ros.model.ops import (
    ConvLayer,
    DAGBlock,
    DSConv,
    EfficientViTBlock,
    FusedMBConv,
    IdentityLayer,
    MBConv,
    OpSequential,
    ResBlock,
    ResidualBlock,
    UpSampleLayer,
)

__all__ = ['EfficientViTBackbone', 'EfficientViTLargeBackbone', 'SegHead', 'EfficientViTSeg', 'INPUT_MULTIPLE',
           'check_input_size']

INPUT_MULTIPLE = 32  # the head adds stride-32/16/8 features, so H and W must divide by 32


def check_input_size(height: int, width: int) -> None:
    """Raise ModelError naming the nearest valid sizes unless both sides are positive multiples of 32."""
    bad = [(n, v) for n, v in (('height', height), ('width', width)) if v <= 0 or v % INPUT_MULTIPLE]
    if not bad:
        return
    parts = []
    for n, v in bad:
        lo = (v // INPUT_MULTIPLE) * INPUT_MULTIPLE
        options = [c for c in (lo, lo + INPUT_MULTIPLE) if c > 0]
        parts.append(f'{n} {v} (nearest valid: {" or ".join(str(c) for c in options)})')
    raise ModelError(f'input {height}x{width} is not supported: {"; ".join(parts)}. EfficientViT-Seg needs height '
                     f'and width that are multiples of {INPUT_MULTIPLE}; resize or pad the image to such a size.')


def _local_block(in_channels: int, out_channels: int, stride: int, expand_ratio: float, norm: str, act_func: str,
                 fewer_norm: bool = False) -> nn.Module:
    """B backbone local block: DSConv when expand_ratio == 1, else MBConv."""
    if expand_ratio == 1:
        return DSConv(in_channels, out_channels, stride=stride,
                      use_bias=(True, False) if fewer_norm else False,
                      norm=(None, norm) if fewer_norm else norm, act_func=(act_func, None))
    return MBConv(in_channels, out_channels, stride=stride, expand_ratio=expand_ratio,
                  use_bias=(True, True, False) if fewer_norm else False,
                  norm=(None, None, norm) if fewer_norm else norm, act_func=(act_func, act_func, None))


class EfficientViTBackbone(nn.Module):
    """B-family backbone: conv stem, two MBConv stages, two EfficientViT (attention) stages."""

    def __init__(self, width_list: Sequence[int], depth_list: Sequence[int], in_channels: int = 3, dim: int = 32,
                 expand_ratio: float = 4, norm: str = 'bn2d', act_func: str = 'hswish') -> None:
        super().__init__()
        self.width_list: list[int] = []
        stem: list[nn.Module] = [ConvLayer(in_channels, width_list[0], stride=2, norm=norm, act_func=act_func)]
        for _ in range(depth_list[0]):
            block = _local_block(width_list[0], width_list[0], 1, 1, norm, act_func)
            stem.append(ResidualBlock(block, IdentityLayer()))
        in_channels = width_list[0]
        self.input_stem = OpSequential(stem)
        self.width_list.append(in_channels)

        stages: list[nn.Module] = []
        for w, d in zip(width_list[1:3], depth_list[1:3], strict=True):
            ops: list[nn.Module] = []
            for i in range(d):
                stride = 2 if i == 0 else 1
                block = _local_block(in_channels, w, stride, expand_ratio, norm, act_func)
                ops.append(ResidualBlock(block, IdentityLayer() if stride == 1 else None))
                in_channels = w
            stages.append(OpSequential(ops))
            self.width_list.append(in_channels)
        for w, d in zip(width_list[3:], depth_list[3:], strict=True):
            ops = [ResidualBlock(_local_block(in_channels, w, 2, expand_ratio, norm, act_func, fewer_norm=True), None)]
            in_channels = w
            for _ in range(d):
                ops.append(EfficientViTBlock(in_channels, dim=dim, expand_ratio=expand_ratio, norm=norm,
                                             act_func=act_func))
            stages.append(OpSequential(ops))
            self.width_list.append(in_channels)
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {'input': x}
        x = self.input_stem(x)
        out['stage0'] = x
        for sid, stage in enumerate(self.stages, 1):
            x = stage(x)
            out[f'stage{sid}'] = x
        out['stage_final'] = x
        return out


def _large_local_block(block: str, in_channels: int, out_channels: int, stride: int, expand_ratio: float,
                       norm: str, act_func: str, fewer_norm: bool) -> nn.Module:
    """L backbone local block by type: 'res' (ResBlock), 'fmb' (FusedMBConv) or 'mb' (MBConv)."""
    if block == 'res':
        return ResBlock(in_channels, out_channels, stride=stride, expand_ratio=expand_ratio,
                        use_bias=(True, False) if fewer_norm else False,
                        norm=(None, norm) if fewer_norm else norm, act_func=(act_func, None))
    if block == 'fmb':
        return FusedMBConv(in_channels, out_channels, stride=stride, expand_ratio=expand_ratio,
                           use_bias=(True, False) if fewer_norm else False,
                           norm=(None, norm) if fewer_norm else norm, act_func=(act_func, None))
    if block == 'mb':
        return MBConv(in_channels, out_channels, stride=stride, expand_ratio=expand_ratio,
                      use_bias=(True, True, False) if fewer_norm else False,
                      norm=(None, None, norm) if fewer_norm else norm, act_func=(act_func, act_func, None))
    raise ValueError(f'unknown block type {block!r}')


class EfficientViTLargeBackbone(nn.Module):
    """L-family backbone: res / fused-MBConv / MBConv stages, then an EfficientViT (attention) stage."""

    def __init__(self, width_list: Sequence[int], depth_list: Sequence[int],
                 block_list: Sequence[str] = ('res', 'fmb', 'fmb', 'mb', 'att'),
                 expand_list: Sequence[float] = (1, 4, 4, 4, 6),
                 fewer_norm_list: Sequence[bool] = (False, False, False, True, True),
                 in_channels: int = 3, qkv_dim: int = 32, norm: str = 'bn2d', act_func: str = 'gelu') -> None:
        super().__init__()
        self.width_list: list[int] = []
        stage0: list[nn.Module] = [ConvLayer(in_channels, width_list[0], stride=2, norm=norm, act_func=act_func)]
        for _ in range(depth_list[0]):
            block = _large_local_block(block_list[0], width_list[0], width_list[0], 1, expand_list[0], norm,
                                       act_func, fewer_norm_list[0])
            stage0.append(ResidualBlock(block, IdentityLayer()))
        in_channels = width_list[0]
        stages = [OpSequential(stage0)]
        self.width_list.append(in_channels)

        for sid, (w, d) in enumerate(zip(width_list[1:], depth_list[1:], strict=True), start=1):
            kind = block_list[sid]
            down_kind = kind if kind in ('mb', 'fmb') else 'mb'
            ops: list[nn.Module] = [ResidualBlock(
                _large_local_block(down_kind, in_channels, w, 2, expand_list[sid] * 4, norm, act_func,
                                   fewer_norm_list[sid]),
                None,
            )]
            in_channels = w
            for _ in range(d):
                if kind.startswith('att'):
                    ops.append(EfficientViTBlock(in_channels, dim=qkv_dim, expand_ratio=expand_list[sid],
                                                 scales=(3,) if kind == 'att@3' else (5,), norm=norm,
                                                 act_func=act_func))
                else:
                    block = _large_local_block(kind, in_channels, in_channels, 1, expand_list[sid], norm, act_func,
                                               fewer_norm_list[sid])
                    ops.append(ResidualBlock(block, IdentityLayer()))
            stages.append(OpSequential(ops))
            self.width_list.append(in_channels)
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {'input': x}
        for sid, stage in enumerate(self.stages):
            x = stage(x)
            out[f'stage{sid}'] = x
        out['stage_final'] = x
        return out


class SegHead(DAGBlock):
    """Fuses stride-32/16/8 features (1x1 conv + BN, bicubic upsampling to 1/8), refines, classifies."""

    def __init__(self, fid_list: Sequence[str], in_channel_list: Sequence[int], stride_list: Sequence[int],
                 head_stride: int, head_width: int, head_depth: int, expand_ratio: float, middle_op: str,
                 final_expand: float | None, n_classes: int, dropout: float = 0.0, norm: str = 'bn2d',
                 act_func: str = 'hswish') -> None:
        inputs: dict[str, nn.Module] = {}
        for fid, in_ch, stride in zip(fid_list, in_channel_list, stride_list, strict=True):
            factor = stride // head_stride
            conv = ConvLayer(in_ch, head_width, 1, norm=norm, act_func=None)
            if factor == 1:
                inputs[fid] = conv
            else:
                inputs[fid] = OpSequential([conv, UpSampleLayer(mode='bicubic', factor=factor, align_corners=False,
                                                                   channels=head_width)])

        middle: list[nn.Module] = []
        for _ in range(head_depth):
            if middle_op == 'mbconv':
                block: nn.Module = MBConv(head_width, head_width, expand_ratio=expand_ratio, norm=norm,
                                          act_func=(act_func, act_func, None))
            elif middle_op == 'fmbconv':
                block = FusedMBConv(head_width, head_width, expand_ratio=expand_ratio, norm=norm,
                                    act_func=(act_func, None))
            else:
                raise ValueError(f'unknown middle_op {middle_op!r}')
            middle.append(ResidualBlock(block, IdentityLayer()))

        width = head_width * (final_expand or 1)
        outputs = {'segout': OpSequential([
            None if final_expand is None else ConvLayer(head_width, int(width), 1, norm=norm, act_func=act_func),
            ConvLayer(int(width), n_classes, 1, use_bias=True, dropout=dropout, norm=None, act_func=None),
        ])}
        super().__init__(inputs, 'add', None, middle=OpSequential(middle), outputs=outputs)


def _is_tracing() -> bool:
    # exporters trace symbolic sizes; int() on them would bake the size in, so the check is skipped there
    compiling = getattr(getattr(torch, 'compiler', None), 'is_compiling', None)
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or (compiling is not None and compiling()))


class EfficientViTSeg(nn.Module):
    """Backbone + SegHead; ``forward`` returns raw logits [N, n_classes, H/8, W/8] (no upsampling)."""

    def __init__(self, backbone: nn.Module, head: SegHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_tracing():
            check_input_size(int(x.shape[-2]), int(x.shape[-1]))
        return self.head(self.backbone(x))['segout']

"""Building blocks of EfficientViT-Seg, written from the published architecture facts.

Module attribute names (``conv``, ``norm``, ``act``, ``op_list``, ``main``, ``inverted_conv``, ``qkv``,
``aggreg``, ``proj``, ...) follow the official implementation exactly, because they *are* the
state_dict keys of the official checkpoints. Nothing here owns parameters that the official modules do
not own, so ``state_dict()`` keys, order and shapes are identical.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evit_ros.model.upsample import BicubicUpsample

__all__ = [
    'ConvLayer', 'UpSampleLayer', 'IdentityLayer', 'DSConv', 'MBConv', 'FusedMBConv', 'ResBlock', 'LiteMLA',
    'EfficientViTBlock', 'ResidualBlock', 'DAGBlock', 'OpSequential', 'build_act', 'build_norm', 'set_norm_eps',
    'LITEMLA_EPS',
]

LITEMLA_EPS = 1e-15
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _pair(value: Any, n: int) -> tuple:
    """Broadcast a scalar (or None) to an n-tuple; tuples/lists pass through (the official val2tuple)."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f'expected {n} values, got {value!r}')
        return tuple(value)
    return (value,) * n


def build_act(name: str | None) -> nn.Module | None:
    """Activation by its official short name; GELU is the tanh approximation the L models were trained with."""
    if name is None:
        return None
    if name == 'relu':
        return nn.ReLU()
    if name == 'relu6':
        return nn.ReLU6()
    if name == 'hswish':
        return nn.Hardswish()
    if name == 'silu':
        return nn.SiLU()
    if name == 'gelu':
        return nn.GELU(approximate='tanh')
    raise ValueError(f'unknown activation {name!r}')


def build_norm(name: str | None, num_features: int) -> nn.Module | None:
    """Normalization layer by its official short name (only 'bn2d' is used by the seg models)."""
    if name is None:
        return None
    if name == 'bn2d':
        return nn.BatchNorm2d(num_features)
    raise ValueError(f'unknown norm {name!r}')


def set_norm_eps(model: nn.Module, eps: float) -> None:
    """Set ``eps`` of every norm layer: it is not stored in the state_dict, the zoo sets it per model."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            m.eps = eps


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        if device_type == 'cpu':
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


class ConvLayer(nn.Module):
    """[Dropout2d] -> Conv2d (same padding) -> [norm] -> [act]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, use_bias: bool = False, dropout: float = 0.0,
                 norm: str | None = 'bn2d', act_func: str | None = 'relu') -> None:
        super().__init__()
        padding = (kernel_size // 2) * dilation
        self.dropout = nn.Dropout2d(dropout, inplace=False) if dropout > 0 else None
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=use_bias)
        self.norm = build_norm(norm, out_channels)
        self.act = build_act(act_func)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class UpSampleLayer(nn.Module):
    """Resize by an integer factor (bicubic, align_corners=False in the seg head).

    Like the official layer it interpolates in fp32 (with autocast off) when the input is fp16/bf16;
    the result is cast back to the input dtype so a ``.half()`` model stays single-dtype. In fp32 no cast
    is traced, so an fp32 ONNX export has no Cast nodes here.
    """

    def __init__(self, mode: str = 'bicubic', size: int | Sequence[int] | None = None, factor: int = 2,
                 align_corners: bool = False, channels: int | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.size = None if size is None else tuple(_pair(size, 2))
        self.factor = None if self.size is not None else factor
        self.align_corners = align_corners
        # with the channel count known, exports trace bicubic x factor as per-phase grouped convolutions
        # (same function; ONNX Runtime's Resize(cubic) is slow; eager stays F.interpolate). No state_dict entries.
        self.exact_upsample = (BicubicUpsample(factor, channels) if channels and self.factor and self.factor > 1
                               and mode == 'bicubic' and not align_corners else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.size is not None and tuple(x.shape[-2:]) == self.size) or self.factor == 1:
            return x
        if x.dtype in _LOW_PRECISION or _autocast_enabled(x.device.type):
            in_dtype = x.dtype
            with torch.autocast(device_type=x.device.type, enabled=False):
                y = self._resize(x.float())
            return y if in_dtype == torch.float32 else y.to(in_dtype)
        return self._resize(x)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        align = self.align_corners if self.mode in ('bilinear', 'bicubic') else None
        if self.size is not None:
            return F.interpolate(x, size=self.size, mode=self.mode, align_corners=align)
        if self.exact_upsample is not None and x.shape[1] == self.exact_upsample.channels:
            return self.exact_upsample(x)
        return F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=align)


class IdentityLayer(nn.Module):
    """The identity shortcut of residual blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DSConv(nn.Module):
    """Depthwise-separable conv: depthwise k x k (norm, act) -> pointwise 1x1 (norm, act)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 use_bias: Any = False, norm: Any = ('bn2d', 'bn2d'), act_func: Any = ('relu6', None)) -> None:
        super().__init__()
        use_bias, norm, act_func = _pair(use_bias, 2), _pair(norm, 2), _pair(act_func, 2)
        self.depth_conv = ConvLayer(in_channels, in_channels, kernel_size, stride, groups=in_channels,
                                    use_bias=use_bias[0], norm=norm[0], act_func=act_func[0])
        self.point_conv = ConvLayer(in_channels, out_channels, 1, use_bias=use_bias[1], norm=norm[1],
                                    act_func=act_func[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted residual body: 1x1 expand -> depthwise k x k (stride) -> 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 mid_channels: int | None = None, expand_ratio: float = 6, use_bias: Any = False,
                 norm: Any = ('bn2d', 'bn2d', 'bn2d'), act_func: Any = ('relu6', 'relu6', None)) -> None:
        super().__init__()
        use_bias, norm, act_func = _pair(use_bias, 3), _pair(norm, 3), _pair(act_func, 3)
        mid = mid_channels or round(in_channels * expand_ratio)
        self.inverted_conv = ConvLayer(in_channels, mid, 1, use_bias=use_bias[0], norm=norm[0], act_func=act_func[0])
        self.depth_conv = ConvLayer(mid, mid, kernel_size, stride, groups=mid, use_bias=use_bias[1], norm=norm[1],
                                    act_func=act_func[1])
        self.point_conv = ConvLayer(mid, out_channels, 1, use_bias=use_bias[2], norm=norm[2], act_func=act_func[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class FusedMBConv(nn.Module):
    """Fused inverted residual body: k x k expand (stride) -> 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 mid_channels: int | None = None, expand_ratio: float = 6, groups: int = 1, use_bias: Any = False,
                 norm: Any = ('bn2d', 'bn2d'), act_func: Any = ('relu6', None)) -> None:
        super().__init__()
        use_bias, norm, act_func = _pair(use_bias, 2), _pair(norm, 2), _pair(act_func, 2)
        mid = mid_channels or round(in_channels * expand_ratio)
        self.spatial_conv = ConvLayer(in_channels, mid, kernel_size, stride, groups=groups, use_bias=use_bias[0],
                                      norm=norm[0], act_func=act_func[0])
        self.point_conv = ConvLayer(mid, out_channels, 1, use_bias=use_bias[1], norm=norm[1], act_func=act_func[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class ResBlock(nn.Module):
    """Two k x k convs (the L backbone's stage-0 block)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 mid_channels: int | None = None, expand_ratio: float = 1, use_bias: Any = False,
                 norm: Any = ('bn2d', 'bn2d'), act_func: Any = ('relu6', None)) -> None:
        super().__init__()
        use_bias, norm, act_func = _pair(use_bias, 2), _pair(norm, 2), _pair(act_func, 2)
        mid = mid_channels or round(in_channels * expand_ratio)
        self.conv1 = ConvLayer(in_channels, mid, kernel_size, stride, use_bias=use_bias[0], norm=norm[0],
                               act_func=act_func[0])
        self.conv2 = ConvLayer(mid, out_channels, kernel_size, 1, use_bias=use_bias[1], norm=norm[1],
                               act_func=act_func[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class _LinearAttentionCore(nn.Module):
    """ReLU linear attention on the multi-scale q/k/v tensor; owns no parameters or buffers.

    Input (B, heads*3*dim, H, W), head-major with [q | k | v] per head; output (B, heads*dim, H, W):
    ``out_n = sum_m v_m (k_m . q_n) / (sum_m k_m . q_n + eps)``, computed as ``(v' @ k^T) @ q`` with
    ``v' = pad(v, one row of ones)``. It is always evaluated in fp32 with autocast disabled (fp16 turns
    eps 1e-15 into 0 and overflows the token sums); the casts are only traced when the input is not fp32.
    """

    fp32_attention_core = True  # marker read by evit_ros.export to pin these ops to FP32

    def __init__(self, dim: int, eps: float = LITEMLA_EPS) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        in_dtype = qkv.dtype
        if in_dtype != torch.float32 or _autocast_enabled(qkv.device.type):
            with torch.autocast(device_type=qkv.device.type, enabled=False):
                out = self._attend(qkv.float())
            return out if in_dtype == torch.float32 else out.to(in_dtype)
        return self._attend(qkv)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        b, _, h, w = qkv.shape
        d = self.dim
        qkv = torch.reshape(qkv, (b, -1, 3 * d, h * w))
        q = F.relu(qkv[:, :, 0:d])
        k = F.relu(qkv[:, :, d:2 * d])
        v = qkv[:, :, 2 * d:]
        # v' = v with a row of ones (the official F.pad(v, (0, 0, 0, 1), value=1)); a Concat exports without
        # the Cast + unfoldable Slice that the ONNX Pad symbolic adds for the pads input
        v = torch.cat([v, torch.ones_like(v[:, :, :1])], dim=2)
        vk = torch.matmul(v, k.transpose(-1, -2))
        out = torch.matmul(vk, q)
        out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return torch.reshape(out, (b, -1, h, w))


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention (EfficientViT's context module).

    ``qkv`` 1x1 conv -> ``aggreg`` (depthwise 5x5 + grouped 1x1, per scale) -> concat (doubles the heads)
    -> linear attention core -> ``proj`` 1x1 conv + BN. Only the linear form is implemented; the
    official quadratic branch for tiny maps (H*W <= dim) is the same function.

    The core runs in the parameter-free child ``attention`` (class ``_LinearAttentionCore``), so a
    TorchScript ONNX export (``torch.onnx.export(..., dynamo=False)``) names its nodes
    ``<module scope>/attention/<Op>[_<n>]``, for example
    ``/backbone/stages.2/op_list.1/context_module/main/attention/MatMul_1`` in b0 and
    ``/backbone/stages.4/op_list.1/context_module/main/attention/Div`` in l1 (prefix ``/model`` etc. when
    the seg model is wrapped). Checked with torch 2.13, opset 17, static and dynamic batch: per block the
    core holds Reshape, Slice, Relu + Relu_1 (q, k), Concat (v plus its row of ones; the official F.pad is
    written as a Concat so no Pad node, no Cast and no unfoldable Slice appear), Transpose, MatMul + MatMul_1,
    Add (eps) and Div; the precision-critical ones are Relu*, MatMul*, Add, Div. An fp32 export has no Cast
    nodes. Use :func:`evit_ros.model.attention_scope_patterns` to select them; the export helper can also
    find the modules by the ``fp32_attention_core`` class attribute.
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int | None = None, heads_ratio: float = 1.0,
                 dim: int = 8, use_bias: Any = False, norm: Any = (None, 'bn2d'), act_func: Any = (None, None),
                 kernel_func: str = 'relu', scales: Sequence[int] = (5,), eps: float = LITEMLA_EPS) -> None:
        super().__init__()
        if kernel_func != 'relu':
            raise ValueError(f'LiteMLA kernel {kernel_func!r} is not supported; the seg models use relu')
        heads = int(in_channels // dim * heads_ratio) if heads is None else heads
        total_dim = heads * dim
        use_bias, norm, act_func = _pair(use_bias, 2), _pair(norm, 2), _pair(act_func, 2)
        self.dim = dim
        self.qkv = ConvLayer(in_channels, 3 * total_dim, 1, use_bias=use_bias[0], norm=norm[0], act_func=act_func[0])
        self.aggreg = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(3 * total_dim, 3 * total_dim, scale, padding=scale // 2, groups=3 * total_dim,
                          bias=use_bias[0]),
                nn.Conv2d(3 * total_dim, 3 * total_dim, 1, groups=3 * heads, bias=use_bias[0]),
            )
            for scale in scales
        ])
        self.attention = _LinearAttentionCore(dim, eps)
        self.proj = ConvLayer(total_dim * (1 + len(scales)), out_channels, 1, use_bias=use_bias[1], norm=norm[1],
                              act_func=act_func[1])

    @property
    def eps(self) -> float:
        """The division eps of the attention core (1e-15 in every official model)."""
        return self.attention.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        multi_scale_qkv = [qkv]
        for op in self.aggreg:
            multi_scale_qkv.append(op(qkv))
        out = self.attention(torch.cat(multi_scale_qkv, dim=1))
        return self.proj(out)


class ResidualBlock(nn.Module):
    """``main(x) + shortcut(x)``; ``shortcut=None`` makes it a plain block (used for strided blocks)."""

    def __init__(self, main: nn.Module | None, shortcut: nn.Module | None, post_act: nn.Module | None = None,
                 pre_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.main = main
        self.shortcut = shortcut
        self.post_act = post_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.main is None:
            res = x
        else:
            res = self.main(x if self.pre_norm is None else self.pre_norm(x))
            if self.shortcut is not None:
                res = res + self.shortcut(x)
        if self.post_act is not None:
            res = self.post_act(res)
        return res


class EfficientViTBlock(nn.Module):
    """Residual LiteMLA (global context) followed by a residual fewer-norm MBConv (local detail)."""

    def __init__(self, in_channels: int, heads_ratio: float = 1.0, dim: int = 32, expand_ratio: float = 4,
                 scales: Sequence[int] = (5,), norm: str = 'bn2d', act_func: str = 'hswish') -> None:
        super().__init__()
        self.context_module = ResidualBlock(
            LiteMLA(in_channels, in_channels, heads_ratio=heads_ratio, dim=dim, norm=(None, norm), scales=scales),
            IdentityLayer(),
        )
        self.local_module = ResidualBlock(
            MBConv(in_channels, in_channels, expand_ratio=expand_ratio, use_bias=(True, True, False),
                   norm=(None, None, norm), act_func=(act_func, act_func, None)),
            IdentityLayer(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class OpSequential(nn.Module):
    """Sequential container stored as ``op_list`` (None entries dropped, which shifts the key indices)."""

    def __init__(self, op_list: Sequence[nn.Module | None]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList([op for op in op_list if op is not None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


def _list_sum(xs: list[torch.Tensor]) -> torch.Tensor:
    # x0 + (x1 + (x2 + ...)), the official evaluation order
    return xs[0] if len(xs) == 1 else xs[0] + _list_sum(xs[1:])


class DAGBlock(nn.Module):
    """Feature-dict block: per-input ops -> merge ('add' or 'cat') -> middle -> named output ops."""

    def __init__(self, inputs: Mapping[str, nn.Module], merge: str, post_input: nn.Module | None,
                 middle: nn.Module, outputs: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if merge not in ('add', 'cat'):
            raise ValueError(f'unknown merge {merge!r}')
        self.input_keys = list(inputs.keys())
        self.input_ops = nn.ModuleList(list(inputs.values()))
        self.merge = merge
        self.post_input = post_input
        self.middle = middle
        self.output_keys = list(outputs.keys())
        self.output_ops = nn.ModuleList(list(outputs.values()))

    def forward(self, feature_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feats = [op(feature_dict[key]) for key, op in zip(self.input_keys, self.input_ops, strict=True)]
        feat = _list_sum(feats) if self.merge == 'add' else torch.cat(feats, dim=1)
        if self.post_input is not None:
            feat = self.post_input(feat)
        feat = self.middle(feat)
        for key, op in zip(self.output_keys, self.output_ops, strict=True):
            feature_dict[key] = op(feat)
        return feature_dict

"""Numerics against the official implementation's golden vectors, and reduced-precision safety."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import torch.nn.functional as F  # noqa: E402

from evit_ros.model.ops import LiteMLA, UpSampleLayer, _LinearAttentionCore  # noqa: E402
from tests.model_support import (  # noqa: E402
    GOLDEN_MODELS,
    fingerprint,
    fingerprints_equal,
    golden_inputs,
    golden_model,
    golden_state_dict,
    load_golden,
    official_specs,
)

RTOL = 1e-4


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize('name', GOLDEN_MODELS)
def test_golden_weights_and_inputs_rebuild_bit_identically(name):
    gold = load_golden(name)
    assert str(gold['model']) == name and int(gold['scheme_version']) == 1
    sd = golden_state_dict(official_specs()[name]['state_dict'], seed=int(gold['seed']))
    assert fingerprints_equal(fingerprint(sd), gold['sd_fingerprint'])
    for i, x in enumerate(golden_inputs(int(gold['seed']))):
        np.testing.assert_array_equal(x, gold[f'input_{i}'])


@pytest.mark.parametrize('name', GOLDEN_MODELS)
def test_golden_outputs(name):
    gold = load_golden(name)
    model = golden_model(name)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {float(gold['norm_eps'])}
    for i in range(2):
        with torch.inference_mode():
            y = model(torch.from_numpy(gold[f'input_{i}'])).numpy()
        assert y.shape == gold[f'output_{i}'].shape
        err = _rel(y, gold[f'output_{i}'])
        print(f'{name} output_{i}: max rel err {err:.2e}')
        assert err < RTOL


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


@pytest.mark.parametrize('name', GOLDEN_MODELS)
def test_autocast_bfloat16_is_finite_and_agrees(name):
    model = golden_model(name)
    x = torch.from_numpy(load_golden(name)['input_0'])
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = model(x)
    assert torch.isfinite(y).all()
    assert _agreement(y, ref) >= 0.98
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_model_is_finite_and_agrees(dtype):
    name = 'efficientvit-seg-b0-cityscapes'
    model = golden_model(name)
    x = torch.from_numpy(load_golden(name)['input_0'])
    low = copy.deepcopy(model).to(dtype)
    with torch.inference_mode():
        ref = model(x)
        try:
            y = low(x.to(dtype))
        except (RuntimeError, NotImplementedError) as exc:  # CPU kernels missing for this dtype
            pytest.skip(f'CPU has no {dtype} kernels here: {exc}')
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    assert _agreement(y.float(), ref) >= 0.98


def _overflowing_qkv(dim: int, heads: int, hw: tuple[int, int]) -> torch.Tensor:
    """q/k/v whose token sums (sum_m k_m . q_n) are far above the fp16 maximum 65504."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, heads * 3 * dim, *hw, generator=gen) * 8.0 + 4.0
    x[:, 0:dim, 0, 0] = -1.0  # one pixel with all-zero ReLU(q): fp16 eps 1e-15 == 0 would give 0/0 there
    return x


def test_attention_core_fp16_stays_finite_where_naive_fp16_overflows():
    dim, heads, hw = 16, 2, (32, 64)
    qkv = _overflowing_qkv(dim, heads, hw)
    core = _LinearAttentionCore(dim)
    ref = core(qkv)
    out = core(qkv.half())
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert _rel(out.float().numpy(), ref.numpy()) < 1e-2

    # the same computation kept in fp16 (no upcast) is not usable: proves the test input bites
    h = qkv.half().reshape(1, -1, 3 * dim, hw[0] * hw[1])
    q, k, v = h[:, :, :dim].relu(), h[:, :, dim:2 * dim].relu(), h[:, :, 2 * dim:]
    naive = (F.pad(v, (0, 0, 0, 1), value=1.0) @ k.transpose(-1, -2)) @ q
    assert not torch.isfinite(naive).all()


def test_litemla_fp16_and_autocast_match_fp32():
    torch.manual_seed(0)
    mla = LiteMLA(32, 32, dim=16).eval()
    with torch.no_grad():
        mla.qkv.conv.weight.abs_().mul_(4.0)  # large positive q/k/v: token sums overflow fp16
    x = torch.rand(1, 32, 32, 64) * 4.0
    with torch.inference_mode():
        ref = mla(x)
        half = mla.half()(x.half())
        mla.float()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            auto = mla(x)
    assert torch.isfinite(half).all() and torch.isfinite(auto).all()
    assert _rel(half.float().numpy(), ref.numpy()) < 2e-2
    assert _rel(auto.float().numpy(), ref.numpy()) < 5e-2


def test_upsample_interpolates_in_fp32():
    up = UpSampleLayer(mode='bicubic', factor=4, align_corners=False)
    x = (torch.randn(1, 8, 5, 7) * 100).half()
    y = up(x)
    expect = F.interpolate(x.float(), scale_factor=4, mode='bicubic', align_corners=False).half()
    assert y.dtype == torch.float16
    assert torch.equal(y, expect)
    x32 = x.float()
    assert up(x32).dtype == torch.float32

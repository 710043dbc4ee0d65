"""The 11 EfficientViT-Seg models: official structure, shapes, counts, eps, input checks, ONNX attention scope."""
from __future__ import annotations

import io
import re

import pytest

torch = pytest.importorskip('torch')

from evit_ros.errors import ModelError  # noqa: E402
from evit_ros.model import (  # noqa: E402
    LITEMLA_EPS,
    attention_scope_patterns,
    check_input_size,
    checkpoint_filename,
    create_model,
    list_models,
)
from evit_ros.model.ops import LiteMLA, UpSampleLayer, _LinearAttentionCore  # noqa: E402
from tests.model_support import official_specs  # noqa: E402

OFFICIAL = [f'efficientvit-seg-{v}-cityscapes' for v in ('b0', 'b1', 'b2', 'b3', 'l1', 'l2')] + \
           [f'efficientvit-seg-{v}-ade20k' for v in ('b1', 'b2', 'b3', 'l1', 'l2')]


@pytest.fixture(scope='module')
def models():
    """Each zoo model built once for this module (the large ones cost ~0.5 s each)."""
    torch.set_num_threads(1)
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            cache[name] = create_model(name)
        return cache[name]
    return get


def test_list_models_is_the_official_zoo():
    assert list_models() == OFFICIAL
    assert set(official_specs()) == set(OFFICIAL)
    assert checkpoint_filename('efficientvit-seg-l2-ade20k') == 'efficientvit_seg_l2_ade20k.pt'


@pytest.mark.parametrize('name', OFFICIAL)
def test_structure_matches_official(models, name):
    spec = official_specs()[name]
    model = models(name)
    assert not model.training
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == spec['state_dict']                      # keys, order and shapes
    assert sum(p.numel() for p in model.parameters()) == spec['num_parameters']

    bn_eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bn_eps == {spec['bn_eps']} == {1e-7 if '-l' in name else 1e-5}

    acts = {type(m) for m in model.modules() if isinstance(m, (torch.nn.GELU, torch.nn.Hardswish))}
    if '-l' in name:
        assert acts == {torch.nn.GELU}
        assert {m.approximate for m in model.modules() if isinstance(m, torch.nn.GELU)} == {'tanh'}
    else:
        assert acts == {torch.nn.Hardswish}

    ups = sorted((m.mode, m.factor, m.align_corners) for m in model.modules() if isinstance(m, UpSampleLayer))
    assert [list(u) for u in ups] == spec['upsample_layers'] == [['bicubic', 2, False], ['bicubic', 4, False]]

    mla = [(n, m) for n, m in model.named_modules() if isinstance(m, LiteMLA)]
    assert [n for n, _ in mla] == spec['litemla_block_names']
    assert [m.qkv.conv.out_channels // (3 * m.dim) for _, m in mla] == spec['litemla_heads_per_block']
    assert {m.eps for _, m in mla} == {LITEMLA_EPS} == {1e-15}
    assert {m.dim for _, m in mla} == {spec['litemla_dim']}


@pytest.mark.parametrize('name', OFFICIAL)
def test_forward_small_input(models, name):
    model = models(name)
    n_classes = official_specs()[name]['n_classes']
    with torch.inference_mode():
        y = model(torch.randn(1, 3, 64, 96))
    assert y.shape == (1, n_classes, 8, 12)
    assert torch.isfinite(y).all()
    # the full-size output shape the spec lists follows the same 1/8 rule
    assert official_specs()[name]['output_shape_for_1x3x512x1024'] == [1, n_classes, 64, 128]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ModelError) as exc:
        create_model('efficientvit-seg-b0-ade20k')
    msg = str(exc.value)
    assert 'efficientvit-seg-b0-ade20k' in msg
    for name in OFFICIAL:
        assert name in msg


@pytest.mark.parametrize('h,w,expect', [
    (100, 128, ['height 100', '96', '128']),
    (64, 1000, ['width 1000', '992', '1024']),
    (16, 64, ['height 16', '32']),
])
def test_bad_input_size_names_nearest_valid(models, h, w, expect):
    model = models('efficientvit-seg-b0-cityscapes')
    with pytest.raises(ModelError) as exc, torch.inference_mode():
        model(torch.zeros(1, 3, h, w))
    for part in expect:
        assert part in str(exc.value)
    check_input_size(512, 1024)  # valid sizes pass


def _quadratic_reference(qkv: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """ReLU attention in the explicit N x N form (the official quadratic branch), float64."""
    b, _, h, w = qkv.shape
    x = qkv.double().reshape(b, -1, 3 * dim, h * w)
    q, k, v = x[:, :, :dim].relu(), x[:, :, dim:2 * dim].relu(), x[:, :, 2 * dim:]
    att = k.transpose(-1, -2) @ q                       # [b, heads, N(m), N(n)]
    out = (v @ att) / (att.sum(dim=2, keepdim=True) + eps)
    return out.reshape(b, -1, h, w)


@pytest.mark.parametrize('hw', [(2, 4), (4, 4), (8, 12)])  # H*W <= dim (official quadratic branch) and above
def test_linear_attention_equals_quadratic(hw):
    gen = torch.Generator().manual_seed(0)
    dim = 16
    qkv = torch.randn(2, 4 * 3 * dim, *hw, generator=gen)
    ours = _LinearAttentionCore(dim)(qkv)
    ref = _quadratic_reference(qkv, dim, LITEMLA_EPS)
    assert ours.dtype == torch.float32
    assert ((ours.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_attention_core_has_no_state():
    model = create_model('efficientvit-seg-b0-cityscapes')
    cores = [m for m in model.modules() if isinstance(m, _LinearAttentionCore)]
    assert len(cores) == 4
    assert all(not list(c.parameters()) and not list(c.buffers()) for c in cores)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_onnx_attention_scope_and_no_casts(models):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    model = models('efficientvit-seg-b0-cityscapes')
    x = torch.randn(1, 3, 64, 128)
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=['x'], output_names=['y'])
    graph = onnx.load_from_string(buf.getvalue()).graph
    assert [n.name for n in graph.node if n.op_type == 'Cast'] == []     # fp32 export: no precision casts

    pats = [re.compile(p) for p in attention_scope_patterns()]
    core = [n for n in graph.node if any(p.search(n.name) for p in pats)]
    scopes = sorted({n.name.rsplit('/', 1)[0] for n in core})
    assert scopes == [f'/backbone/stages.{s}/op_list.{b}/context_module/main/attention' for s in (2, 3) for b in (1, 2)]
    for scope in scopes:
        ops = sorted(n.op_type for n in core if n.name.startswith(scope + '/') and n.op_type != 'Constant')
        assert ops.count('MatMul') == 2 and ops.count('Div') == 1 and ops.count('Add') == 1
        assert ops.count('Relu') == 2
    # nothing outside the core matches (convs and the residual add are not pinned)
    assert not any(n.op_type == 'Conv' for n in core)

    sess = ort.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])
    got = sess.run(None, {'x': x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x).numpy()
    assert abs(got - ref).max() / abs(ref).max() < 1e-4

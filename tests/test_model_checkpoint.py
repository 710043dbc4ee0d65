"""Checkpoint loading: official layouts, strictness, variant detection, search path, sha256."""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import pytest

torch = pytest.importorskip('torch')

from evit_ros.errors import CheckpointError  # noqa: E402
from evit_ros.model import (  # noqa: E402
    CHECKPOINT_ENV,
    checkpoint_search_path,
    checkpoint_sha256,
    create_model,
    identify_variant,
    read_state_dict,
)
from tests.model_support import golden_state_dict, official_specs  # noqa: E402

B0 = 'efficientvit-seg-b0-cityscapes'


@pytest.fixture(scope='module')
def b0_state():
    sd = golden_state_dict(official_specs()[B0]['state_dict'], seed=3)
    return OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())


def _state_of(name: str, seed: int = 5) -> OrderedDict:
    return OrderedDict((k, torch.from_numpy(v))
                       for k, v in golden_state_dict(official_specs()[name]['state_dict'], seed=seed).items())


def _same_weights(model: torch.nn.Module, sd: OrderedDict) -> bool:
    got = model.state_dict()
    return list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.parametrize('layout', ['bare', 'wrapped', 'module-prefixed', 'wrapped+prefixed'])
def test_round_trip(tmp_path, b0_state, layout):
    obj: object = b0_state
    if 'prefixed' in layout:
        obj = OrderedDict((f'module.{k}', v) for k, v in b0_state.items())
    if 'wrapped' in layout:
        obj = {'state_dict': obj, 'epoch': 7}
    path = tmp_path / 'ckpt.pt'
    torch.save(obj, path)
    model = create_model(B0, checkpoint=str(path))
    assert not model.training
    assert _same_weights(model, b0_state)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    with torch.inference_mode():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


@pytest.mark.parametrize('actual', ['efficientvit-seg-b1-cityscapes', 'efficientvit-seg-b1-ade20k'])
def test_wrong_variant_is_refused_and_named(tmp_path, actual):
    path = tmp_path / 'other.pt'
    torch.save({'state_dict': _state_of(actual)}, path)
    with pytest.raises(CheckpointError) as exc:
        create_model(B0, checkpoint=str(path))
    msg = str(exc.value)
    assert f'The file is {actual}' in msg
    assert 'mis-shaped' in msg and B0 in msg


def test_ade_head_on_cityscapes_model_is_named(tmp_path):
    # same backbone, only the head differs: the message must still identify the file
    path = tmp_path / 'b2ade.pt'
    torch.save(_state_of('efficientvit-seg-b2-ade20k'), path)
    with pytest.raises(CheckpointError) as exc:
        create_model('efficientvit-seg-b2-cityscapes', checkpoint=str(path))
    assert 'The file is efficientvit-seg-b2-ade20k' in str(exc.value)
    assert 'head.output_ops.0.op_list.0' in str(exc.value)


def test_partial_mismatch_lists_missing_unexpected_misshaped(tmp_path, b0_state):
    sd = OrderedDict(b0_state)
    del sd['head.output_ops.0.op_list.1.conv.bias']
    sd['head.extra.weight'] = torch.zeros(3)
    sd['backbone.input_stem.op_list.0.conv.weight'] = torch.zeros(8, 3, 5, 5)
    path = tmp_path / 'broken.pt'
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as exc:
        create_model(B0, checkpoint=str(path))
    msg = str(exc.value)
    assert '1 missing key(s): head.output_ops.0.op_list.1.conv.bias' in msg
    assert '1 unexpected key(s): head.extra.weight' in msg
    assert 'backbone.input_stem.op_list.0.conv.weight: file [8, 3, 5, 5] vs model [8, 3, 3, 3]' in msg
    assert 'closest to efficientvit-seg-b0-cityscapes' in msg


def test_identify_variant_for_every_model():
    for name in official_specs():
        fake = {k: torch.empty(0).new_empty(s, device='meta') for k, s in official_specs()[name]['state_dict']}
        assert identify_variant(fake) == [name]


def test_unreadable_and_unsafe_files(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        create_model(B0, checkpoint=str(tmp_path / 'missing.pt'))
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='weights_only=True'):
        read_state_dict(junk)
    unsafe = tmp_path / 'unsafe.pt'
    torch.save({'state_dict': {'a': torch.zeros(1)}, 'cfg': _Opaque()}, unsafe)
    with pytest.raises(CheckpointError, match='weights_only=True'):
        read_state_dict(unsafe)
    notdict = tmp_path / 'list.pt'
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointError, match='not a state dict'):
        read_state_dict(notdict)


class _Opaque:
    """A pickled class instance: refused by weights_only loading."""


def test_pretrained_missing_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / 'a') + os.pathsep + str(tmp_path / 'b'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as exc:
        create_model('efficientvit-seg-l2-ade20k', pretrained=True)
    msg = str(exc.value)
    assert 'https://huggingface.co/han-cai/efficientvit-seg/resolve/main/efficientvit_seg_l2_ade20k.pt' in msg
    assert str(tmp_path / 'a') in msg and str(tmp_path / 'b') in msg
    assert str(tmp_path / 'home' / '.cache' / 'evit_ros' / 'checkpoints') in msg
    dirs = checkpoint_search_path()
    assert dirs[:3] == [tmp_path / 'a', tmp_path / 'b', tmp_path / 'engines']
    assert dirs[-1] == tmp_path / 'home' / '.cache' / 'evit_ros' / 'checkpoints'


def test_pretrained_found_on_search_path(tmp_path, monkeypatch, b0_state):
    later = tmp_path / 'later'
    later.mkdir()
    torch.save({'state_dict': b0_state}, later / 'efficientvit_seg_b0_cityscapes.pt')
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / 'empty') + os.pathsep + str(later))
    model = create_model(B0, pretrained=True)
    assert _same_weights(model, b0_state)


def test_checkpoint_sha256(tmp_path, b0_state):
    path = tmp_path / 'c.pt'
    torch.save(b0_state, path)
    assert checkpoint_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError):
        checkpoint_sha256(tmp_path / 'nope.pt')

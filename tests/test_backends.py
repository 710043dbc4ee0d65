"""ONNX Runtime and PyTorch backends for real, create_backend's choices, parity between them."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from evit_ros.backends import check_onnx_matches, choose_auto, create_backend, ensure_onnx, resolve_checkpoint
from evit_ros.backends.onnxruntime_backend import OnnxRuntimeBackend, select_providers
from evit_ros.backends.torch_backend import TorchBackend
from evit_ros.config import BackendConfig, InputConfig, ModelConfig
from evit_ros.errors import BackendError, BackendUnavailableError, ConfigError
from evit_ros.synthetic.scenes import generate_scene

H, W = 128, 256
INPUT = InputConfig(height=H, width=W)
MODEL = ModelConfig()


@pytest.fixture(scope='module')
def frames() -> np.ndarray:
    return np.stack([generate_scene(seed, H, W)[0] for seed in (101, 202)])


@pytest.fixture(scope='module')
def ort_backend():
    with create_backend(BackendConfig(type='onnxruntime', threads=2), model=MODEL, input_cfg=INPUT,
                        max_batch=2, head='labels+confidence') as b:   # the head whose graph computes confidence
        yield b


@pytest.fixture(scope='module')
def torch_backend():
    with create_backend(BackendConfig(type='torch', threads=2), model=MODEL, input_cfg=INPUT, max_batch=2,
                        head='labels+confidence') as b:
        yield b


@pytest.mark.parametrize('name', ['ort_backend', 'torch_backend'])
def test_backend_contract(name: str, request: pytest.FixtureRequest, frames: np.ndarray) -> None:
    b = request.getfixturevalue(name)
    io = b.io
    assert io.model_name == MODEL.name and io.head == 'labels+confidence' and io.input_format == 'uint8-nhwc'
    assert io.input_hw == (H, W) and io.max_batch == 2 and io.num_classes == 19
    assert b.describe()['backend'] == b.name
    res = b.infer(frames)
    assert res.labels is not None and res.confidence is not None and res.logits is None
    assert res.labels.shape == (2, H, W) and res.labels.dtype == np.uint8
    assert res.confidence.shape == (2, H, W) and res.confidence.dtype == np.uint8
    assert res.labels.max() < 19 and res.timings_ms['infer'] > 0
    # batching does not change a frame's result
    single = b.infer(frames[1:2]).labels.copy()
    np.testing.assert_array_equal(single[0], b.infer(frames).labels[1])
    # the documented buffer contract: the next call may reuse the returned arrays
    first = b.infer(frames[:1]).labels
    again = b.infer(frames[:1]).labels
    assert again is first


@pytest.mark.parametrize('name', ['ort_backend', 'torch_backend'])
@pytest.mark.parametrize('bad', [np.zeros((1, H, W, 3), np.float32), np.zeros((1, H, W + 32, 3), np.uint8),
                                 np.zeros((3, H, W, 3), np.uint8), np.zeros((H, W, 3), np.uint8)])
def test_backend_rejects_wrong_batches(name: str, bad: np.ndarray, request: pytest.FixtureRequest) -> None:
    b = request.getfixturevalue(name)
    with pytest.raises(BackendError, match=r'batch is .*take'):
        b.infer(bad)


def test_onnxruntime_and_torch_agree(ort_backend, torch_backend, frames: np.ndarray) -> None:
    """Same weights, same frames: labels agree on >= 99.9% of pixels, confidence within rounding."""
    a = ort_backend.infer(frames)
    la, ca = a.labels.copy(), a.confidence.copy()
    b = torch_backend.infer(frames)
    agreement = float((la == b.labels).mean())
    assert agreement >= 0.999, agreement
    assert int(np.abs(ca.astype(int) - b.confidence).max()) <= 2
    # the demo weights segment the synthetic scene: not a constant map
    assert len(np.unique(la)) >= 4


def test_onnxruntime_reports_the_providers_it_really_uses(ort_backend) -> None:
    assert ort_backend.providers[-1] == 'CPUExecutionProvider'
    assert ort_backend.describe()['providers'] == ','.join(ort_backend.providers)


def test_provider_selection_order_and_errors() -> None:
    avail = ['CPUExecutionProvider', 'CUDAExecutionProvider', 'TensorrtExecutionProvider', 'AzureExecutionProvider']
    assert select_providers(avail) == ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    assert select_providers(avail, 'cpu') == ['CPUExecutionProvider']
    with pytest.raises(BackendUnavailableError, match='onnxruntime-gpu'):
        select_providers(['CPUExecutionProvider'], 'cuda')
    with pytest.raises(BackendError, match='device'):
        select_providers(avail, 'tpu')


def test_onnxruntime_logs_a_silent_cpu_fallback(tmp_path, caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime builds without CUDA libraries quietly drop the CUDA provider: we must say so."""
    import onnxruntime as ort
    path = ensure_onnx(MODEL, INPUT, 'labels', checkpoint=resolve_checkpoint(MODEL))
    monkeypatch.setattr(ort, 'get_available_providers', lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider'])
    b = OnnxRuntimeBackend(path, threads=1)
    with caplog.at_level(logging.WARNING), b:
        assert b.providers == ['CPUExecutionProvider']
    assert any('CUDAExecutionProvider' in r.getMessage() and 'unavailable' in r.getMessage() for r in caplog.records)


def test_auto_explains_its_choice(caplog: pytest.LogCaptureFixture, tmp_path) -> None:
    kind, reason = choose_auto(BackendConfig(type='auto'))
    assert kind == 'onnxruntime' and 'engine_path is empty' in reason and 'CPU' in reason
    kind, reason = choose_auto(BackendConfig(type='auto', engine_path=str(tmp_path / 'm.engine')))
    assert kind == 'onnxruntime' and 'no TensorRT' in reason
    with caplog.at_level(logging.INFO):
        b = create_backend(BackendConfig(type='auto'), model=MODEL, input_cfg=INPUT)
    assert isinstance(b, OnnxRuntimeBackend)
    assert sum('backend auto -> onnxruntime' in r.getMessage() for r in caplog.records) == 1


def test_onnx_path_must_match_the_parameters(tmp_path) -> None:
    with pytest.raises(ConfigError, match='evit-ros export --model'):
        create_backend(BackendConfig(type='onnxruntime', onnx_path=str(tmp_path / 'missing.onnx')), model=MODEL,
                       input_cfg=INPUT)
    path = ensure_onnx(MODEL, INPUT, 'labels', checkpoint=resolve_checkpoint(MODEL))
    with pytest.raises(ConfigError, match=r'takes 128x256 frames, but input is 256x512'):
        check_onnx_matches(path, MODEL, InputConfig(height=256, width=512))
    with pytest.raises(ConfigError, match='holds efficientvit-seg-b0-cityscapes'):
        check_onnx_matches(path, ModelConfig(name='efficientvit-seg-b1-cityscapes'), INPUT)


def test_missing_checkpoint_is_refused_not_replaced(tmp_path) -> None:
    with pytest.raises(ConfigError, match='model.checkpoint'):
        create_backend(BackendConfig(type='torch'), model=ModelConfig(checkpoint=str(tmp_path / 'nope.pt')),
                       input_cfg=INPUT)


def test_lifecycle(tmp_path) -> None:
    b = TorchBackend(MODEL.name, checkpoint=resolve_checkpoint(MODEL), input_hw=(64, 64), head='logits')
    with pytest.raises(BackendError, match='before load'):
        b.infer(np.zeros((1, 64, 64, 3), np.uint8))
    with b:
        res = b.infer(np.zeros((1, 64, 64, 3), np.uint8))
        assert res.logits is not None and res.logits.shape == (1, 19, 8, 8) and res.labels is None
    b.close()  # twice is fine
    with pytest.raises(BackendError, match='before load'):
        b.infer(np.zeros((1, 64, 64, 3), np.uint8))


def test_onnx_from_other_weights_is_refused(tmp_path) -> None:
    """A YAML naming both a checkpoint and an ONNX exported from other weights must not run silently."""
    path = ensure_onnx(MODEL, INPUT, 'labels', checkpoint=resolve_checkpoint(MODEL))
    check_onnx_matches(path, ModelConfig(checkpoint=resolve_checkpoint(MODEL)), INPUT)   # same weights: fine
    other = tmp_path / 'other.pt'
    other.write_bytes(b'not the weights the graph was exported from')
    with pytest.raises(ConfigError, match=r'exported from checkpoint sha256 [0-9a-f]{12}, but model.checkpoint'):
        check_onnx_matches(path, ModelConfig(checkpoint=str(other)), INPUT)


def test_warmup_covers_every_dynamic_batch_size(ort_backend, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    real = ort_backend.infer
    monkeypatch.setattr(ort_backend, 'infer', lambda batch: (seen.append(batch.shape), real(batch))[1])
    ort_backend.warmup(1)
    assert ort_backend.io.input.shape[0] == -1
    assert seen == [(1, H, W, 3), (2, H, W, 3)]


def test_a_disk_that_fills_up_during_the_export_names_the_cache_and_both_fixes(tmp_path, monkeypatch) -> None:
    """The probe passes, then the export's write hits ENOSPC (no file name in the OSError): one typed error
    with the path, EVIT_ROS_CACHE and backend.onnx_path instead of `[Errno 28] No space left on device`."""
    import errno

    import evit_ros.export.onnx_export as onnx_export
    from evit_ros.errors import CacheError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setenv('EVIT_ROS_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(onnx_export, 'export_onnx', full)
    with pytest.raises(CacheError) as info:
        ensure_onnx(MODEL, INPUT, 'labels', checkpoint=resolve_checkpoint(MODEL))
    text = str(info.value)
    assert f'cannot write the ONNX cache {tmp_path / "cache" / "onnx"}: no space left on device (ENOSPC)' in text
    assert 'Set EVIT_ROS_CACHE to a writable folder' in text and 'backend.onnx_path' in text
    assert '--height 128 --width 256 --head labels' in text

    def elsewhere(*args, **kwargs):   # an OSError about another file is not blamed on the cache
        raise PermissionError(errno.EACCES, 'Permission denied', '/etc/some.conf')

    monkeypatch.setattr(onnx_export, 'export_onnx', elsewhere)
    with pytest.raises(PermissionError, match='/etc/some.conf'):
        ensure_onnx(MODEL, INPUT, 'labels', checkpoint=resolve_checkpoint(MODEL))


def test_each_start_removes_temp_files_of_killed_exports(tmp_path, monkeypatch, caplog) -> None:
    """A node SIGKILLed during its export left a temp file; the next start removes it even when that start
    finds the ONNX already exported (by another process), and never one of a running writer."""
    import os
    import subprocess

    import evit_ros.export.onnx_export as onnx_export
    from evit_ros.fileio import pid_namespace
    monkeypatch.setenv('EVIT_ROS_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(onnx_export, 'export_onnx', lambda model, out, **kw: out.write_bytes(b'onnx'))
    path = ensure_onnx(MODEL, INPUT, 'labels', checkpoint=resolve_checkpoint(MODEL))
    dead = subprocess.Popen(['true'])
    dead.wait()
    stale = path.parent / f'.{path.name}.{dead.pid}@{pid_namespace()}.a1b2c3d4.tmp'
    live = path.parent / f'.{path.name}.{os.getpid()}@{pid_namespace()}.e5f6g7h8.tmp'
    for p in (stale, live):
        p.write_bytes(b'partial')
    with caplog.at_level(logging.INFO):
        assert ensure_onnx(MODEL, INPUT, 'labels', checkpoint=resolve_checkpoint(MODEL)) == path
    assert not stale.exists() and live.exists()
    assert f'removed {stale}, left by an export that was killed' in caplog.text

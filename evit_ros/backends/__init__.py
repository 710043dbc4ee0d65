"""Inference backends behind one interface, and :func:`create_backend`, which picks and configures one.

``auto`` prefers TensorRT (an engine file and a CUDA GPU), then ONNX Runtime (GPU providers, then CPU),
then PyTorch; the choice and the reason are logged once.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from evit_ros import __version__
from evit_ros.config import BackendConfig, InputConfig, ModelConfig
from evit_ros.contract import NODE_HEAD
from evit_ros.deps import missing_module_error
from evit_ros.errors import BackendUnavailableError, CacheError, CheckpointError, ConfigError, EvitError
from evit_ros.fileio import os_error_text
from evit_ros.inference import InferenceBackend, InferenceResult, ModelIO, TensorSpec

log = logging.getLogger(__name__)

CACHE_ENV = 'EVIT_ROS_CACHE'
SYNTHETIC_MODEL = 'efficientvit-seg-b0-cityscapes'
SYNTHETIC_CHECKPOINT = Path(__file__).resolve().parents[1] / 'data' / 'efficientvit_seg_b0_synthetic.pt'


def cache_dir() -> Path:
    """Where automatically exported ONNX files live (``$EVIT_ROS_CACHE`` or ``~/.cache/evit_ros``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'evit_ros')


def cache_error(folder: Path, exc: OSError, model: ModelConfig, input_cfg: InputConfig, head: str,
                max_batch: int) -> CacheError:
    """One message for every cache write failure: the path, the cause, and both ways out."""
    why = os_error_text(exc)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f'{blocker} is a file, not a folder ({errno.errorcode[exc.errno]})' if blocker else why
    return CacheError(f'cannot write the ONNX cache {folder}: {why}. Set {CACHE_ENV} to a writable folder '
                      f'with space (now {folder.parent}), or set backend.onnx_path to an existing exported .onnx '
                      f'(`{export_command(model, input_cfg, "/path/to/model.onnx", head, max_batch)}`)')


def resolve_checkpoint(model: ModelConfig, logger: logging.Logger | None = None) -> str:
    """The weights file for ``model``: the configured one, the official one on the search path, or the demo.

    The packaged synthetic-scene weights are used only for the default b0 model when no official
    checkpoint is found, and that is logged as a warning because they know synthetic scenes only.
    """
    lg = logger or log
    if model.checkpoint:
        p = Path(model.checkpoint).expanduser()
        if not p.is_file():
            raise ConfigError(f'model.checkpoint={model.checkpoint!r} does not exist; give the path of a '
                              'downloaded official .pt file, or leave it empty to search the checkpoint path')
        return str(p)
    from evit_ros.model.checkpoint import find_checkpoint
    try:
        return find_checkpoint(model.name)
    except CheckpointError:
        if model.name == SYNTHETIC_MODEL and SYNTHETIC_CHECKPOINT.is_file():
            lg.warning('no official checkpoint for %s found; using the packaged demo weights %s, which know '
                       'synthetic scenes only (set model.checkpoint to the official file for real cameras)',
                       model.name, SYNTHETIC_CHECKPOINT)
            return str(SYNTHETIC_CHECKPOINT)
        raise


MAX_AUTO_BATCH = 8   # the node's automatic export takes 1..cameras frames per run, at most this many


def node_auto_batch(cameras: int) -> int:
    """The batch range of the node's automatic export for ``cameras`` cameras (its ONNX cache name carries it)."""
    return max(1, min(cameras, MAX_AUTO_BATCH))


def auto_onnx_path(model: ModelConfig, input_cfg: InputConfig, head: str, *, checkpoint: str,
                   max_batch: int = 1) -> Path:
    """Where :func:`ensure_onnx` keeps the automatic export of this model/checkpoint/size/head (may not exist)."""
    from evit_ros.fileio import file_sha256  # not evit_ros.model: that needs torch, the file's hash does not
    try:
        sha = file_sha256(checkpoint)[:12]
    except OSError as exc:
        raise CheckpointError(f'cannot read checkpoint {checkpoint!r}: {exc}; check the path') from exc
    tag = head.replace('+', '_')
    batch = f'_b1-{max_batch}' if max_batch > 1 else ''
    # the version is in the name: a new release may export a different graph
    name = f'{model.name}_{sha}_{input_cfg.height}x{input_cfg.width}_{tag}{batch}_v{__version__}.onnx'
    return cache_dir() / 'onnx' / name


def sweep_onnx_cache(folder: Path, logger: logging.Logger) -> None:
    """Remove the temporary files that exports killed mid-write left in ``folder`` (never a live writer's)."""
    from evit_ros.fileio import remove_stale_temps
    for stale in remove_stale_temps(folder):
        logger.info('removed %s, left by an export that was killed', stale)


def check_onnx_cache(folder: Path, model: ModelConfig, input_cfg: InputConfig, head: str, *, checkpoint: str,
                     max_batch: int = 1) -> None:
    """:class:`CacheError` unless ``folder`` is writable with room for an export of ``checkpoint``: run before the
    slow export and verification, so a read-only, misplaced or full cache fails in milliseconds."""
    from evit_ros.fileio import check_writable
    try:
        check_writable(folder, need_bytes=Path(checkpoint).stat().st_size if checkpoint else 0)
    except OSError as exc:
        raise cache_error(folder, exc, model, input_cfg, head, max_batch) from exc


def ensure_onnx(model: ModelConfig, input_cfg: InputConfig, head: str, *, checkpoint: str, max_batch: int = 1,
                logger: logging.Logger | None = None) -> Path:
    """An exported, verified ONNX for this model/checkpoint/size/head, exported into the cache if missing.

    ``max_batch > 1`` exports a dynamic batch dimension (1..max_batch) so several cameras share one run.
    """
    lg = logger or log
    path = auto_onnx_path(model, input_cfg, head, checkpoint=checkpoint, max_batch=max_batch)
    sweep_onnx_cache(path.parent, lg)   # every start: also when the export is already there
    if path.is_file():
        return path
    check_onnx_cache(path.parent, model, input_cfg, head, checkpoint=checkpoint, max_batch=max_batch)
    from evit_ros.export.onnx_export import export_onnx
    lg.info('exporting %s (%s) at %dx%d to %s', model.name, checkpoint, input_cfg.height, input_cfg.width, path)
    try:
        export_onnx(model.name, path, height=input_cfg.height, width=input_cfg.width, checkpoint=checkpoint,
                    head=head, max_batch=max_batch if max_batch > 1 else None)
    except CacheError:
        raise
    except OSError as exc:   # the disk filled up during the export
        if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            exc.filename = str(path)
        if exc.filename is None or not str(exc.filename).startswith(str(path.parent)):
            raise
        raise cache_error(path.parent, exc, model, input_cfg, head, max_batch) from exc
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file: through ``onnx`` when installed (weights not loaded), else through
    ONNX Runtime's model metadata, so a vehicle with only ONNX Runtime can check a given ONNX."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        pass
    else:
        from evit_ros.export.onnx_export import read_metadata
        return read_metadata(path)
    from evit_ros.deps import require
    ort = require('onnxruntime', f'reading the metadata of backend.onnx_path {path}')
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=['CPUExecutionProvider'])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for unreadable files
        raise ConfigError(f'backend.onnx_path {path} is not a readable ONNX file ({exc}); re-export it with '
                          '`evit-ros export`') from exc
    return dict(sess.get_modelmeta().custom_metadata_map)


def describe_weights(model: ModelConfig, onnx_path: str | Path = '') -> str:
    """Which weights a report's numbers come from, in words: the demo weights and an official checkpoint share the
    architecture name (``efficientvit-seg-b0-cityscapes``), so the architecture alone would mislead.

    From the graph's ``evit.checkpoint_sha256`` when an ONNX is given, else from the checkpoint the node's rule
    resolves; never raises (a report is still written when the weights cannot be named).
    """
    from evit_ros import contract
    from evit_ros.fileio import file_sha256
    try:
        if onnx_path:
            sha = read_onnx_metadata(onnx_path).get(contract.META_CHECKPOINT_SHA256, '')
            source = ''
        else:
            quiet = logging.getLogger('evit_ros.describe_weights')   # the run itself already warned
            quiet.propagate = False
            if not quiet.handlers:
                quiet.addHandler(logging.NullHandler())
            source = resolve_checkpoint(model, quiet)
            sha = file_sha256(source)
    except (OSError, EvitError):
        return 'unknown (the checkpoint or graph could not be read)'
    if not sha:
        return 'random weights (graph experiments only: the output is noise)'
    if SYNTHETIC_CHECKPOINT.is_file() and sha == file_sha256(SYNTHETIC_CHECKPOINT):
        return f'demo weights (synthetic scenes only), sha256 {sha[:12]}'
    return f'checkpoint {Path(source).name + " " if source else ""}sha256 {sha[:12]}'


def export_command(model: ModelConfig, input_cfg: InputConfig, output: str | Path, head: str = NODE_HEAD,
                   max_batch: int = 1) -> str:
    """The ``evit-ros export`` command producing exactly what the node loads for this configuration.

    Without ``model.checkpoint`` the export resolves weights by the node's own rule (``resolve_checkpoint``).
    """
    return (f'evit-ros export --model {model.name}'
            + (f' --checkpoint {model.checkpoint}' if model.checkpoint else '')
            + f' --height {input_cfg.height} --width {input_cfg.width} --head {head}'
            + (f' --max-batch {max_batch}' if max_batch > 1 else '') + f' -o {output}')


def check_onnx_matches(onnx_path: str | Path, model: ModelConfig, input_cfg: InputConfig,
                       head: str = NODE_HEAD) -> None:
    """Refuse an ONNX exported for another model or input size than the parameters say."""
    from evit_ros import contract
    p = Path(onnx_path)
    if not p.is_file():
        raise ConfigError(f'backend.onnx_path={str(p)!r} does not exist; export it with '
                          f'`{export_command(model, input_cfg, p, head)}` '
                          'or leave backend.onnx_path empty to export automatically')
    meta = read_onnx_metadata(p)
    name = meta.get(contract.META_MODEL, '')
    size = meta.get(contract.META_INPUT_SIZE, '')
    want = f'{input_cfg.height}x{input_cfg.width}'
    if name and name != model.name:
        raise ConfigError(f'backend.onnx_path {p} holds {name}, but model.name is {model.name}; set model.name '
                          f'to {name} or export {model.name}')
    if size and size != want:
        raise ConfigError(f'backend.onnx_path {p} takes {size} frames, but input is {want}; set input.height/width '
                          f'to match or re-export with --height {input_cfg.height} --width {input_cfg.width}')
    built_from = meta.get(contract.META_CHECKPOINT_SHA256, '')
    if model.checkpoint and Path(model.checkpoint).is_file():
        from evit_ros.fileio import file_sha256  # not evit_ros.model: that needs torch
        sha = file_sha256(model.checkpoint)
        if sha != built_from:
            was = f'checkpoint sha256 {built_from[:12]}' if built_from else 'no checkpoint (random weights)'
            raise ConfigError(f'backend.onnx_path {p} was exported from {was}, but model.checkpoint '
                              f'{model.checkpoint} has sha256 {sha[:12]}; re-export it from that checkpoint or '
                              'leave backend.onnx_path empty to export automatically')


def _onnxruntime(config: BackendConfig, model: ModelConfig, input_cfg: InputConfig, head: str, max_batch: int,
                 lg: logging.Logger) -> InferenceBackend:
    from evit_ros.backends.onnxruntime_backend import OnnxRuntimeBackend
    if config.onnx_path:
        check_onnx_matches(config.onnx_path, model, input_cfg, head)
        path = Path(config.onnx_path)
    else:
        path = ensure_onnx(model, input_cfg, head, checkpoint=resolve_checkpoint(model, lg), max_batch=max_batch,
                           logger=lg)
    return OnnxRuntimeBackend(path, threads=config.threads, logger=lg)


def _torch(config: BackendConfig, model: ModelConfig, input_cfg: InputConfig, head: str, max_batch: int,
           lg: logging.Logger) -> InferenceBackend:
    from evit_ros.backends.torch_backend import TorchBackend
    return TorchBackend(model.name, checkpoint=resolve_checkpoint(model, lg), input_hw=(input_cfg.height,
                        input_cfg.width), head=head, precision=config.precision, threads=config.threads,
                        max_batch=max(1, max_batch), logger=lg)


def _tensorrt(config: BackendConfig, lg: logging.Logger) -> InferenceBackend:
    from evit_ros.backends.tensorrt_backend import TensorRTBackend
    if not config.engine_path:
        raise ConfigError('backend.type=tensorrt needs backend.engine_path; build one with `evit-ros build-engine '
                          '--onnx MODEL.onnx --precision fp16 -o engines/MODEL.engine`')
    return TensorRTBackend(config.engine_path, onnx_path=config.onnx_path or None, precision=config.precision,
                           build_if_stale=bool(config.onnx_path), logger=lg)


def _onnxruntime_gpu() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return any(p in ort.get_available_providers() for p in ('TensorrtExecutionProvider', 'CUDAExecutionProvider'))


def choose_auto(config: BackendConfig) -> tuple[str, str]:
    """(backend type, reason) for ``backend.type=auto`` on this machine."""
    trt_ok, trt_reason = False, 'backend.engine_path is empty'
    if config.engine_path:
        try:
            from evit_ros.backends.tensorrt_backend import tensorrt_available
            trt_ok, trt_reason = tensorrt_available()
        except ImportError as exc:  # pragma: no cover - the module only imports stdlib/numpy at top level
            trt_reason = f'tensorrt backend unavailable ({exc})'
    if trt_ok:
        return 'tensorrt', f'engine {config.engine_path} and a CUDA GPU are present'
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return 'torch', f'no TensorRT ({trt_reason}) and onnxruntime is not installed'
    where = 'GPU' if _onnxruntime_gpu() else 'CPU'
    return 'onnxruntime', f'no TensorRT ({trt_reason}); onnxruntime has a {where} provider'


def needed_by(kind: str, config: BackendConfig) -> str:
    """Who needs the runtime modules of backend ``kind`` with this configuration (for missing-module errors)."""
    if kind == 'tensorrt':
        return 'the TensorRT backend' + (' (building the engine from backend.onnx_path)' if config.onnx_path else '')
    if kind == 'onnxruntime' and not config.onnx_path:
        return ('the automatic ONNX export (backend.onnx_path is empty; set it to an exported .onnx to run '
                'with ONNX Runtime alone)')
    if kind == 'onnxruntime':
        return 'the ONNX Runtime backend'
    return 'the PyTorch backend (backend.type=torch)'


def create_backend(config: BackendConfig, *, model: ModelConfig, input_cfg: InputConfig,
                   head: str = NODE_HEAD, max_batch: int = 1,
                   logger: logging.Logger | None = None) -> InferenceBackend:
    """A configured, not yet loaded backend (call ``load()`` or use it as a context manager).

    ``max_batch``: frames per run the caller wants (the node passes its camera count); automatically
    exported graphs get a dynamic batch of 1..max_batch. Engines and given ONNX files keep their own.
    """
    lg = logger or log
    kind = config.type
    if kind == 'auto':
        kind, reason = choose_auto(config)
        lg.info('backend auto -> %s: %s', kind, reason)
    try:
        if kind == 'tensorrt':
            return _tensorrt(config, lg)
        if kind == 'onnxruntime':
            return _onnxruntime(config, model, input_cfg, head, max_batch, lg)
        if kind == 'torch':
            return _torch(config, model, input_cfg, head, max_batch, lg)
    except ModuleNotFoundError as exc:
        raise missing_module_error(exc, needed_by(kind, config)) from exc
    raise BackendUnavailableError(f'backend.type={kind!r} is not valid; use auto, tensorrt, onnxruntime or torch')



__all__ = ['InferenceBackend', 'InferenceResult', 'ModelIO', 'TensorSpec', 'auto_onnx_path', 'cache_dir',
           'check_onnx_cache', 'check_onnx_matches', 'choose_auto', 'create_backend', 'describe_weights',
           'ensure_onnx', 'export_command', 'resolve_checkpoint', 'sweep_onnx_cache']

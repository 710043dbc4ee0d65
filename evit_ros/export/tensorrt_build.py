"""Build cached TensorRT engines from our ONNX graphs with an FP32 policy for the attention core.

Supported TensorRT flavours are detected by feature (``hasattr``), never by version string:

* TensorRT 8.6 / 10.x (JetPack 6 / 7): weakly typed network, ``BuilderFlag.FP16`` (and ``INT8`` with an
  entropy calibrator); the linear-attention MatMul/Div/Add(eps)/Pad/ReLU layers are pinned to FP32 with
  ``layer.precision`` + ``set_output_type`` under ``OBEY_PRECISION_CONSTRAINTS`` (``STRICT_TYPES`` on
  older releases).
* Strongly typed TensorRT (11.x, TensorRT-RTX): no FP16 flag; precision comes from the ONNX itself, so
  fp16 needs a graph exported with ``mixed_precision_fp16=True`` (explicit Casts keep the attention fp32).

The pinned layers are selected from the ONNX name scopes recorded by the exporter (``evit.fp32_scopes``),
logged, and written into the engine's sidecar. Every TensorRT call result is checked.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evit_ros import contract
from evit_ros.errors import BackendUnavailableError, EngineBuildError, EngineError
from evit_ros.export import engine_cache
from evit_ros.export.onnx_export import fp32_nodes, integer_tensors, read_metadata, scopes_from_metadata
from evit_ros.fileio import file_sha256

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

PRECISIONS = ('fp32', 'fp16', 'int8')
HEARTBEAT_S = 30.0


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: paths, timings, layer counts and the FP32-pinned layers."""

    engine_path: Path
    sidecar_path: Path
    precision: str
    strongly_typed: bool
    trt_version: str
    cache_key: str
    num_layers: int
    fp32_layers: tuple[str, ...]
    parse_seconds: float
    build_seconds: float
    engine_bytes: int
    builder_flags: tuple[str, ...] = ()
    shapes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        mode = 'strongly typed' if self.strongly_typed else 'weakly typed'
        return (f'{self.engine_path}: {self.precision} ({mode}, TensorRT {self.trt_version}), '
                f'{self.num_layers} layers, {len(self.fp32_layers)} pinned FP32; parse {self.parse_seconds:.1f} s, '
                f'build {self.build_seconds:.1f} s, {self.engine_bytes / 2**20:.1f} MiB')


def import_tensorrt(trt_module: Any = None) -> Any:
    """The TensorRT module: ``trt_module`` if given, else ``tensorrt``, else ``tensorrt_rtx_bindings``.

    A directory named ``tensorrt`` holding only type stubs imports as an empty namespace package, so a
    module counts only if it has ``Builder``.
    """
    if trt_module is not None:
        return trt_module
    errors = []
    for name in ('tensorrt', 'tensorrt_rtx_bindings'):
        try:
            mod = __import__(name)
        except ImportError as exc:
            errors.append(f'{name}: {exc}')
            continue
        if hasattr(mod, 'Builder'):
            return mod
        errors.append(f'{name}: not a TensorRT runtime (stubs only)')
    raise BackendUnavailableError('TensorRT is not importable (' + '; '.join(errors) + '). On a Jetson install '
                                  'JetPack (python3-libnvinfer); on a PC `pip install tensorrt` or the '
                                  'tensorrt-rtx-cu12 wheels')


def trt_version(trt_mod: Any) -> str:
    return str(getattr(trt_mod, '__version__', 'unknown'))


def detect_gpu() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0, or ('none', 'none') on a machine without one."""
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f'{major}.{minor}'
    except ImportError:
        pass
    smi = shutil.which('nvidia-smi')
    if smi:
        try:
            out = subprocess.run([smi, '--query-gpu=name,compute_cap', '--format=csv,noheader'],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            if out:
                name, cc = (s.strip() for s in out.splitlines()[0].split(',', 1))
                return name, cc
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    model_file = Path('/proc/device-tree/model')
    if model_file.is_file():
        model = model_file.read_text(errors='ignore').strip('\x00 \n')
        if 'Orin' in model:
            return model, '8.7'
        if 'Xavier' in model:
            return model, '7.2'
        if 'Thor' in model:
            return model, '11.0'
    return 'none', 'none'


def is_strongly_typed_only(trt_mod: Any) -> bool:
    """True for TensorRT flavours without the FP16 builder flag (precision comes from the graph)."""
    return not hasattr(trt_mod.BuilderFlag, 'FP16')


class _Heartbeat:
    """Logs 'still building' every ``period`` seconds from a daemon thread until stopped."""

    def __init__(self, what: str, period: float = HEARTBEAT_S) -> None:
        self._what = what
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='trt-heartbeat', daemon=True)
        self._t0 = time.monotonic()
        self.phase = ''

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            phase = f' (phase: {self.phase})' if self.phase else ''
            log.info('%s: still building, %.0f s elapsed%s', self._what, time.monotonic() - self._t0, phase)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


def _progress_monitor(trt_mod: Any, heartbeat: _Heartbeat) -> Any:
    """An IProgressMonitor logging phase starts/ends, or None where the API lacks it (TensorRT 8.6)."""
    if not hasattr(trt_mod, 'IProgressMonitor'):
        return None

    class Monitor(trt_mod.IProgressMonitor):
        def __init__(self) -> None:
            trt_mod.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            heartbeat.phase = phase_name
            log.debug('phase start: %s (%d steps)', phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True

        def phase_finish(self, phase_name: str) -> None:
            log.debug('phase done: %s', phase_name)

    return Monitor()


def parse_onnx(trt_mod: Any, builder: trt.Builder, onnx_path: Path, strongly_typed: bool,
               logger: trt.ILogger | None = None) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """Create the network and parse the ONNX into it; EngineBuildError listing every parser error."""
    flags = 0
    creation = trt_mod.NetworkDefinitionCreationFlag
    if strongly_typed:
        if not hasattr(creation, 'STRONGLY_TYPED'):
            raise EngineError('this TensorRT cannot build strongly typed networks; use --precision fp16 with '
                              'an fp32 ONNX instead')
        flags |= 1 << int(creation.STRONGLY_TYPED)
    elif hasattr(creation, 'EXPLICIT_BATCH') and not hasattr(creation, 'STRONGLY_TYPED'):
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # TensorRT 8.x needs it; 10.x deprecates it
    network = builder.create_network(flags)
    if network is None:
        raise EngineBuildError('TensorRT could not create a network definition (see the TensorRT log above)')
    parser = trt_mod.OnnxParser(network, logger if logger is not None else builder.logger)
    if parser is None:
        raise EngineBuildError('TensorRT could not create an ONNX parser')
    ok = parser.parse_from_file(str(onnx_path))
    if not ok:
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f'TensorRT ONNX parser rejected {onnx_path} ({len(errs)} errors): ' + ' | '.join(errs)
                               + '. Re-export with `evit-ros export` (opset 17) or check the TensorRT version')
    return network, parser


def select_fp32_layers(network: trt.INetworkDefinition, node_names: list[str]) -> list[trt.ILayer]:
    """Network layers created from the given ONNX nodes (same name, or name + parser suffix), in layer order."""
    exact = set(node_names)
    prefixes = tuple(n + s for n in node_names for s in ('_', '/', ':'))
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in exact or (prefixes and layer.name.startswith(prefixes)):
            layers.append(layer)
    return layers


def pin_fp32(trt_mod: Any, layers: list[trt.ILayer]) -> int:
    """Force the float layers (and their outputs) to FP32; returns how many were pinned.

    Layers with a non-float output (shape arithmetic) are left alone: a precision constraint there is
    meaningless and TensorRT rejects it.
    """
    pinned = 0
    floats = (trt_mod.float32, trt_mod.float16)
    for layer in layers:
        if not hasattr(layer, 'precision'):
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if any(out is not None and out.dtype not in floats for out in outs):
            continue
        layer.precision = trt_mod.float32
        for j in range(layer.num_outputs):
            out = layer.get_output(j)
            if out is not None and out.dtype in (trt_mod.float32, trt_mod.float16):
                layer.set_output_type(j, trt_mod.float32)
        pinned += 1
    return pinned


def _set_flag(config: trt.IBuilderConfig, trt_mod: Any, name: str, flags: list[str]) -> bool:
    flag = getattr(trt_mod.BuilderFlag, name, None)
    if flag is None:
        return False
    config.set_flag(flag)
    flags.append(name)
    return True


def _input_shapes(network: trt.INetworkDefinition, max_batch: int | None
                  ) -> tuple[dict[str, Any], tuple[tuple[int, ...], tuple[int, ...]] | None, tuple[int, ...]]:
    if network.num_inputs != 1:
        raise EngineBuildError(f'expected one input {contract.INPUT_NAME!r}, the network has {network.num_inputs}')
    inp = network.get_input(0)
    dims = inp.shape
    shape = tuple(int(dims[i]) for i in range(len(dims)))
    shapes: dict[str, Any] = {'input': inp.name, 'shape': list(shape), 'dtype': str(inp.dtype)}
    if shape[0] != -1:
        if max_batch is not None and max_batch != shape[0]:
            raise EngineError(f'--max-batch {max_batch} given but {inp.name} has a static batch of {shape[0]}; '
                              're-export with --max-batch')
        return shapes, None, shape
    if -1 in shape[1:]:
        raise EngineBuildError(f'{inp.name} has dynamic spatial dims {shape}; export static H and W')
    if max_batch is None or max_batch < 1:
        raise EngineError(f'{inp.name} has a dynamic batch; pass max_batch (from evit.batch metadata)')
    lo, hi = (1,) + shape[1:], (max_batch,) + shape[1:]
    shapes['profile'] = {'min': list(lo), 'opt': list(hi), 'max': list(hi)}
    return shapes, (lo, hi), (max_batch,) + shape[1:]


def build_engine(onnx_path: str | Path, engine_path: str | Path | None = None, *, precision: str = 'fp16',
                 calib: Any = None, workspace_mb: int | None = None, dla_core: int | None = None,
                 timing_cache: str | Path | None = None, max_batch: int | None = None, trt_module: Any = None,
                 gpu: tuple[str, str] | None = None, engines_dir: str | Path = 'engines',
                 calib_factory: Callable[[tuple[int, ...], str], Any] | None = None,
                 rebuild_command: str | None = None, command_options: dict[str, Any] | None = None) -> BuildResult:
    """Parse ``onnx_path``, build an engine with the FP32 attention policy, write it and its sidecar.

    ``calib``: a TensorRT INT8 calibrator, or ``calib_factory(input_shape, input_format)`` building one
    once the engine's input shape is known (INT8 only; INT8 without either raises EngineError).
    ``command_options``: extra ``evit-ros build-engine`` options (e.g. ``calib_images``) recorded in the
    sidecar's rebuild command, for settings that live outside this function (calibration data).
    """
    onnx_p = Path(onnx_path)
    if precision not in PRECISIONS:
        raise EngineError(f'precision={precision!r} is not valid; use one of: {", ".join(PRECISIONS)}')
    meta = read_metadata(onnx_p)
    if precision == 'int8' and calib is None and calib_factory is None:
        raise EngineError('INT8 needs calibration data: pass --calib-images DIR or --calib-bag BAG --calib-topic '
                          'TOPIC (a few hundred real camera frames), or build --precision fp16')
    batch_meta = meta.get(contract.META_BATCH, '1')
    if max_batch is None and batch_meta.startswith('dynamic:'):
        max_batch = int(batch_meta.split(':', 1)[1])
    trt_mod = import_tensorrt(trt_module)
    version = trt_version(trt_mod)
    gpu_name, cc = gpu if gpu is not None else detect_gpu()
    exporter = json.loads(meta.get(contract.META_EXPORTER, '{}') or '{}')
    mixed = bool(exporter.get('mixed_precision_fp16', False))
    strongly_typed = is_strongly_typed_only(trt_mod)
    if strongly_typed and precision == 'fp16' and not mixed:
        raise EngineError(f'this TensorRT ({version}) is strongly typed and has no FP16 builder flag; export a '
                          'mixed-precision graph: `evit-ros export ... --mixed-precision-fp16` and build that')
    if strongly_typed and precision == 'int8':
        raise EngineError(f'this TensorRT ({version}) has no implicit INT8 calibration; build fp16 or fp32')
    if mixed and precision == 'fp32':
        log.warning('%s is a mixed-precision (fp16) export; an fp32 build still runs its fp16 parts in fp16', onnx_p)
    if mixed and not strongly_typed and hasattr(trt_mod.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED'):
        strongly_typed = True  # honour the explicit Casts exactly

    logger: trt.ILogger = trt_mod.Logger(trt_mod.Logger.WARNING)
    builder: trt.Builder = trt_mod.Builder(logger)
    if builder is None:
        raise EngineBuildError('TensorRT could not create a Builder (no CUDA device / driver?)')
    t0 = time.perf_counter()
    network, _parser = parse_onnx(trt_mod, builder, onnx_p, strongly_typed, logger)
    parse_s = time.perf_counter() - t0
    shapes, profile_dims, engine_input_shape = _input_shapes(network, max_batch)

    scopes = scopes_from_metadata(meta)
    import onnx
    onnx_model = onnx.load(str(onnx_p), load_external_data=False)
    pinned_nodes = fp32_nodes(onnx_model.graph, scopes, integer_tensors(onnx_model))
    layers = select_fp32_layers(network, pinned_nodes)
    matched = {n for n in pinned_nodes if any(la.name == n or la.name.startswith(n) for la in layers)}
    unmatched = [n for n in pinned_nodes if n not in matched]
    if unmatched:
        log.warning('%d attention nodes have no TensorRT layer of the same name: %s', len(unmatched), unmatched[:5])
    if not scopes:
        log.warning('%s records no attention scopes (evit.fp32_scopes); nothing is pinned to FP32', onnx_p)

    config: trt.IBuilderConfig = builder.create_builder_config()
    if config is None:
        raise EngineBuildError('TensorRT could not create a builder config')
    flags: list[str] = []
    if workspace_mb is not None:
        if workspace_mb < 16:
            raise EngineError(f'workspace_mb={workspace_mb} is too small; use >= 16 (e.g. 1024)')
        if hasattr(config, 'set_memory_pool_limit'):
            config.set_memory_pool_limit(trt_mod.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        else:
            config.max_workspace_size = int(workspace_mb) << 20  # type: ignore[attr-defined]  # TensorRT 8.x
    pinned_count = 0
    if not strongly_typed and precision in ('fp16', 'int8'):
        _set_flag(config, trt_mod, 'FP16', flags)
        if not (_set_flag(config, trt_mod, 'OBEY_PRECISION_CONSTRAINTS', flags)
                or _set_flag(config, trt_mod, 'STRICT_TYPES', flags)):
            log.warning('this TensorRT has no precision-constraint flag; FP32 pinning is a preference only')
        pinned_count = pin_fp32(trt_mod, layers)
    if precision == 'int8':
        if not _set_flag(config, trt_mod, 'INT8', flags):
            raise EngineError(f'this TensorRT ({version}) has no INT8 builder flag; build fp16')
        if calib is None and calib_factory is not None:
            calib = calib_factory(tuple(engine_input_shape), meta.get(contract.META_INPUT_FORMAT, 'uint8-nhwc'))
        config.int8_calibrator = calib
    if strongly_typed:
        flags.append('STRONGLY_TYPED')
    if dla_core is not None:
        if builder.num_DLA_cores <= dla_core:
            raise EngineError(f'dla_core={dla_core} but this device has {builder.num_DLA_cores} DLA cores')
        config.default_device_type = trt_mod.DeviceType.DLA
        config.DLA_core = int(dla_core)
        _set_flag(config, trt_mod, 'GPU_FALLBACK', flags)
        flags.append(f'DLA{dla_core}')
    if profile_dims is not None:
        profile = builder.create_optimization_profile()
        lo, hi = profile_dims
        profile.set_shape(network.get_input(0).name, trt_mod.Dims(list(lo)), trt_mod.Dims(list(hi)),
                          trt_mod.Dims(list(hi)))
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f'TensorRT rejected the optimization profile {shapes["profile"]}')
        if precision == 'int8' and hasattr(config, 'set_calibration_profile'):
            config.set_calibration_profile(profile)

    cache_obj = None
    if timing_cache is not None and hasattr(config, 'create_timing_cache'):
        tc = Path(timing_cache)
        data = tc.read_bytes() if tc.is_file() else b''
        cache_obj = config.create_timing_cache(data)
        if cache_obj is None or not config.set_timing_cache(cache_obj, False):
            log.warning('timing cache %s could not be used (other TensorRT version?); starting a new one', tc)
            cache_obj = config.create_timing_cache(b'')
            config.set_timing_cache(cache_obj, True)
        log.info('timing cache %s (%d bytes loaded)', tc, len(data))

    model_name = meta.get(contract.META_MODEL, onnx_p.stem)
    in_size = meta.get(contract.META_INPUT_SIZE, 'x'.join(str(d) for d in engine_input_shape[1:3]))
    h, w = (int(v) for v in in_size.split('x'))
    batch_tag: int | str = f'1-{max_batch}' if profile_dims is not None else int(engine_input_shape[0])
    ep = Path(engine_path) if engine_path is not None else engine_cache.default_engine_path(
        model_name, h, w, meta.get(contract.META_HEAD, 'labels'), batch_tag, precision, engines_dir)

    layer_names = [la.name for la in layers]
    how = ('whole network fp32' if precision == 'fp32' else
           'explicit Casts in the ONNX, strongly typed' if strongly_typed else 'layer precision constraints')
    log.info('FP32 attention policy: %d layers from %d ONNX nodes in %d scopes (%s)', len(layer_names),
             len(pinned_nodes), len(scopes), how)
    for name in layer_names:
        log.info('  fp32: %s', name)

    t1 = time.perf_counter()
    with _Heartbeat(f'building {ep.name}') as hb:
        monitor = _progress_monitor(trt_mod, hb)
        if monitor is not None and hasattr(config, 'progress_monitor'):
            config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t1
    if serialized is None:
        raise EngineBuildError(f'TensorRT failed to build {onnx_p} at {precision} (see the TensorRT log above); '
                               'try a larger --workspace-mb, --precision fp32, or re-export with opset 17')
    engine = bytes(memoryview(serialized))
    if cache_obj is not None and timing_cache is not None:
        tc_data = config.get_timing_cache().serialize()
        engine_cache.atomic_write(timing_cache, bytes(memoryview(tc_data)))

    fields = engine_cache.key_fields(file_sha256(onnx_p), version, gpu_name, cc, precision, shapes, flags)
    options: dict[str, Any] = {'workspace_mb': workspace_mb, 'dla_core': dla_core, 'timing_cache': timing_cache,
                               **(command_options or {})}
    command = rebuild_command or engine_cache.build_command(onnx_p, ep, precision, **options)
    sidecar = engine_cache.make_sidecar(
        fields, model_metadata=meta, fp32_layers=layer_names, rebuild_command=command,
        extra={'onnx_path': os.fspath(onnx_p), 'num_layers': network.num_layers, 'strongly_typed': strongly_typed,
               'fp32_layers_pinned_by': 'casts' if strongly_typed else ('precision' if pinned_count else 'none'),
               'build_seconds': round(build_s, 3)})
    sp = engine_cache.write_engine(ep, engine, sidecar)
    result = BuildResult(engine_path=ep, sidecar_path=sp, precision=precision, strongly_typed=strongly_typed,
                         trt_version=version, cache_key=sidecar['key'], num_layers=network.num_layers,
                         fp32_layers=tuple(layer_names), parse_seconds=parse_s, build_seconds=build_s,
                         engine_bytes=len(engine), builder_flags=tuple(flags), shapes=shapes)
    log.info('%s', result.summary())
    return result

"""Build cached TensorRT engines from our ONNX graphs under one precision policy (``engine_cache.PRECISION_POLICY``).

TensorRT flavours are told apart by feature (``hasattr``), never by version string (see :func:`plan_precision`):

* fp16 on TensorRT >= 10 / TensorRT-RTX (:func:`~evit_ros.export.tensorrt_precision.strong_typing`; TensorRT
  >= 11 and RTX type every network strongly, 10.x opts in with ``STRONGLY_TYPED``): a strongly typed network from the
  mixed-precision graph (the exporter's ``--mixed-precision-fp16`` file, or the fp32 ONNX rewritten in
  memory): the whole attention scope is FP32 by its types.
* fp16 on TensorRT 8.6: ``BuilderFlag.FP16`` and the same layers pinned with ``layer.precision`` +
  ``set_output_type`` under ``OBEY_PRECISION_CONSTRAINTS``.
* fp32: strongly typed wherever possible (TensorRT >= 10; weak typing is deprecated since 10.12).
* int8: a Q/DQ ONNX (``evit-ros quantize``) builds explicitly quantized (strongly typed where possible);
  implicit calibration of a float ONNX only on TensorRT 8.6. INT8 on a mixed-precision export is refused.

The pinned layers are the attention scopes recorded by the exporter (``evit.fp32_scopes``). After every
build the engine is deserialized and its layer information (``IEngineInspector``, DETAILED profiling
verbosity) must show them in FP32, else the build fails; the result goes into the sidecar. Builds run
under an exclusive per-engine lock and re-check the cache first. Every TensorRT call result is checked.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evit_ros import contract
from evit_ros.device.detect import detect_gpu
from evit_ros.device.identity import GpuIdentity
from evit_ros.errors import BackendUnavailableError, EngineBuildError, EngineError
from evit_ros.export import engine_cache
from evit_ros.export.fp32_scopes import fp32_scope_nodes, integer_tensors, scopes_from_metadata, to_mixed_precision
from evit_ros.export.onnx_export import load_onnx, metadata_of
from evit_ros.export.tensorrt_precision import (
    check_qdq_for_tensorrt,
    inspect_engine,
    is_qdq,
    network_creation_flags,
    plan_precision,
    trt_version,
)
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
    inspection: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    def summary(self) -> str:
        mode = 'strongly typed' if self.strongly_typed else 'weakly typed'
        return (f'{self.engine_path}: {self.precision} ({mode}, TensorRT {self.trt_version}), '
                f'{self.num_layers} layers, {len(self.fp32_layers)} pinned FP32; parse {self.parse_seconds:.1f} s, '
                f'build {self.build_seconds:.1f} s, {self.engine_bytes / 2**20:.1f} MiB')


def import_tensorrt(trt_module: Any = None) -> Any:
    """The TensorRT module: ``trt_module`` if given, else ``tensorrt``, else ``tensorrt_bindings`` (what the
    ``tensorrt`` front-end package re-exports, installed alone by the ``tensorrt-*-bindings`` wheels), else
    ``tensorrt_rtx_bindings``.

    A directory named ``tensorrt`` holding only type stubs imports as an empty namespace package, so a
    module counts only if it has ``Builder``.
    """
    if trt_module is not None:
        return trt_module
    errors = []
    for name in ('tensorrt', 'tensorrt_bindings', 'tensorrt_rtx_bindings'):
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
               logger: trt.ILogger | None = None, model_bytes: bytes | None = None
               ) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """Create the network and parse the ONNX into it; EngineBuildError listing every parser error.

    ``model_bytes``: parse this serialized model (e.g. rewritten in memory) instead of the file.
    """
    network = builder.create_network(network_creation_flags(trt_mod, strongly_typed))
    if network is None:
        raise EngineBuildError('TensorRT could not create a network definition (see the TensorRT log above)')
    parser = trt_mod.OnnxParser(network, logger if logger is not None else builder.logger)
    if parser is None:
        raise EngineBuildError('TensorRT could not create an ONNX parser')
    if model_bytes is not None:
        ok = parser.parse(model_bytes, str(onnx_path))
    else:
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
        if layer.name.endswith(('QuantizeLinear', 'DequantizeLinear')):
            continue     # Q/DQ inserted after a pinned node (``<node>_output_0_QuantizeLinear``): INT8 by design
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


def _input_shapes(network: trt.INetworkDefinition, max_batch: int | None, opt_batch: int | None
                  ) -> tuple[dict[str, Any], tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None,
                             tuple[int, ...]]:
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
    opt = max_batch if opt_batch is None else int(opt_batch)
    if not 1 <= opt <= max_batch:
        raise EngineError(f'--opt-batch {opt} must be within 1..{max_batch} (the max batch); use the number of '
                          'cameras the node runs')
    lo, mid, hi = (1,) + shape[1:], (opt,) + shape[1:], (max_batch,) + shape[1:]
    shapes['profile'] = {'min': list(lo), 'opt': list(mid), 'max': list(hi)}
    return shapes, (lo, mid, hi), (max_batch,) + shape[1:]


def _set_calibration_profile(builder: trt.Builder, config: trt.IBuilderConfig, trt_mod: Any, name: str,
                             calib: Any, engine_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Calibrate a dynamic batch at the calibrator's own batch size; returns that shape.

    TensorRT calibrates at the calibration profile's opt shape (it overwrites min and max with opt). The
    build profile's opt is the camera count, so reusing it would make TensorRT read only part of every
    batch the calibrator hands over (``get_batch_size()`` frames).
    """
    batch = int(calib.get_batch_size()) if hasattr(calib, 'get_batch_size') else int(engine_shape[0])
    if not 1 <= batch <= engine_shape[0]:
        raise EngineError(f'the calibrator batch size {batch} is outside the engine batch 1..{engine_shape[0]}')
    shape = (batch, *engine_shape[1:])
    profile = builder.create_optimization_profile()
    dims = trt_mod.Dims(list(shape))
    profile.set_shape(name, dims, dims, dims)
    if not config.set_calibration_profile(profile):
        raise EngineBuildError(f'TensorRT rejected the calibration profile {list(shape)}')
    return shape


def build_engine(onnx_path: str | Path, engine_path: str | Path | None = None, *, precision: str = 'fp16',
                 calib: Any = None, workspace_mb: int | None = None, dla_core: int | None = None,
                 timing_cache: str | Path | None = None, max_batch: int | None = None, trt_module: Any = None,
                 gpu: GpuIdentity | tuple[str, str] | None = None, engines_dir: str | Path = 'engines',
                 calib_factory: Callable[[tuple[int, ...], str], Any] | None = None,
                 rebuild_command: str | None = None, command_options: dict[str, Any] | None = None,
                 opt_batch: int | None = None, force: bool = True) -> BuildResult:
    """Parse ``onnx_path``, build an engine under the precision policy, inspect it, write it and its sidecar.

    ``calib``: a TensorRT INT8 calibrator, or ``calib_factory(input_shape, input_format)`` building one
    once the engine's input shape is known (implicit INT8 on TensorRT 8.6 only).
    ``opt_batch``: the profile's opt batch of a dynamic-batch ONNX (the typical batch = number of
    cameras; default the max batch). ``command_options``: extra ``evit-ros build-engine`` options
    recorded in the sidecar's rebuild command. The build runs under an exclusive build lock; with
    ``force=False`` an engine that another process finished meanwhile with the same key is reused.
    """
    onnx_p = Path(onnx_path)
    if precision not in PRECISIONS:
        raise EngineError(f'precision={precision!r} is not valid; use one of: {", ".join(PRECISIONS)}')
    if dla_core is not None and precision == 'fp32':
        raise EngineError('--dla-core needs --precision fp16 or int8: DLA runs FP16/INT8 only, an fp32 build '
                          'would silently run on the GPU; drop --dla-core or choose fp16')
    onnx_model = load_onnx(onnx_p)   # read once: metadata, Q/DQ check and the pinned-layer set
    meta = metadata_of(onnx_model)
    if max_batch is None:
        max_batch = contract.dynamic_max_batch(meta)
    trt_mod = import_tensorrt(trt_module)
    version = trt_version(trt_mod)
    gpu_id = GpuIdentity.from_tuple(gpu) if gpu is not None else detect_gpu()
    exporter = json.loads(meta.get(contract.META_EXPORTER, '{}') or '{}')
    mixed = bool(exporter.get('mixed_precision_fp16', False))
    qdq = is_qdq(onnx_model)
    plan = plan_precision(trt_mod, precision, mixed=mixed, qdq=qdq)
    if qdq:
        check_qdq_for_tensorrt(onnx_model)
    if plan.implicit_int8 and calib is None and calib_factory is None:
        raise EngineError('INT8 needs calibration data: pass --calib-images DIR or --calib-bag BAG --calib-topic '
                          'TOPIC (a few hundred real camera frames), or build --precision fp16')
    scopes = scopes_from_metadata(meta)
    pinned_nodes = fp32_scope_nodes(onnx_model.graph, scopes, integer_tensors(onnx_model))
    model_bytes = None
    if plan.rewrite_mixed:
        n_casts = to_mixed_precision(onnx_model, scopes)
        model_bytes = onnx_model.SerializeToString()
        log.info('%s: fp32 graph rewritten to mixed precision in memory (%d Casts; attention scope FP32)',
                 onnx_p, n_casts)

    logger: trt.ILogger = trt_mod.Logger(trt_mod.Logger.WARNING)
    builder: trt.Builder = trt_mod.Builder(logger)
    if builder is None:
        raise EngineBuildError('TensorRT could not create a Builder (no CUDA device / driver?)')
    t0 = time.perf_counter()
    network, _parser = parse_onnx(trt_mod, builder, onnx_p, plan.strongly_typed, logger, model_bytes)
    parse_s = time.perf_counter() - t0
    shapes, profile_dims, engine_input_shape = _input_shapes(network, max_batch, opt_batch)

    layers = select_fp32_layers(network, pinned_nodes)
    matched = {n for n in pinned_nodes if any(la.name == n or la.name.startswith(n) for la in layers)}
    unmatched = [n for n in pinned_nodes if n not in matched]
    if unmatched:
        log.debug('%d attention nodes have no TensorRT layer of the same name: %s', len(unmatched), unmatched[:5])
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
    if hasattr(trt_mod, 'ProfilingVerbosity'):   # layer precisions readable by the engine inspector
        config.profiling_verbosity = trt_mod.ProfilingVerbosity.DETAILED
    for flag in plan.flags:
        if not _set_flag(config, trt_mod, flag, flags):
            if flag == 'OBEY_PRECISION_CONSTRAINTS' and _set_flag(config, trt_mod, 'STRICT_TYPES', flags):
                continue
            raise EngineError(f'this TensorRT ({version}) has no {flag} builder flag; build fp32')
    pinned_count = pin_fp32(trt_mod, layers) if plan.pin_layers else 0
    if plan.implicit_int8:
        if calib is None and calib_factory is not None:
            calib = calib_factory(tuple(engine_input_shape), meta.get(contract.META_INPUT_FORMAT, 'uint8-nhwc'))
        config.int8_calibrator = calib
    if plan.strongly_typed:
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
        lo, mid, hi = profile_dims
        profile.set_shape(network.get_input(0).name, trt_mod.Dims(list(lo)), trt_mod.Dims(list(mid)),
                          trt_mod.Dims(list(hi)))
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f'TensorRT rejected the optimization profile {shapes["profile"]}')
        if plan.implicit_int8:
            shapes['calibration'] = list(_set_calibration_profile(builder, config, trt_mod, network.get_input(0).name,
                                                                  calib, engine_input_shape))

    model_name = meta.get(contract.META_MODEL, onnx_p.stem)
    in_size = meta.get(contract.META_INPUT_SIZE, 'x'.join(str(d) for d in engine_input_shape[1:3]))
    h, w = (int(v) for v in in_size.split('x'))
    batch_tag: int | str = f'1-{max_batch}' if profile_dims is not None else int(engine_input_shape[0])
    ep = Path(engine_path) if engine_path is not None else engine_cache.default_engine_path(
        model_name, h, w, meta.get(contract.META_HEAD, 'labels'), batch_tag, precision, engines_dir)

    layer_names = [la.name for la in layers]
    log.info('precision policy %d: %s; %d attention layers FP32 from %d ONNX nodes in %d scopes',
             engine_cache.PRECISION_POLICY, plan.how, len(layer_names), len(pinned_nodes), len(scopes))
    for name in layer_names:
        log.debug('  fp32: %s', name)
    fields = engine_cache.key_fields(file_sha256(onnx_p), version, gpu_id, precision, shapes, flags,
                                     pinned_layers=layer_names)
    key = engine_cache.key_from_fields(fields)

    with engine_cache.build_lock(ep, log=log):
        if not force:
            reused = _reuse(ep, key)
            if reused is not None:
                log.info('%s was built meanwhile by another process with the same key; reusing it', ep)
                return reused
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
        opt_shape = tuple(profile_dims[1]) if profile_dims is not None else None
        inspection = inspect_engine(trt_mod, engine, layer_names if precision != 'fp32' else [], logger,
                                    network.get_input(0).name, opt_shape)
        if inspection.get('violations'):
            raise EngineBuildError(f'TensorRT {version} built {len(inspection["violations"])} FP32-pinned attention '
                                   f'layers in lower precision: {inspection["violations"][:5]}. The engine was not '
                                   'written. Build --precision fp32, or try another TensorRT version')
        if inspection.get('inspected'):
            log.info('engine inspection: %d pinned layers verified FP32, %d not observable (fused)',
                     inspection['checked_fp32'], inspection['unobserved'])
        else:
            log.info('engine inspection skipped: %s', inspection.get('reason'))

        options: dict[str, Any] = {'workspace_mb': workspace_mb, 'dla_core': dla_core, 'timing_cache': timing_cache,
                                   **(command_options or {})}
        command = rebuild_command or engine_cache.build_command(onnx_p, ep, precision, **options)
        sidecar = engine_cache.make_sidecar(
            fields, model_metadata=meta, fp32_layers=layer_names, rebuild_command=command,
            extra={'onnx_path': os.fspath(onnx_p), 'num_layers': network.num_layers,
                   'strongly_typed': plan.strongly_typed, 'precision_plan': plan.how,
                   'fp32_layers_pinned_by': ('casts' if plan.strongly_typed else
                                             'precision' if pinned_count else 'none'),
                   'fp32_inspection': inspection, 'gpu': gpu_id.describe(),
                   'build_seconds': round(build_s, 3)})
        sp = engine_cache.write_engine(ep, engine, sidecar)
    result = BuildResult(engine_path=ep, sidecar_path=sp, precision=precision, strongly_typed=plan.strongly_typed,
                         trt_version=version, cache_key=sidecar['key'], num_layers=network.num_layers,
                         fp32_layers=tuple(layer_names), parse_seconds=parse_s, build_seconds=build_s,
                         engine_bytes=len(engine), builder_flags=tuple(flags), shapes=shapes,
                         inspection=inspection)
    log.info('%s', result.summary())
    return result


def _reuse(ep: Path, key: str) -> BuildResult | None:
    """The engine at ``ep`` if its sidecar has exactly ``key`` and the engine bytes match it."""
    try:
        doc = engine_cache.check_engine(ep)
    except EngineError:
        return None
    if doc.get('key') != key:
        return None
    f = doc['fields']
    return BuildResult(engine_path=ep, sidecar_path=engine_cache.sidecar_path(ep), precision=f['precision'],
                       strongly_typed=bool(doc.get('strongly_typed')), trt_version=f['trt_version'], cache_key=key,
                       num_layers=int(doc.get('num_layers', 0)), fp32_layers=tuple(doc.get('fp32_layers', ())),
                       parse_seconds=0.0, build_seconds=0.0, engine_bytes=int(doc.get('engine_bytes', 0)),
                       builder_flags=tuple(f['builder_flags']), shapes=dict(f['shapes']),
                       inspection=dict(doc.get('fp32_inspection', {})), reused=True)

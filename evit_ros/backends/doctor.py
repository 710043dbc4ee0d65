"""What this machine can run, and why not: the facts behind ``evit-ros doctor``.

The first thing to run after installing on a vehicle: Python, numpy, OpenCV; ROS distro, rclpy and RMW
(located, never imported: only the node's room imports ROS); ONNX Runtime; PyTorch; TensorRT and the build
path its version takes (:func:`evit_ros.export.tensorrt_precision.plan_precision`); cuda-python and whether the
driver is usable; the GPU identity the engine cache keys on; for each backend whether it is usable here; and,
for a node configuration, the backend it would pick and every engine/ONNX file it would load, with whether the
engine's cache key matches this device.

Every probe is guarded: a half-installed stack (TensorRT without a driver, cuda-python of the wrong major, an
onnxruntime that fails to import) is reported with its reason, never raised. :func:`collect` returns plain
JSON-ready data; :func:`usable` says whether the configured backend can run (the CLI's exit code).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evit_ros import contract
from evit_ros.config import NodeConfig

log = logging.getLogger(__name__)
BACKENDS = ('tensorrt', 'onnxruntime', 'torch')
# the RMW each supported distro uses when RMW_IMPLEMENTATION is unset
DEFAULT_RMW = {'humble': 'rmw_fastrtps_cpp', 'jazzy': 'rmw_fastrtps_cpp', 'kilted': 'rmw_fastrtps_cpp'}


def _guard(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``, or ``{'error': ...}`` whatever it raises (a broken install must not stop the report)."""
    try:
        return fn()
    except Exception as exc:   # noqa: BLE001 - the point of doctor: report any failure, never raise it
        return {'error': _describe(exc)}


def _describe(exc: BaseException) -> str:
    text = ' '.join(str(exc).split())
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def _dist_version(*names: str) -> str:
    from importlib import metadata
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return ''


# -- the sections ------------------------------------------------------------------------------

def python_info() -> dict[str, Any]:
    out: dict[str, Any] = {'version': platform.python_version(), 'executable': sys.executable,
                           'platform': platform.platform()}
    for key, module in (('numpy', 'numpy'), ('opencv', 'cv2')):
        try:
            out[key] = str(importlib.import_module(module).__version__)
        except Exception as exc:   # noqa: BLE001
            out[key] = None
            out[f'{key}_error'] = _describe(exc)
    return out


def ros_info() -> dict[str, Any]:
    """ROS distro, rclpy and RMW, found by location and metadata: rclpy is not imported here."""
    distro = os.environ.get('ROS_DISTRO', '')
    try:
        spec = importlib.util.find_spec('rclpy')
    except (ImportError, ValueError):
        spec = None
    location = str(spec.origin or next(iter(spec.submodule_search_locations or []), '')) if spec else ''
    version = _dist_version('rclpy')
    if location and not version:   # an apt/colcon install: the version is in the package's package.xml
        m = re.search(r'(.*)/lib/python[\d.]+/(?:site|dist)-packages/', location)
        xml = Path(m.group(1)) / 'share' / 'rclpy' / 'package.xml' if m else None
        if xml is not None and xml.is_file():
            found = re.search(r'<version>([^<]+)</version>', xml.read_text(errors='ignore'))
            version = found.group(1) if found else ''
    if not distro:
        m = re.search(r'/opt/ros/(\w+)/', location)
        distro = m.group(1) if m else ''
    if not distro and location:
        from importlib import metadata
        for dist in metadata.distributions():
            m = re.fullmatch(r'ros-(\w+)-rclpy', str(dist.metadata['Name'] or ''))
            if m:
                distro = m.group(1)
                break
    rmw = os.environ.get('RMW_IMPLEMENTATION', '')
    rmw_source = 'RMW_IMPLEMENTATION' if rmw else 'the distro default'
    if not rmw:
        rmw = DEFAULT_RMW.get(distro, '')
    out = {'distro': distro or None, 'rclpy': version or None, 'rclpy_location': location or None,
           'rmw': rmw or None, 'rmw_source': rmw_source, 'domain_id': os.environ.get('ROS_DOMAIN_ID')}
    if not location:
        out['reason'] = ('rclpy not found: source the ROS 2 setup (e.g. `source /opt/ros/humble/setup.bash`); the '
                         'CLI tools other than the node work without ROS')
    return out


def onnxruntime_info() -> dict[str, Any]:
    try:
        import onnxruntime as ort
        providers = list(ort.get_available_providers())
    except Exception as exc:   # noqa: BLE001 - a broken wheel raises more than ImportError
        return {'installed': False, 'version': _dist_version('onnxruntime', 'onnxruntime-gpu') or None,
                'error': _describe(exc)}
    return {'installed': True, 'version': str(ort.__version__), 'providers': providers}


def torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        return {'installed': False, 'reason': f'PyTorch is not installed ({exc}; needed only to export and for '
                                              'backend.type=torch: a prebuilt engine or ONNX runs without it)'}
    try:
        out: dict[str, Any] = {'installed': True, 'version': str(torch.__version__),
                               'cuda_build': torch.version.cuda, 'cuda': bool(torch.cuda.is_available())}
        if out['cuda']:
            out['device'] = torch.cuda.get_device_name(0)
        return out
    except Exception as exc:   # noqa: BLE001
        return {'installed': False, 'error': _describe(exc)}


def cuda_info() -> dict[str, Any]:
    from evit_ros.device import cuda_runtime
    version, module = cuda_runtime.bindings()
    count, why = cuda_runtime.device_count()
    out: dict[str, Any] = {'cuda_python': version or None, 'module': module or None, 'devices': count,
                           'driver_usable': count > 0}
    if cuda_runtime.cudart is not None:
        for key, name in (('runtime_version', 'cudaRuntimeGetVersion'), ('driver_version', 'cudaDriverGetVersion')):
            try:
                res = getattr(cuda_runtime.cudart, name)()
                if res[0] == cuda_runtime.cudart.cudaError_t.cudaSuccess and int(res[1]):
                    v = int(res[1])
                    out[key] = f'{v // 1000}.{v % 1000 // 10}'
            except Exception:   # noqa: BLE001, S110 - old releases raise without a driver; the reason is below
                pass
    if count < 1:
        out['reason'] = why
    runtime, driver = out.get('runtime_version'), out.get('driver_version')
    if runtime and driver and int(driver.split('.')[0]) < int(runtime.split('.')[0]):
        out['reason'] = (f'cuda-python {version} is built for CUDA {runtime} but the driver supports CUDA {driver}: '
                         f'install cuda-python {driver.split(".")[0]}.x (JetPack 6: "cuda-python>=12.2,<12.3"); '
                         f'{out.get("reason", "")}').rstrip('; ')
    return out


def gpu_info() -> dict[str, Any]:
    """The identity the engine cache keys on (``evit_ros.device.detect``), or why there is none."""
    from evit_ros.device import cuda_runtime
    from evit_ros.device.detect import detect_gpu
    gpu = detect_gpu()
    out: dict[str, Any] = {'name': gpu.name, 'compute_capability': gpu.compute_capability, 'sm_count': gpu.sm_count,
                           'memory_mb': gpu.total_memory_mb, 'board': gpu.board, 'found': gpu.name != 'none'}
    if gpu.name == 'none':
        out['reason'] = f'no GPU identity: {cuda_runtime.device_count()[1] or "no CUDA device"}; no nvidia-smi, no ' \
                        'Jetson board model'
    elif not gpu.sm_count:
        out['reason'] = 'identity from nvidia-smi or the Jetson board only (no usable cuda-python): SM count unknown'
    return out


def tensorrt_info(devices: int) -> dict[str, Any]:
    from evit_ros.errors import EvitError
    from evit_ros.export.tensorrt_build import import_tensorrt
    from evit_ros.export.tensorrt_precision import plan_precision, strong_typing, trt_version
    try:
        trt = import_tensorrt()
    except Exception as exc:   # noqa: BLE001 - TensorRT without libnvinfer may raise OSError, not ImportError
        return {'installed': False, 'error': _describe(exc)}
    out: dict[str, Any] = {'installed': True, 'module': getattr(trt, '__name__', 'tensorrt'),
                           'version': trt_version(trt)}
    try:   # 'always' (>= 11, RTX), 'flag' (STRONGLY_TYPED opts in: 9/10), 'never' (8.6)
        out['strong_typing'] = strong_typing(trt)
    except Exception as exc:   # noqa: BLE001
        out['strong_typing'] = f'unknown: {_describe(exc)}'
    plans: dict[str, str] = {}
    for label, precision, qdq in (('fp32', 'fp32', False), ('fp16', 'fp16', False), ('int8_qdq', 'int8', True),
                                  ('int8_calibrated', 'int8', False)):
        try:
            plan = plan_precision(trt, precision, mixed=False, qdq=qdq)
            plans[label] = f'{"strongly" if plan.strongly_typed else "weakly"} typed: {plan.how}'
            if label == 'fp16':
                out['strongly_typed'] = plan.strongly_typed
            if label == 'int8_calibrated':
                out['implicit_int8'] = plan.implicit_int8
        except EvitError as exc:
            plans[label] = f'not buildable: {exc}'
            if label == 'int8_calibrated':
                out['implicit_int8'] = False
        except Exception as exc:   # noqa: BLE001 - a TensorRT the plan does not know
            plans[label] = f'unknown: {_describe(exc)}'
    out['build_paths'] = plans
    if devices > 0:
        try:
            out['dla_cores'] = int(trt.Runtime(trt.Logger(trt.Logger.WARNING)).num_DLA_cores)
        except Exception as exc:   # noqa: BLE001
            out['dla_cores'] = None
            out['dla_error'] = _describe(exc)
    else:
        out['dla_cores'] = None
        out['dla_reason'] = 'no usable CUDA device to ask'
    return out


def backends_info(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{backend: {usable, reason}}`` on this machine, whatever the configuration."""
    out: dict[str, dict[str, Any]] = {}

    def trt() -> dict[str, Any]:
        from evit_ros.backends.tensorrt_backend import tensorrt_available
        ok, why = tensorrt_available()
        return {'usable': bool(ok), 'reason': why}
    res = _guard(trt)
    out['tensorrt'] = res if 'usable' in res else {'usable': False, 'reason': res['error']}
    ort = report['onnxruntime']
    if ort.get('installed'):
        out['onnxruntime'] = {'usable': True, 'reason': f'onnxruntime {ort["version"]}: {", ".join(ort["providers"])}'}
    else:
        out['onnxruntime'] = {'usable': False, 'reason': ort.get('error', 'onnxruntime is not installed')}
    th = report['torch']
    if th.get('installed'):
        where = f'CUDA ({th.get("device")})' if th.get('cuda') else 'CPU'
        out['torch'] = {'usable': True, 'reason': f'torch {th["version"]} on {where}'}
    else:
        out['torch'] = {'usable': False, 'reason': th.get('error') or th.get('reason', 'PyTorch is not installed')}
    return out


def _choose(cfg: NodeConfig, backends: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The backend the node would use: ``backend.type``, or what ``auto`` picks (as create_backend does)."""
    if cfg.backend.type != 'auto':
        return cfg.backend.type, 'backend.type'
    try:
        from evit_ros.backends import choose_auto
        return choose_auto(cfg.backend)
    except Exception as exc:   # noqa: BLE001 - e.g. an onnxruntime that raises at import
        if cfg.backend.engine_path and backends['tensorrt']['usable']:
            return 'tensorrt', 'auto'
        kind = 'onnxruntime' if backends['onnxruntime']['usable'] else 'torch'
        return kind, f'auto ({_describe(exc)})'


def engines_info(cfg: NodeConfig, kind: str, head: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file the node would load for backend ``kind``, whether it exists, and for an engine whether its
    cache key matches this device."""
    b = cfg.backend
    entries: list[dict[str, Any]] = []
    if b.engine_path or kind == 'tensorrt':   # a configured engine is shown even when auto does not pick it
        entries.append({**_guard(lambda: _engine_entry(cfg, report)), 'used': kind == 'tensorrt'})
    if b.onnx_path:
        entries.append({**_guard(lambda: _onnx_entry(cfg, head)), 'used': kind in ('tensorrt', 'onnxruntime')})
    if kind == 'torch' or (kind == 'onnxruntime' and not b.onnx_path):
        entries.append({**_guard(lambda: _checkpoint_entries(cfg, kind, head)), 'used': True})
    return entries


def _engine_entry(cfg: NodeConfig, report: dict[str, Any]) -> dict[str, Any]:
    from evit_ros.device.identity import GpuIdentity
    from evit_ros.errors import EvitError
    from evit_ros.export import engine_cache
    b = cfg.backend
    entry: dict[str, Any] = {'role': 'engine', 'path': b.engine_path, 'precision': b.precision}
    if not b.engine_path:
        return {**entry, 'exists': False, 'cache_key_matches': False,
                'reason': 'backend.type=tensorrt needs backend.engine_path'}
    path = Path(b.engine_path).expanduser()
    entry['exists'] = path.is_file()
    if not entry['exists']:
        how = 'the node builds it from backend.onnx_path at start' if b.onnx_path else \
            'build it on this machine with `evit-ros build-engine`'
        return {**entry, 'cache_key_matches': False, 'reason': f'{path} does not exist; {how}'}
    try:
        fields = engine_cache.read_sidecar(path)['fields']
        entry['built_for'] = {k: fields.get(k) for k in ('trt_version', 'gpu_name', 'compute_capability',
                                                          'gpu_sm_count', 'gpu_memory_mb', 'board', 'precision')}
    except EvitError as exc:
        return {**entry, 'cache_key_matches': False, 'reason': str(exc)}
    trt = report['tensorrt']
    g = report['gpu']
    gpu = GpuIdentity(g['name'], g['compute_capability'], g['sm_count'], g['memory_mb'], g['board']) \
        if g.get('found') and g.get('sm_count') else None
    version = trt.get('version') if trt.get('installed') else None
    try:
        engine_cache.check_engine(path, b.onnx_path or None, trt_version=version, gpu=gpu, precision=b.precision)
    except EvitError as exc:
        return {**entry, 'cache_key_matches': False, 'reason': str(exc)}
    missing = [what for what, have in (('TensorRT', version), ('the GPU identity', gpu)) if not have]
    if missing:
        return {**entry, 'cache_key_matches': None,
                'reason': f'sidecar consistent, but {" and ".join(missing)} of this machine unknown: cannot tell '
                          'whether the engine is for this device'}
    return {**entry, 'cache_key_matches': True, 'reason': f'built for this device (TensorRT {version}, {g["name"]})'}


def _onnx_entry(cfg: NodeConfig, head: str) -> dict[str, Any]:
    from evit_ros.backends import check_onnx_matches
    from evit_ros.errors import EvitError
    path = Path(cfg.backend.onnx_path).expanduser()
    entry: dict[str, Any] = {'role': 'onnx', 'path': str(path), 'exists': path.is_file()}
    if not entry['exists']:
        return {**entry, 'reason': f'{path} does not exist; export it with `evit-ros export`'}
    try:
        check_onnx_matches(path, cfg.model, cfg.input, head)
    except EvitError as exc:
        return {**entry, 'matches_config': False, 'reason': str(exc)}
    return {**entry, 'matches_config': True, 'reason': 'matches model, input size and head'}


def _checkpoint_entries(cfg: NodeConfig, kind: str, head: str) -> dict[str, Any]:
    from evit_ros.backends import auto_onnx_path, node_auto_batch, resolve_checkpoint
    from evit_ros.errors import EvitError
    try:
        ckpt = resolve_checkpoint(cfg.model, log)
        path = auto_onnx_path(cfg.model, cfg.input, head, checkpoint=ckpt,
                              max_batch=node_auto_batch(len(cfg.cameras)))
    except EvitError as exc:
        return {'role': 'checkpoint', 'path': cfg.model.checkpoint or None, 'exists': False, 'reason': str(exc)}
    except ImportError as exc:   # the checkpoint search lives with the model code, which needs PyTorch
        return {'role': 'auto-onnx' if kind == 'onnxruntime' else 'checkpoint', 'path': None, 'exists': False,
                'reason': f'backend.onnx_path is empty, and finding the checkpoint to export needs PyTorch ({exc})'}
    if kind == 'torch':
        return {'role': 'checkpoint', 'path': ckpt, 'exists': True, 'reason': 'the torch backend loads it'}
    exists = path.is_file()
    why = 'exported earlier' if exists else 'not exported yet: the node exports it at start (needs PyTorch and onnx)'
    return {'role': 'auto-onnx', 'path': str(path), 'exists': exists, 'checkpoint': ckpt, 'reason': why}


# -- the whole report ----------------------------------------------------------------------------

def collect(cfg: NodeConfig | None = None, *, head: str = contract.NODE_HEAD, params_file: str | None = None
            ) -> dict[str, Any]:
    """The report (JSON-ready). ``cfg``: the node configuration (``None``: the defaults, backend ``auto``);
    ``head``: the outputs the node asks for (default the node's, ``contract.NODE_HEAD``; the files depend on it)."""
    cfg = cfg or NodeConfig()
    report: dict[str, Any] = {'python': _guard(python_info), 'ros': _guard(ros_info),
                              'onnxruntime': _guard(onnxruntime_info), 'torch': _guard(torch_info),
                              'cuda': _guard(cuda_info), 'gpu': _guard(gpu_info)}
    devices = int(report['cuda'].get('devices') or 0)
    report['tensorrt'] = _guard(lambda: tensorrt_info(devices))
    if 'error' in report['gpu']:
        report['gpu'].update(found=False, name='none', compute_capability='none', sm_count=0, memory_mb=0, board='')
    report['backends'] = backends_info(report)
    kind, why = _choose(cfg, report['backends'])
    report['config'] = {'params_file': params_file, 'backend_type': cfg.backend.type, 'backend': kind,
                        'why': why, 'engine_path': cfg.backend.engine_path or None,
                        'onnx_path': cfg.backend.onnx_path or None, 'precision': cfg.backend.precision}
    report['engines'] = engines_info(cfg, kind, head, report)
    ok, reason = usable(report)
    report['verdict'] = {'usable': ok, 'reason': reason}
    return report


def usable(report: dict[str, Any]) -> tuple[bool, str]:
    """(the configured backend can run here, why): the backend is usable and its files are there or made at start."""
    kind = report['config']['backend']
    state = report['backends'].get(kind, {'usable': False, 'reason': f'unknown backend {kind!r}'})
    if not state['usable']:
        return False, f'backend {kind} is not usable: {state["reason"]}'
    onnx_given = bool(report['config'].get('onnx_path'))
    for entry in report['engines']:
        if not entry.get('used'):
            continue
        if 'error' in entry:
            return False, f'checking the files failed: {entry["error"]}'
        if entry.get('role') == 'engine' and entry.get('cache_key_matches') is False and not onnx_given:
            return False, f'the engine cannot be used: {entry["reason"]}'
        if entry.get('role') == 'onnx' and (not entry.get('exists') or entry.get('matches_config') is False):
            return False, entry['reason']
        if entry.get('role') == 'checkpoint' and not entry.get('exists'):
            return False, entry['reason']
        if entry.get('role') == 'auto-onnx' and not entry.get('exists') and not report['backends']['torch']['usable']:
            return False, (f'{entry["path"]} is not exported and PyTorch is missing to export it: export the ONNX '
                           'on a PC (`evit-ros export`) and set backend.onnx_path')
    return True, f'backend {kind} is usable: {state["reason"]}'


def render(report: dict[str, Any]) -> str:
    """The report as indented text, one fact a line (what the CLI prints)."""
    lines: list[str] = []

    def walk(value: Any, indent: int, key: str) -> None:
        pad = '  ' * indent
        label = f'{key}: ' if key else '- '
        if isinstance(value, dict):
            lines.append(f'{pad}{key}:' if key else f'{pad}-')
            for k, v in value.items():
                walk(v, indent + 1, str(k))
        elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            lines.append(f'{pad}{key}:')
            for v in value:
                walk(v, indent + 1, '')
        elif isinstance(value, list):
            lines.append(f'{pad}{label}{", ".join(map(str, value)) if value else "(none)"}')
        else:
            lines.append(f'{pad}{label}{value}')
    for section, value in report.items():
        walk(value, 0, section)
    return '\n'.join(lines)


__all__ = ['BACKENDS', 'collect', 'render', 'usable']

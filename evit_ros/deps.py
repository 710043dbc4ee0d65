"""Optional runtime modules: who needs which, and how to install it (for one-line startup errors).

``rosdep`` installs what ``package.xml`` declares; a backend's runtime may still be missing on a vehicle
(PyTorch only comes from NVIDIA's Jetson wheel, TensorRT from JetPack). Every lazy import of such a module
goes through :func:`require`, so a missing one is a :class:`~evit_ros.errors.BackendUnavailableError`
that names the module, what needs it and the install line, never a bare ``ModuleNotFoundError``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from evit_ros.errors import BackendUnavailableError

INSTALL: dict[str, str] = {
    'torch': 'pip install torch (Jetson: NVIDIA\'s PyTorch wheel for your JetPack; only needed to export, '
             'or for backend.type=torch)',
    'onnx': 'pip install onnx (or rosdep key python3-onnx-pip); only needed to export or build engines',
    'onnxruntime': 'rosdep install --from-paths src --ignore-src (key python3-onnxruntime-pip) or '
                   'pip install onnxruntime (Jetson GPU: onnxruntime-gpu from jetson-ai-lab)',
    'tensorrt': 'TensorRT ships with JetPack (apt install python3-libnvinfer); on x86 pip install tensorrt',
    'cuda': 'rosdep key python3-cuda-python-pip (config/rosdep.yaml), or pip install "cuda-python>=12.2,<12.3" '
            '(every JetPack 6.x; JetPack 7: "cuda-python>=13,<14")',
    'cv2': 'apt install python3-opencv (rosdep key python3-opencv)',
    'yaml': 'apt install python3-yaml (rosdep key python3-yaml)',
}


def top_module(name: str | None) -> str:
    return (name or '').split('.')[0]


def missing_module_message(module: str, needed_by: str) -> str:
    """'Python module X is not installed; <needed_by> needs it. Install: ...' (one line)."""
    top = top_module(module) or module
    how = INSTALL.get(top, f'pip install {top}')
    return f'Python module {top!r} is not installed; {needed_by} needs it. Install: {how}'


def require(module: str, needed_by: str) -> ModuleType:
    """``importlib.import_module(module)`` or BackendUnavailableError naming the module, the user and the fix."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError(missing_module_message(exc.name or module, needed_by)) from exc


def missing_module_error(exc: ModuleNotFoundError, needed_by: str) -> BackendUnavailableError:
    """Wrap a ModuleNotFoundError raised deeper down (e.g. inside the exporter) into the one-line error."""
    return BackendUnavailableError(missing_module_message(exc.name or str(exc), needed_by))


__all__ = ['INSTALL', 'missing_module_error', 'missing_module_message', 'require', 'top_module']

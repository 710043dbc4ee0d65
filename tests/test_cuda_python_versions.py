"""The CUDA wrapper against the real cuda-python 12.2, 12.6, 12.9, 13.0 and 13.4 on this GPU-less machine.

Each release runs in its own interpreter (``tests/cuda_compat_support.py``), installed by ``make
cuda-bindings``. Without a driver, 12.2 and 12.6 raise ``RuntimeError('Function "cuInit" not found')`` where
12.9 and 13.x return ``cudaErrorInsufficientDriver``: every public call of
:mod:`evit_ros.device.cuda_runtime` must turn both into a ``BackendError`` that names the missing driver, so
the TensorRT backend's capture fallback, ``close()`` and release paths catch it.
"""
from __future__ import annotations

import json

import cuda_compat_support as compat
import pytest

VERSIONS = compat.versions()

# every public call of the wrapper, with handles of the release's own types (NULL) where one is needed
_PROBE = r'''
import json
import numpy as np
from evit_ros.device import cuda_runtime as c
from evit_ros.errors import BackendError
rt = c.cudart
out = {'module': rt.__name__, 'file': rt.__file__, 'bindings': list(c.bindings()), 'calls': {}}
try:
    from cuda import cudart as _old
    out['cuda.cudart'] = _old.__name__
except ImportError:
    out['cuda.cudart'] = None
try:
    from cuda.bindings import runtime as _new
    out['cuda.bindings.runtime'] = _new.__name__
except ImportError:
    out['cuda.bindings.runtime'] = None

def stream():
    s = object.__new__(c.Stream)
    s._stream, s.handle = rt.cudaStream_t(), 0
    return s

def buffer(cls):
    b = object.__new__(cls)
    b.ptr, b.nbytes, b.dtype, b.array = 4096, 16, np.dtype('uint8'), np.zeros(16, np.uint8)
    return b

def graph():
    return c.CudaGraph(rt.cudaGraph_t(), rt.cudaGraphExec_t())

def event():
    e = object.__new__(c.Event)
    e._event = rt.cudaEvent_t()
    return e

host = np.zeros(16, np.uint8)
calls = {
    'device_count': c.device_count,
    'gpu_identity': c.gpu_identity,
    'set_device': lambda: c.set_device(0),
    'DeviceBuffer': lambda: c.DeviceBuffer(16),
    'DeviceBuffer.free': lambda: buffer(c.DeviceBuffer).free(),
    'PinnedBuffer': lambda: c.PinnedBuffer((4,), 'float32'),
    'PinnedBuffer.free': lambda: buffer(c.PinnedBuffer).free(),
    'Stream': c.Stream,
    'Stream.synchronize': lambda: stream().synchronize(),
    'Stream.copy_htod': lambda: stream().copy_htod(4096, host, 16),
    'Stream.copy_dtoh': lambda: stream().copy_dtoh(host, 4096, 16),
    'Stream.begin_capture': lambda: stream().begin_capture(),
    'Stream.end_capture': lambda: stream().end_capture(),
    'Stream.destroy': lambda: stream().destroy(),
    'CudaGraph.launch': lambda: graph().launch(stream()),
    'CudaGraph.destroy': lambda: graph().destroy(),
    'Event': c.Event,
    'Event.record': lambda: event().record(stream()),
    'Event.synchronize': lambda: event().synchronize(),
    'Event.elapsed_ms': lambda: event().elapsed_ms(event()),
    'Event.destroy': lambda: event().destroy(),
}
for name, fn in calls.items():
    try:
        out['calls'][name] = ['ok', repr(fn())]
    except Exception as exc:
        out['calls'][name] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
'''


def _probe(version: str) -> dict:
    proc = compat.run_under(version, _PROBE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize('version', VERSIONS)
def test_the_release_imports_from_its_own_folder_with_its_module_layout(version: str) -> None:
    """12.2: only ``cuda.cudart``; 12.6 to 12.9: ``cuda.bindings.runtime`` plus the old alias; 13.x: only the new."""
    out = _probe(version)
    assert out['file'].startswith(str(compat.target(version))), out['file']   # not the venv's cuda-python
    assert out['bindings'][0] == version
    major, minor = (int(p) for p in version.split('.')[:2])
    if (major, minor) < (12, 6):
        assert out['module'] == 'cuda.cudart' and out['cuda.bindings.runtime'] is None
    else:
        assert out['module'] == 'cuda.bindings.runtime' == out['bindings'][1]
        assert (out['cuda.cudart'] is not None) == (major == 12), out


@pytest.mark.parametrize('version', VERSIONS)
def test_every_public_call_without_a_driver_is_a_backend_error_naming_the_driver(version: str) -> None:
    out = _probe(version)
    calls = out['calls']
    count = calls.pop('device_count')
    assert count[0] == 'ok' and count[1].startswith('(0, ') and 'driver' in count[1], count
    assert set(calls) >= {'DeviceBuffer', 'PinnedBuffer', 'Stream', 'Event', 'CudaGraph.launch'}
    for name, (kind, message) in calls.items():
        assert kind == 'BackendError', f'cuda-python {version}: {name} raised {kind}: {message}'
        assert 'driver' in message and 'install the NVIDIA driver' in message, f'{name}: {message}'


_BACKEND = r'''
import logging
from evit_ros.backends.tensorrt_backend import TensorRTBackend
from evit_ros.device import cuda_runtime as c
from evit_ros.inference import ModelIO, TensorSpec
logging.basicConfig(level=logging.WARNING, format='%(message)s')
rt = c.cudart

class Context:            # a TensorRT context whose own calls succeed: only CUDA fails (no driver)
    def execute_async_v3(self, handle):
        return True

be = TensorRTBackend('x.engine', cuda_graph=True)
stream = object.__new__(c.Stream)
stream._stream, stream.handle = rt.cudaStream_t(), 0
be._stream = stream
be._context = Context()
be._io = ModelIO('m', 'labels', 'uint8-nhwc', TensorSpec('images', (1, 2, 2, 3), 'uint8'), (), 1)
orig = stream.synchronize
stream.synchronize = lambda: None    # the run before capture "succeeded": capture itself meets the missing driver
graph = be._capture(1)
print('capture fallback:', graph, be.cuda_graph)
stream.synchronize = orig
buf = object.__new__(c.DeviceBuffer)
buf.ptr, buf.nbytes = 4096, 16
be._d_in = buf
be._graphs[1] = c.CudaGraph(rt.cudaGraph_t(), rt.cudaGraphExec_t())
be.close()
print('closed:', be._stream is None, buf.ptr)
'''


@pytest.mark.parametrize('version', VERSIONS)
def test_tensorrt_backend_capture_fallback_and_close_survive_a_missing_driver(version: str) -> None:
    """The RuntimeError of 12.2/12.6 used to escape the capture fallback and close() (issue 21, item 1)."""
    proc = compat.run_under(version, _BACKEND)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'capture fallback: None False' in proc.stdout
    assert 'closed: True 0' in proc.stdout
    assert 'CUDA graph capture failed' in proc.stderr and 'releasing a buffer failed' in proc.stderr
    assert 'Traceback' not in proc.stderr

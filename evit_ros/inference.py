"""One interface for every inference runtime (TensorRT, ONNX Runtime, PyTorch).

It lives below both sides: :mod:`evit_ros.pipeline` drives any backend through it without importing a
runtime, and :mod:`evit_ros.backends` implements it.

Lifecycle (as Polygraphy's runners): construct (cheap, no runtime import) -> ``load()`` -> ``warmup()``
-> ``infer()`` many times -> ``close()``; or use the backend as a context manager.

``infer`` takes a batch of camera-ordered RGB frames already at the graph's input size (uint8
``[N, H, W, 3]`` for ``uint8-nhwc`` graphs, float32 ``[N, 3, H, W]`` for ``float-nchw``) and returns an
:class:`InferenceResult` whose fields follow the model's head (see :mod:`evit_ros.contract`).

**Returned arrays may be reused by the next ``infer`` call** (backends keep preallocated output
buffers to avoid per-frame allocation): copy anything you keep beyond the next call.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar

import numpy as np

from evit_ros.errors import BackendError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``-1`` for a dynamic dimension) and numpy dtype name of one graph tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ModelIO:
    """What a loaded graph takes and returns, plus the model metadata it carries."""

    model_name: str
    head: str
    input_format: str
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    max_batch: int
    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the frames ``infer`` expects."""
        if self.input_format == 'uint8-nhwc':
            return int(self.input.shape[1]), int(self.input.shape[2])
        return int(self.input.shape[2]), int(self.input.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def static_batch(self) -> int:
        """The graph's fixed batch dimension, 0 when it is dynamic (a static graph is padded to it every run)."""
        n = self.input.shape[0] if self.input.shape else 0
        return int(n) if n > 0 else 0

    @property
    def run_batch(self) -> int:
        """The most frames one engine run takes: ``max_batch``, and no more than a static batch dimension."""
        most = max(1, int(self.max_batch))
        return min(most, self.static_batch) if self.static_batch else most


@dataclass
class InferenceResult:
    """Outputs of one batch. Fields the head does not produce are ``None``.

    ``labels``: ``[N, h, w]`` uint8 or int32 class ids; ``confidence``: ``[N, h, w]`` uint8 0..255;
    ``logits``: ``[N, C, h, w]`` float32. The arrays may be views of buffers reused by the next call.
    """

    labels: np.ndarray | None = None
    confidence: np.ndarray | None = None
    logits: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class InferenceBackend(abc.ABC):
    """Base class of the runtimes; see the module docstring for the lifecycle and buffer contract."""

    name: ClassVar[str] = 'base'

    def __init__(self) -> None:
        self._loaded = False

    # -- lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self) -> None:
        """Import the runtime, load the graph/engine, allocate buffers. Raises BackendError subclasses."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> InferenceResult:
        """Run one batch (see the module docstring for layouts). Raises BackendError on failure."""

    @property
    @abc.abstractmethod
    def io(self) -> ModelIO:
        """Input/output description of the loaded graph (valid after ``load``)."""

    def describe(self) -> dict[str, str]:
        """Key/values for logs and diagnostics: backend, device/providers, precision, engine path."""
        return {'backend': self.name}

    def warmup(self, iterations: int = 2) -> None:
        """Run a few batches of zeros so first-frame latency (allocation, autotuning) is paid at startup.

        A dynamic batch dimension is warmed at every size up to ``max_batch`` (at most 8): runtimes plan
        memory per shape, so the first batch of two cameras would otherwise be slow.
        """
        spec = self.io.input
        sizes = range(1, min(8, max(1, self.io.max_batch)) + 1) if spec.shape[0] < 0 else (spec.shape[0],)
        for n in sizes:
            dummy = np.zeros((n, *spec.shape[1:]), dtype=np.dtype(spec.dtype))
            for _ in range(max(0, iterations)):
                self.infer(dummy)

    def close(self) -> None:
        """Release runtime resources. Safe to call twice."""
        self._loaded = False

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise BackendError(f'{self.name} backend used before load(): call load() or use it as a context manager')

    def __enter__(self) -> InferenceBackend:
        self.load()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

"""PyTorch backend: the same :class:`~evit_ros.export.graph.DeployGraph` the exporter traces, run eagerly.

CPU or CUDA; on CUDA, ``precision='fp16'`` runs the network under autocast with the linear attention
kept in FP32 by the model itself, and uses channels_last. Always under ``torch.inference_mode``.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from evit_ros import contract
from evit_ros.contract import NODE_HEAD
from evit_ros.datasets import dataset_for_model
from evit_ros.errors import BackendError, BackendUnavailableError
from evit_ros.inference import InferenceBackend, InferenceResult, ModelIO, TensorSpec

log = logging.getLogger(__name__)

DEVICES = ('auto', 'cpu', 'cuda')


class TorchBackend(InferenceBackend):
    """An EfficientViT-Seg model from the zoo (with a checkpoint) wrapped in the deploy graph."""

    name = 'torch'

    def __init__(self, model_name: str, *, checkpoint: str | None, input_hw: tuple[int, int],
                 head: str = NODE_HEAD, device: str = 'auto', precision: str = 'fp32',
                 threads: int = 0, max_batch: int = 8, model: Any = None,
                 logger: logging.Logger | None = None) -> None:
        super().__init__()
        if device not in DEVICES:
            raise BackendError(f'torch device={device!r} is not valid; use one of: {", ".join(DEVICES)}')
        if head not in contract.HEADS:
            raise BackendError(f'head={head!r} is not valid; use one of: {", ".join(contract.HEADS)}')
        self.model_name = model_name
        self.checkpoint = checkpoint
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.head = head
        self.device_request = device
        self.precision = precision
        self.threads = int(threads)
        self.max_batch = int(max_batch)
        self._model = model
        self._log = logger or log
        self._graph: Any = None
        self._device = 'cpu'
        self._fp16 = False
        self._io: ModelIO | None = None
        self._out: dict[str, np.ndarray] = {}

    def load(self) -> None:
        if self._loaded:
            return
        from evit_ros.deps import require
        torch = require('torch', 'the PyTorch backend (backend.type=torch)')
        from evit_ros.export.graph import DeployGraph
        from evit_ros.model import create_model

        cuda = torch.cuda.is_available()
        if self.device_request == 'cuda' and not cuda:
            raise BackendUnavailableError('torch device=cuda requested but torch.cuda.is_available() is False; '
                                          'use device cpu or install a CUDA build of PyTorch')
        self._device = 'cuda' if cuda and self.device_request != 'cpu' else 'cpu'
        self._fp16 = self._device == 'cuda' and self.precision == 'fp16'
        if self.precision == 'int8':
            self._log.warning('torch backend has no int8 path; running %s', 'fp16' if self._fp16 else 'fp32')
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        net = self._model if self._model is not None else create_model(self.model_name, checkpoint=self.checkpoint)
        graph = DeployGraph(net, head=self.head, input_format='uint8-nhwc', model_hw=self.input_hw).eval()
        graph = graph.to(self._device)
        if self._device == 'cuda':
            graph = graph.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._graph = graph
        h, w = self.input_hw
        out_hw = (h // 8, w // 8) if self.head in ('logits', 'labels-lowres') else (h, w)
        ds = dataset_for_model(self.model_name)
        outputs: list[TensorSpec] = []
        for name in contract.HEAD_OUTPUTS[self.head]:
            if name == contract.LOGITS_NAME:
                outputs.append(TensorSpec(name, (-1, ds.num_classes, h // 8, w // 8), 'float32'))
            else:
                outputs.append(TensorSpec(name, (-1, *out_hw), 'uint8'))
        self._io = ModelIO(model_name=self.model_name, head=self.head, input_format='uint8-nhwc',
                           input=TensorSpec(contract.INPUT_NAME, (-1, h, w, 3), 'uint8'), outputs=tuple(outputs),
                           max_batch=self.max_batch, class_names=ds.class_names, class_colors=ds.colors)
        self._log.info('torch %s on %s (%s) for %s', torch.__version__, self._device,
                       'fp16 autocast, attention fp32' if self._fp16 else 'fp32', self.model_name)
        self._loaded = True

    @property
    def io(self) -> ModelIO:
        self._require_loaded()
        if self._io is None:  # pragma: no cover - set together with _loaded
            raise BackendError('torch backend has no model IO')
        return self._io

    def describe(self) -> dict[str, str]:
        return {'backend': self.name, 'device': self._device, 'precision': 'fp16' if self._fp16 else 'fp32',
                'model': self.model_name, 'checkpoint': self.checkpoint or ''}

    def _host(self, name: str, t: Any) -> np.ndarray:
        arr = t.detach().cpu().numpy()
        buf = self._out.get(name)
        if buf is None or buf.shape != arr.shape or buf.dtype != arr.dtype:
            buf = self._out[name] = np.empty_like(arr)
        np.copyto(buf, arr)
        return buf

    def infer(self, batch: np.ndarray) -> InferenceResult:
        self._require_loaded()
        import torch
        h, w = self.input_hw
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (h, w, 3) \
                or not 1 <= batch.shape[0] <= self.max_batch:
            raise BackendError(f'batch is {batch.dtype} {tuple(batch.shape)}; the torch backend takes uint8 '
                               f'[1..{self.max_batch}, {h}, {w}, 3] RGB')
        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device, non_blocking=True)
        try:
            with torch.inference_mode(), torch.autocast(device_type=self._device, dtype=torch.float16,
                                                        enabled=self._fp16):
                out = self._graph(x)
        except RuntimeError as exc:
            raise BackendError(f'torch inference failed: {exc}') from exc
        outs = out if isinstance(out, tuple) else (out,)
        res = InferenceResult()
        for name, t in zip(contract.HEAD_OUTPUTS[self.head], outs, strict=True):
            setattr(res, name, self._host(name, t))
        res.timings_ms = {'infer': (time.perf_counter() - t0) * 1e3}
        return res

    def close(self) -> None:
        self._graph = None
        self._out.clear()
        super().close()

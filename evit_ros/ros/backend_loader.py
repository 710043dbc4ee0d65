"""Loading the segmentation node's backend: create, load (or build) and warm up the engine of a NodeConfig.

Why a module of its own: configure's slow work and the errors it can end in are independent of the lifecycle
and of rclpy. Each failure says how to fix it: a missing module names who needs it and how to install it, and
a missing or unusable TensorRT engine comes with the exact commands that produce it on this machine. The
backend and export code log through Python ``logging``; :class:`RosLogHandler` forwards those records to the
node's ROS logger.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evit_ros.config import NodeConfig
from evit_ros.contract import NODE_HEAD
from evit_ros.deps import missing_module_error
from evit_ros.errors import EngineError, EvitError
from evit_ros.ros.prepare import prepare_files


class RosLogHandler(logging.Handler):
    """Forwards Python ``logging`` records of the backend/export code to the node's ROS logger."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(text)
            else:
                self.ros_logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)



def load_backend(cfg: NodeConfig, logger: logging.Logger) -> Any:
    """The loaded backend of ``cfg`` (warmed up unless ``backend.build_only``); ``logger`` receives its logging."""
    from evit_ros.backends import create_backend, node_auto_batch
    b = cfg.backend
    if b.type == 'tensorrt' and b.engine_path and not Path(b.engine_path).expanduser().is_file() \
            and not b.onnx_path:
        raise EngineError(f'backend.engine_path={b.engine_path!r} does not exist and backend.onnx_path is empty, '
                          f'so it cannot be built here. Build it on this machine with: {build_hint(cfg)}')
    backend = None
    try:
        # an export/build runs in a child process that a signal ends at once (the 2 s shutdown promise); an
        # automatic export takes every camera in one run (1..cameras, at most 8), and the batching policy
        # (evit_ros.pipeline.batching) then decides from measured costs how many frames a run takes
        max_batch = node_auto_batch(len(cfg.cameras))
        prepare_files(cfg, logger, head=NODE_HEAD, max_batch=max_batch)
        backend = create_backend(cfg.backend, model=cfg.model, input_cfg=cfg.input, head=NODE_HEAD,
                                 logger=logger, max_batch=max_batch)
        backend.load()
        if not cfg.backend.build_only:
            backend.warmup(2)
    except ModuleNotFoundError as exc:
        if backend is not None:
            backend.close()
        from evit_ros.backends import needed_by
        raise missing_module_error(exc, needed_by(getattr(backend, 'name', b.type), b)) from exc
    except EvitError as exc:
        if backend is not None:
            backend.close()
        if isinstance(exc, EngineError) and b.engine_path and 'build-engine' not in str(exc):
            raise type(exc)(f'{exc}; build the engine with: {build_hint(cfg)}') from exc
        raise
    return backend


def build_hint(cfg: NodeConfig) -> str:
    """The exact commands that produce ``backend.engine_path`` for this configuration."""
    from evit_ros.export.engine_cache import build_command
    b, i = cfg.backend, cfg.input
    build = build_command(b.onnx_path or f'{Path(b.engine_path).with_suffix(".onnx")}', b.engine_path, b.precision)
    if b.onnx_path:
        return build
    onnx = Path(b.engine_path).with_suffix('.onnx')
    from evit_ros.backends import export_command
    export = export_command(cfg.model, i, onnx, NODE_HEAD)
    return f'{export} && {build}'


__all__ = ['RosLogHandler', 'build_hint', 'load_backend']

"""The ROS 2 segmentation node ``evit_segmentation``: cameras in, masks, drivable area, grids and diagnostics out.

Threading: subscription callbacks only store the newest message in a one-slot mailbox per camera (a frame
replaced before the worker took it is counted as dropped), so callbacks never block and nothing queues
without bound. One worker thread takes every pending frame, decodes them, runs them through
:class:`~evit_ros.pipeline.Segmenter` as one batch and publishes the results. Live parameter changes are
validated in the set-parameters callback and handed to the worker, which applies them between batches.

Outputs (relative names, so namespaces and remaps work), all stamped with the input header:
``segmentation/<cam>/{mask, color_mask, overlay, confidence}`` and
``segmentation/<cam>/drivable/<group>/{mask, grid, boundary}`` (grid and boundary carry the input stamp and
``grid.frame_id``). An output is computed and published only while something subscribes to it.
``segmentation/<cam>/label_info`` (vision_msgs/LabelInfo, latched) names the class ids for Nav2's
semantic_segmentation_layer when vision_msgs is installed.

Lifecycle (``rclpy.lifecycle``): configure validates the parameters and loads/builds the engine, activate
subscribes the cameras and enables the publishers, deactivate unsubscribes and lets the worker publish the
frame it took before the publishers are disabled, cleanup releases the engine. ``lifecycle.autostart`` (default
true) runs configure + activate in the constructor, so a failure raises there as before.

Run: ``ros2 run evit_ros segmentation_node --ros-args --params-file config/evit_ros.yaml`` or
``python -m evit_ros.ros.segmentation_node --ros-args ...``.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import rclpy
import rclpy.executors
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PolygonStamped
from nav_msgs.msg import OccupancyGrid
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from evit_ros.config import CameraConfig, NodeConfig, from_flat
from evit_ros.datasets import dataset_for_model
from evit_ros.deps import missing_module_error, missing_module_message
from evit_ros.errors import ConfigError, EngineError, EvitError, FrameError
from evit_ros.heap import keep_frame_buffers, release_free_heap
from evit_ros.pipeline import ClassGroups, GroundProjector, Segmenter
from evit_ros.ros import conversions as conv
from evit_ros.ros.diagnostics import CameraStats, EngineStats, diagnostic_array, lifecycle_status
from evit_ros.ros.outputs import NODE_HEAD, OutputStage, pipeline_threads
from evit_ros.ros.params import ParameterGuard, all_specs, declare_all, declare_one, unknown_overrides
from evit_ros.ros.qos import InputSubscription, qos_profile
from evit_ros.ros.startup import SignalFlag, check_ros_args, exit_now, one_line

try:  # Jazzy and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

try:  # Jazzy: spin raises this when the context is shut down by a signal
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover - older rclpy
    class ExternalShutdownException(Exception):  # type: ignore[no-redef]
        """Placeholder where rclpy lacks it."""

NODE_NAME = 'evit_segmentation'
QOS_POLL_S = 0.5            # how often auto-QoS subscriptions look at the publishers of their topic
DRAIN_TIMEOUT_S = 30.0      # deactivate waits this long for the frame in flight to be published
# vision_msgs/LabelInfo as Nav2's semantic_segmentation_layer subscribes it: reliable, transient local, depth 1
LABEL_INFO_QOS = qos_profile('reliable', 1, transient_local=True)


class _RosLogHandler(logging.Handler):
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


class _Camera:
    """One camera: its mailbox, publishers, intrinsics, projector cache and statistics."""

    def __init__(self, cfg: CameraConfig, stats: CameraStats) -> None:
        self.cfg = cfg
        self.stats = stats
        self.pending: Any = None
        self.pubs: dict[str, Any] = {}
        self.group_pubs: dict[str, dict[str, Any]] = {}
        self.info: tuple[tuple[float, ...], int, int] | None = None
        self.projector: GroundProjector | None = None
        self.projector_key: Any = None
        self.label_info_pub: Any = None
        self.image_sub: InputSubscription | None = None
        self.info_sub: InputSubscription | None = None
        self.last_pixels = 0


class SegmentationNode(LifecycleNode):
    """See the module docstring. A managed (lifecycle) node; with ``lifecycle.autostart`` (default) it configures
    and activates itself in the constructor and raises :class:`~evit_ros.errors.EvitError` on bad config."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._log = self.get_logger()
        self._pylog = logging.getLogger(f'evit_ros.node.{id(self)}')
        self._pylog.propagate = False
        self._pylog.setLevel(logging.DEBUG)
        self._pylog.addHandler(_RosLogHandler(self._log))
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._update_lock = threading.Lock()
        self._pending_update: NodeConfig | None = None
        self._worker: threading.Thread | None = None
        self._accepting = False        # camera callbacks store frames only while active
        self._busy = False             # the worker is between taking frames and having published them
        self.backend: Any = None
        self.segmenter: Segmenter | None = None
        self.engine_stats: EngineStats | None = None
        self._outputs: OutputStage | None = None
        self.cameras: dict[str, _Camera] = {}
        self.build_only = False
        self.lifecycle_state = 'unconfigured'
        self.transition_error: BaseException | None = None   # why the last transition failed (None: it did not)
        self._guard: ParameterGuard | None = None
        self._qos_timer: Any = None
        self._warned_unknown = False
        self._label_info_off_logged = False
        self._label_info: tuple[Any, Any] | None = None   # (LabelInfo, VisionClass) once configured
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._guard_change_state_service()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if hasattr(self, 'add_post_set_parameters_callback'):   # Jazzy+; Humble applies in on-set
            self.add_post_set_parameters_callback(self._on_post_set_parameters)

        autostart = declare_one(self, 'lifecycle.autostart')
        try:
            declare_all(self)   # every parameter exists (and can be set) before configure
        except ConfigError as exc:
            if autostart:
                raise
            self._log.error(f'parameters: {one_line(exc)}; fix them (ros2 param set / params file) and configure')
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', QoSProfile(depth=10))
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics, clock=self._steady)
        if not autostart:
            self._log.info('lifecycle.autostart=false: unconfigured; waiting for configure and activate '
                           f'(ros2 lifecycle set {self.get_fully_qualified_name()} configure)')
            return
        self._autostart()

    def _autostart(self) -> None:
        """configure + activate at once (plain ``ros2 run``); a failure raises its original error."""
        from lifecycle_msgs.msg import Transition
        self._quiet_failures = True   # main() prints the one FATAL line
        try:
            for public, tid, reached in (('trigger_configure', Transition.TRANSITION_CONFIGURE, 'inactive'),
                                         ('trigger_activate', Transition.TRANSITION_ACTIVATE, 'active')):
                if self.build_only:
                    return
                try:
                    getattr(self, public)()
                except AttributeError:   # early Humble rclpy: trigger_* name a constant that does not exist
                    self._LifecycleNodeMixin__change_state(tid)
                # success is read from our own state: Humble's trigger_* return nothing
                if self.lifecycle_state != reached:
                    raise self.transition_error or EvitError(f'lifecycle transition {public[8:]} failed')
        finally:
            self._quiet_failures = False

    _quiet_failures = False

    def _guard_change_state_service(self) -> None:
        """rclpy raises out of the change_state service for a transition the current state does not have (e.g.
        activate while unconfigured), which would end the executor: answer success=false and log instead."""
        service = getattr(self, '_service_change_state', None)
        inner = getattr(service, 'callback', None)
        if inner is None:
            return

        def change_state(request: Any, response: Any) -> Any:
            try:
                return inner(request, response)
            except Exception as exc:  # noqa: BLE001 - rcl's "Transition is not registered"
                t = request.transition
                self._log.warning(f'lifecycle transition {t.label or t.id} refused in state {self.lifecycle_state}: '
                                  f'{one_line(exc)}')
                response.success = False
                return response
        service.callback = change_state

    # -- lifecycle transitions -------------------------------------------------------------------------
    def _transition(self, name: str, work: Any, success_state: str, failure_state: str) -> Any:
        """Run one transition: SUCCESS -> ``success_state``; any error -> FAILURE, the reason logged."""
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - a failing transition is reported, never a crash
            self.transition_error = exc
            self.lifecycle_state = failure_state
            if not self._quiet_failures:
                self._log.error(f'{name} failed: {_startup_error(exc)}')
            return TransitionCallbackReturn.FAILURE
        self.transition_error = None
        self.lifecycle_state = success_state
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: Any) -> Any:
        """Validate the parameters and load or build the engine (the slow work); create the publishers."""
        def work() -> None:
            try:
                self._configure()
            except BaseException:
                self._release()
                raise
        return self._transition('configure', work, 'inactive', 'unconfigured')

    def on_activate(self, state: Any) -> Any:
        """Enable the publishers, latch label_info, subscribe the cameras and start the worker."""
        def work() -> None:
            try:
                self._activate(state)
            except BaseException:
                self._deactivate(state)
                raise
        return self._transition('activate', work, 'active', 'inactive')

    def on_deactivate(self, state: Any) -> Any:
        """Unsubscribe, finish the frames already taken (no half-published frame), then disable the publishers."""
        return self._transition('deactivate', lambda: self._deactivate(state), 'inactive', 'active')

    def on_cleanup(self, state: Any) -> Any:
        """Release the engine (and its device memory), the publishers and the parameter guard."""
        return self._transition('cleanup', self._release, 'unconfigured', 'inactive')

    def on_shutdown(self, state: Any) -> Any:
        """From any primary state: deactivate and clean up what is there."""
        def work() -> None:
            if self.lifecycle_state == 'active':
                self._deactivate(state)
            self._release()
        return self._transition('shutdown', work, 'finalized', 'finalized')

    def on_error(self, state: Any) -> Any:
        """A transition raised past our handlers: release everything and go back to unconfigured."""
        self._log.error(f'lifecycle error while leaving {getattr(state, "label", state)}; releasing everything')
        try:
            self._deactivate(state)
            self._release()
        except Exception as exc:  # noqa: BLE001
            self._log.error(f'error processing failed: {type(exc).__name__}: {one_line(exc)}')
            return TransitionCallbackReturn.FAILURE
        self.lifecycle_state = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        flat = declare_all(self)
        if not self._warned_unknown:
            self._warned_unknown = True
            for name in unknown_overrides(self, flat):
                self._log.warning(f'parameter {name} from the params file/command line is not a parameter of this '
                                  'node (typo?); it is ignored')
        self.cfg = cfg = from_flat(flat)
        self.dataset = dataset_for_model(cfg.model.name)
        self._check_config(cfg)   # unknown class names / palette ids fail before loading
        self.backend = self._load_backend(cfg)
        if cfg.backend.build_only:
            self.build_only = True
            self._log.info('backend.build_only=true: the engine is ready; exiting without subscribing')
            return
        self.segmenter = Segmenter(self.backend, input_cfg=cfg.input, outputs=cfg.outputs, drivable=cfg.drivable,
                                   dataset=self.dataset)
        self.engine_stats = EngineStats(self.backend.describe())
        self._outputs = OutputStage(self.segmenter, self._stop)
        if self.segmenter.engine_confidence:
            self._log.warning(f'the engine computes full-size confidence every frame (head {self.backend.io.head}); '
                              f're-export with --head {NODE_HEAD} so it is computed only while subscribed')
        self._guard = ParameterGuard(flat, all_specs([c.name for c in cfg.cameras],
                                                     [g for g, _ in cfg.drivable.groups]),
                                     self._apply_config, check=self._check_config,
                                     post_set_supported=hasattr(self, 'add_post_set_parameters_callback'))
        out_qos = qos_profile(cfg.qos.output_reliability, cfg.qos.output_depth)
        self._label_info = label_info = self._label_info_types()
        cameras: dict[str, _Camera] = {}
        self.cameras = cameras
        for cam_cfg in cfg.cameras:
            cam = _Camera(cam_cfg, CameraStats(cam_cfg.name, cam_cfg.subscribed_topic, self.dataset.class_names))
            base = f'segmentation/{cam_cfg.name}/'
            pub = self.create_lifecycle_publisher
            cam.pubs = {'mask': pub(Image, base + 'mask', out_qos),
                        'color_mask': pub(Image, base + 'color_mask', out_qos),
                        'overlay': pub(Image, base + 'overlay', out_qos),
                        'confidence': pub(Image, base + 'confidence', out_qos)}
            for g, _ in cfg.drivable.groups:
                gb = f'{base}drivable/{g}/'
                cam.group_pubs[g] = {'mask': pub(Image, gb + 'mask', out_qos),
                                     'grid': pub(OccupancyGrid, gb + 'grid', out_qos),
                                     'boundary': pub(PolygonStamped, gb + 'boundary', out_qos)}
            if label_info is not None:
                cam.label_info_pub = pub(label_info[0], base + 'label_info', LABEL_INFO_QOS)
            cameras[cam_cfg.name] = cam

    def _label_info_types(self) -> tuple[Any, Any] | None:
        """(LabelInfo, VisionClass) from vision_msgs, or None (logged once: label_info is off and why)."""
        try:
            from vision_msgs.msg import LabelInfo, VisionClass
        except ImportError as exc:
            if not self._label_info_off_logged:
                self._label_info_off_logged = True
                self._log.info(f'segmentation/<cam>/label_info is off: vision_msgs cannot be imported ({exc}); '
                               'install it (apt install ros-$ROS_DISTRO-vision-msgs) for Nav2\'s '
                               'semantic_segmentation_layer')
            return None
        return LabelInfo, VisionClass

    def _activate(self, state: Any) -> None:
        if self.worker_alive():
            raise EvitError('the worker of the previous activation is still inside an inference; try again')
        if self.segmenter is None:
            raise EvitError('activate needs a configured engine (backend.build_only=true only builds it); '
                            'set backend.build_only=false, clean up and configure again')
        super().on_activate(state)   # enables every lifecycle publisher
        cfg = self.cfg
        stamp = self.get_clock().now().to_msg()
        for cam in self.cameras.values():
            if cam.label_info_pub is not None and self._label_info is not None:
                label_info, vision_class = self._label_info
                cam.label_info_pub.publish(conv.label_info(label_info, vision_class, self.dataset.class_names, stamp))
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        mode, depth = cfg.qos.input_reliability, cfg.qos.input_depth
        self._stop.clear()   # the same Event the output stage checks between cameras
        with self._cond:
            self._accepting = True
        for cam in self.cameras.values():
            cam_cfg = cam.cfg
            compressed = cam_cfg.transport == 'compressed'
            topic = cam_cfg.subscribed_topic   # <topic>/compressed for compressed transport
            cam.image_sub = InputSubscription(self, CompressedImage if compressed else Image, topic,
                                              self._make_callback(cam), mode, depth, events, self._log.info)
            cam.stats.input_qos = cam.image_sub.reliability or 'auto: waiting for a publisher'
            if cam_cfg.camera_info_topic:
                cam.stats.grid_status = f'waiting for CameraInfo on {cam_cfg.camera_info_topic}'
                cam.info_sub = InputSubscription(self, CameraInfo, cam_cfg.camera_info_topic,
                                                 self._make_info_callback(cam), mode, depth, events, self._log.info)
            out_ns = self.resolve_topic(f'segmentation/{cam_cfg.name}/mask').rsplit('/', 1)[0]
            self._log.info(f'camera {cam_cfg.name}: {cam_cfg.transport} on {topic} (qos.input_reliability={mode}) '
                           f'-> {out_ns}/...')
        if mode == 'auto':
            self._poll_qos()
            self._qos_timer = self.create_timer(QOS_POLL_S, self._poll_qos, clock=self._steady)
        pipeline_threads()
        self._worker = threading.Thread(target=self._run, name='evit_segmentation_worker', daemon=True)
        self._worker.start()
        d = self.backend.describe()
        self._log.info(f'ready: {cfg.model.name} on {d.get("backend")} ({d.get("device", "")} '
                       f'{d.get("precision", "")}) input {cfg.input.height}x{cfg.input.width}, '
                       f'{len(self.cameras)} camera(s)')

    def _deactivate(self, state: Any, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        with self._cond:
            self._accepting = False
        if self._qos_timer is not None:
            self.destroy_timer(self._qos_timer)
            self._qos_timer = None
        for cam in self.cameras.values():
            for sub in (cam.image_sub, cam.info_sub):
                if sub is not None:
                    sub.close()
            cam.image_sub = cam.info_sub = None
        # frames already received are processed and published completely; nothing new comes in
        with self._cond:
            drained = self._cond.wait_for(
                lambda: not self._busy and all(c.pending is None for c in self.cameras.values())
                or not self.worker_alive(), timeout=drain_timeout_s)
        if not drained:
            self._log.warning(f'deactivate: the worker did not finish its frame within {drain_timeout_s:.0f} s; '
                              'its outputs are dropped')
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            for cam in self.cameras.values():
                cam.pending = None
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(drain_timeout_s)
        super().on_deactivate(state)   # disables every lifecycle publisher

    def _release(self) -> None:
        """Back to unconfigured: publishers, parameter guard, segmenter and backend (its close() frees the engine)."""
        if self.worker_alive():
            raise EvitError('cleanup while the worker still runs; deactivate first')
        self._guard = None
        for cam in self.cameras.values():
            pubs = list(cam.pubs.values()) + [p for gp in cam.group_pubs.values() for p in gp.values()]
            if cam.label_info_pub is not None:
                pubs.append(cam.label_info_pub)
            for p in pubs:
                try:
                    self.destroy_lifecycle_publisher(p)
                except Exception:  # noqa: BLE001 - already gone with the node
                    pass
        self.cameras = {}
        self.segmenter = None
        self._outputs = None
        self.engine_stats = None
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
            release_free_heap()

    # -- parameters -----------------------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Any]) -> Any:
        """Unconfigured: every value is accepted (read at configure); configured: the guard decides."""
        if self._guard is None:
            from rcl_interfaces.msg import SetParametersResult
            return SetParametersResult(successful=True)
        return self._guard.on_set(params)

    def _on_post_set_parameters(self, params: list[Any]) -> None:
        if self._guard is not None:
            self._guard.on_post_set(params)

    # -- startup ------------------------------------------------------------------------------------------
    def resolve_topic(self, name: str) -> str:
        """Fully qualified name of a relative topic (for logs)."""
        try:
            return self.resolve_topic_name(name)
        except Exception:  # noqa: BLE001 - only for a log line
            return name

    def _load_backend(self, cfg: NodeConfig) -> Any:
        from evit_ros.backends import create_backend
        b = cfg.backend
        if b.type == 'tensorrt' and b.engine_path and not Path(b.engine_path).expanduser().is_file() \
                and not b.onnx_path:
            raise EngineError(f'backend.engine_path={b.engine_path!r} does not exist and backend.onnx_path is empty, '
                              f'so it cannot be built here. Build it on this machine with: {self._build_hint(cfg)}')
        backend = None
        try:
            backend = create_backend(cfg.backend, model=cfg.model, input_cfg=cfg.input, head=NODE_HEAD,
                                     logger=self._pylog)
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
                raise type(exc)(f'{exc}; build the engine with: {self._build_hint(cfg)}') from exc
            raise
        return backend

    @staticmethod
    def _build_hint(cfg: NodeConfig) -> str:
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

    # -- callbacks (executor thread) ---------------------------------------------------------------------
    def _make_callback(self, cam: _Camera) -> Any:
        def callback(msg: Any) -> None:
            with self._cond:
                if not self._accepting:   # a callback already dispatched when deactivate unsubscribed
                    return
                cam.stats.on_receive(len(msg.data))
                if cam.pending is not None:
                    cam.stats.on_drop()
                cam.pending = msg
                self._cond.notify()
        return callback

    def _make_info_callback(self, cam: _Camera) -> Any:
        def callback(msg: CameraInfo) -> None:
            cam.info = (tuple(float(v) for v in msg.k), int(msg.height), int(msg.width))
        return callback

    def _on_incompatible_qos(self, event: Any) -> None:
        self._log.warning(f'a camera publisher has an incompatible QoS ({event}); the node subscribes with '
                          f'qos.input_reliability={self.cfg.qos.input_reliability}. Use auto (the default) to follow '
                          'the camera, or best_effort to match both reliable and best-effort cameras',
                          throttle_duration_sec=10.0)

    def _poll_qos(self) -> None:
        """auto QoS: (re)subscribe each camera topic as its publishers offer (see evit_ros.ros.qos)."""
        for cam in self.cameras.values():
            for sub in (cam.image_sub, cam.info_sub):
                if sub is None:
                    continue
                try:
                    sub.poll()
                except Exception as exc:  # noqa: BLE001 - graph queries fail while the context shuts down
                    if self._stop.is_set():
                        return
                    self._log.warning(f'auto QoS on {sub.topic}: {exc}', throttle_duration_sec=10.0)
            if cam.image_sub is not None and cam.image_sub.reliability:
                cam.stats.input_qos = cam.image_sub.reliability

    def _check_config(self, cfg: NodeConfig) -> None:
        ClassGroups.from_names(cfg.drivable.groups, self.dataset)
        n = self.dataset.num_classes
        bad = [cid for cid, _ in cfg.outputs.palette_overrides if cid >= n]
        if bad:
            raise ConfigError(f'outputs.palette_overrides names class id(s) {bad}, but {cfg.model.name} has '
                              f'{n} classes (ids 0..{n - 1}); use an id of one of: '
                              + ', '.join(f'{i}={c}' for i, c in enumerate(self.dataset.class_names)))

    def _apply_config(self, cfg: NodeConfig, changes: dict[str, Any]) -> None:
        self.cfg = cfg
        for c in cfg.cameras:
            if c.name in self.cameras:
                self.cameras[c.name].cfg = c
        if any(k.startswith(('outputs.', 'drivable.')) for k in changes):
            with self._update_lock:
                self._pending_update = cfg
        self._log.info(f'applied {", ".join(f"{k}={v!r}" for k, v in changes.items())}')

    # -- worker thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not any(c.pending is not None for c in self.cameras.values()):
                    self._cond.wait(timeout=0.2)
                taken = [(c, c.pending) for c in self.cameras.values() if c.pending is not None]
                for c, _ in taken:
                    c.pending = None
                self._busy = bool(taken)
            if not taken or self._stop.is_set():
                self._idle()
                continue
            try:
                self._process(taken)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything a frame can cause
                if self._stop.is_set():
                    return
                if self.engine_stats is not None:
                    self.engine_stats.on_error(f'{type(exc).__name__}: {exc}')
                self._log.error(f'processing failed: {type(exc).__name__}: {exc}', throttle_duration_sec=5.0)
            finally:
                self._idle()

    def _idle(self) -> None:
        """The frames taken are published (or failed): wake a deactivate waiting for the worker."""
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _process(self, taken: list[tuple[_Camera, Any]]) -> None:
        with self._update_lock:
            update, self._pending_update = self._pending_update, None
        if update is not None:
            self.segmenter.update(outputs=update.outputs, drivable=update.drivable)
        cfg = self.cfg
        cams, msgs, frames, decode_ms = [], [], [], []
        shrunk = False
        for cam, msg in taken:
            t0 = time.perf_counter()
            try:
                rgb = conv.to_rgb(msg, cfg.input.max_decoded_pixels)
            except FrameError as exc:
                cam.stats.on_bad(exc.reason)
                self._log.warning(f'camera {cam.cfg.name}: bad frame ({exc.reason}): {exc}', throttle_duration_sec=5.0)
                continue
            except Exception as exc:  # noqa: BLE001 - a decoder failing on hostile data is a bad frame, not an engine fault
                cam.stats.on_bad('corrupt')
                self._log.warning(f'camera {cam.cfg.name}: bad frame (corrupt): {type(exc).__name__}: {exc}',
                                  throttle_duration_sec=5.0)
                continue
            pixels = rgb.shape[0] * rgb.shape[1]
            shrunk = shrunk or pixels < cam.last_pixels // 2
            cam.last_pixels = pixels
            cams.append(cam)
            msgs.append(msg)
            frames.append(rgb)
            decode_ms.append((time.perf_counter() - t0) * 1e3)
        if not frames:
            return
        self._outputs.run(cams, msgs, frames, decode_ms, cfg, self.engine_stats, self._record)
        if shrunk:   # buffers sized for an outlier (larger) frame were just replaced: give the memory back
            release_free_heap()

    def _record(self, cam: _Camera, msg: Any, res: Any, timings: dict[str, float]) -> None:
        """Statistics of one published frame (called by the output stage after the camera's last publish)."""
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        if now_ns == 0:          # use_sim_time without /clock yet: no latency to measure
            cam.stats.on_stamp('no_clock')
        elif stamp_ns == 0:
            cam.stats.on_stamp('zero')
        elif stamp_ns > now_ns:  # stamped in the future: clock skew or a broken driver; never a negative latency
            cam.stats.on_stamp('future', (stamp_ns - now_ns) / 1e6)
        else:
            timings['end_to_end'] = (now_ns - stamp_ns) / 1e6
        cam.stats.on_result(timings, res.class_fractions,
                            {g: (r.fraction, r.roi_fraction) for g, r in res.groups.items()})

    # -- diagnostics ----------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        """Cameras (while active) and the engine (while configured, with its lifecycle_state); a lifecycle
        status while not active."""
        name = self.get_fully_qualified_name().lstrip('/') if hasattr(self, 'get_fully_qualified_name') \
            else self.get_name()
        state = self.lifecycle_state
        statuses = []
        if state == 'active':
            clock_note = ''
            if self.get_clock().clock_type == ClockType.ROS_TIME and self.get_clock().now().nanoseconds == 0:
                clock_note = 'waiting for /clock (use_sim_time is true): no latency until a clock arrives'
            for c in self.cameras.values():
                c.stats.clock_note = clock_note
            statuses = [c.stats.status(name, self.cfg.diagnostics) for c in self.cameras.values()]
        else:
            error = _startup_error(self.transition_error) if self.transition_error is not None else ''
            statuses.append(lifecycle_status(name, state, error))
        engine = self.engine_stats
        if engine is not None:
            engine.describe['lifecycle_state'] = state
            statuses.append(engine.status(name, self.cfg.diagnostics))
        try:
            self._diag_pub.publish(diagnostic_array(statuses, self.get_clock().now().to_msg()))
        except Exception as exc:  # noqa: BLE001 - shutting down
            if not self._stop.is_set():
                raise exc

    # -- shutdown ---------------------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 1.5) -> None:
        """Stop the worker (waits up to ``timeout_s``) and release the backend. Safe to call twice."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout_s)
        if self.backend is not None and (self._worker is None or not self._worker.is_alive()):
            self.backend.close()
        for h in list(self._pylog.handlers):
            self._pylog.removeHandler(h)

    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def destroy_node(self) -> None:
        self.shutdown(timeout_s=0.5)
        for cam in getattr(self, 'cameras', {}).values():
            for sub in (cam.image_sub, cam.info_sub):
                if sub is not None:
                    sub.close()
        super().destroy_node()


def _fatal(message: str) -> int:
    rclpy.logging.get_logger(NODE_NAME).fatal(f'startup failed: {message}')
    return 2


def _startup_error(exc: BaseException) -> str:
    """One line for anything the node construction can raise."""
    if isinstance(exc, EvitError):
        return one_line(exc)
    if isinstance(exc, ModuleNotFoundError):
        return missing_module_message(exc.name or str(exc), 'the segmentation node')
    return f'{type(exc).__name__}: {one_line(exc)}'


def main(args: list[str] | None = None) -> int:
    """Console entry point (``segmentation_node``): run until SIGINT/SIGTERM (exit 0); exit 2 on any startup failure.

    rclpy's own signal handlers are off: SIGINT/SIGTERM during startup end the process at once (exit 0), and
    while running they end the spin loop within 0.1 s. Shutdown keeps to 2 s at any uptime: when the worker
    is still inside a long inference after its grace time, the process exits without waiting for it.
    """
    argv = list(sys.argv if args is None else args)
    flag = SignalFlag().install()
    # process-wide: frame-sized messages reuse heap memory instead of fresh pages (see evit_ros/heap.py)
    heap_kept = keep_frame_buffers()
    node: SegmentationNode | None = None
    try:
        check_ros_args(argv)
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
        node = SegmentationNode()
        flag.exit_on_signal = False   # from here on a signal only ends the spin loop
    except Exception as exc:  # noqa: BLE001 - every startup failure is one FATAL line
        code = _fatal(_startup_error(exc))
        _quiet_teardown(node)
        return code
    if node.build_only:
        _quiet_teardown(node)
        return 0
    if not heap_kept:
        node.get_logger().info('the C library did not take the heap settings for frame buffers (not glibc?); '
                               'large frames will cost fresh pages each time')
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    t_stop = None
    try:
        while not flag.event.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - report, then shut down cleanly
        node.get_logger().error(f'executor failed: {type(exc).__name__}: {one_line(exc)}')
    finally:
        t_stop = time.monotonic()
        node.shutdown(timeout_s=1.0)
        worker_alive = node.worker_alive()
        try:
            executor.shutdown(timeout_sec=0.2)
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        if worker_alive:
            # the worker is inside a long inference: do not wait for it (the 2 s promise), do not free the
            # backend under it; the OS releases everything
            node.get_logger().warning(f'worker still busy {time.monotonic() - t_stop:.1f} s after the signal; '
                                      'exiting without waiting for it')
        else:
            _quiet_teardown(node)
    # Interpreter finalization with torch/ONNX Runtime/OpenCV loaded takes ~2 s on a small CPU: the node has
    # released everything it owns, so end the process now (the 2 s shutdown promise holds at any uptime).
    exit_now(0)
    return 0


def _quiet_teardown(node: SegmentationNode | None) -> None:
    """Destroy the node (if any) and shut rclpy down, ignoring a context a signal already invalidated."""
    if node is not None:
        try:
            node.destroy_node()
        except Exception:  # noqa: BLE001 - the context may already be gone
            pass
    try:
        rclpy.try_shutdown()
    except Exception:  # noqa: BLE001
        pass


if __name__ == '__main__':
    sys.exit(main(sys.argv))


__all__ = ['NODE_NAME', 'SegmentationNode', 'main']

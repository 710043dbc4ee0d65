"""The segmentation node's lifecycle shell: class :class:`SegmentationNode` (``evit_segmentation``).

Why a module of its own: this is the part that talks to rclpy's lifecycle, parameters and graph, and decides
when frames flow; the frame worker it owns (:mod:`evit_ros.ros.worker`) does the per-frame work, and the entry
point (:mod:`evit_ros.ros.segmentation_node`) runs the process around it.

Lifecycle (``rclpy.lifecycle``): configure validates the parameters and loads/builds the engine
(:mod:`evit_ros.ros.backend_loader`), activate subscribes the cameras and enables the publishers, deactivate
unsubscribes and lets the worker publish the frame it took before the publishers are disabled, cleanup releases
the engine. ``lifecycle.autostart`` (default true) runs configure + activate in the constructor, so a failure
raises there as before. Live parameter changes are validated in the set-parameters callback and handed to the
worker, which applies them between batches.

Also here: the publishers of every output (the topics are listed in :mod:`evit_ros.ros.segmentation_node`), the
camera subscriptions and their ``qos.input_reliability: auto`` polling (:mod:`evit_ros.ros.qos`), and the
``/diagnostics`` timer (once a second).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PolygonStamped
from nav_msgs.msg import OccupancyGrid
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from evit_ros.config import NodeConfig, from_flat
from evit_ros.contract import NODE_HEAD
from evit_ros.datasets import dataset_for_model
from evit_ros.errors import ConfigError, EvitError
from evit_ros.heap import release_free_heap
from evit_ros.pipeline import ClassGroups, Segmenter
from evit_ros.ros import conversions as conv
from evit_ros.ros import transport
from evit_ros.ros.backend_loader import RosLogHandler, load_backend
from evit_ros.ros.diagnostics import CameraStats, EngineStats, diagnostic_array, lifecycle_status
from evit_ros.ros.outputs import COMPRESSED_CODECS, OutputStage, compressed_key, pipeline_threads
from evit_ros.ros.params import ParameterGuard, all_specs, declare_all, declare_one, unknown_overrides
from evit_ros.ros.prepare import ExportInterrupted
from evit_ros.ros.qos import InputSubscription, policy_name, qos_profile
from evit_ros.ros.startup import one_line, startup_error
from evit_ros.ros.worker import Camera, FrameWorker

try:  # Jazzy and later
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

NODE_NAME = 'evit_segmentation'
QOS_POLL_S = 0.5            # how often auto-QoS subscriptions look at the publishers of their topic
DRAIN_TIMEOUT_S = 30.0      # deactivate waits this long for the frame in flight to be published
CLOCK_JUMP_S = 1.0          # a /clock step this large either way (use_sim_time) is a jump, not time passing
# vision_msgs/LabelInfo as Nav2's semantic_segmentation_layer subscribes it: reliable, transient local, depth 1
LABEL_INFO_QOS = qos_profile('reliable', 1, transient_local=True)


class SegmentationNode(LifecycleNode):
    """See the module docstring. A managed (lifecycle) node; with ``lifecycle.autostart`` (default) it configures
    and activates itself in the constructor and raises :class:`~evit_ros.errors.EvitError` on bad config."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._log = self.get_logger()
        self._pylog = logging.getLogger(f'evit_ros.node.{id(self)}')
        self._pylog.propagate = False
        self._pylog.setLevel(logging.DEBUG)
        self._pylog.addHandler(RosLogHandler(self._log))
        self._worker = FrameWorker(self._log, self.get_clock(), lambda: self.cfg)
        self.backend: Any = None
        self.segmenter: Segmenter | None = None
        self.engine_stats: EngineStats | None = None
        self._outputs: OutputStage | None = None
        self.cameras: dict[str, Camera] = {}
        self.build_only = False
        self.lifecycle_state = 'unconfigured'
        self.transition_error: BaseException | None = None   # why the last transition failed (None: it did not)
        self._guard: ParameterGuard | None = None
        self._qos_timer: Any = None
        self._warned_unknown = False
        self._label_info_off_logged = False
        self._label_info: tuple[Any, Any] | None = None   # (LabelInfo, VisionClass) once configured
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._jump_handle = self._watch_clock_jumps()
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
        self._declared = True   # from here on, a parameter request is a change (a debug line each)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', QoSProfile(depth=10))
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics, clock=self._steady)
        if not autostart:
            self._log.info('lifecycle.autostart=false: unconfigured; waiting for configure and activate '
                           f'(ros2 lifecycle set {self.get_fully_qualified_name()} configure)')
            return
        self._autostart()

    def _autostart(self) -> None:
        """configure + activate at once (plain ``ros2 run``); a failure raises its original error."""
        self._quiet_failures = True   # main() prints the one FATAL line
        try:
            for name, trigger, reached in (('configure', self.trigger_configure, 'inactive'),
                                           ('activate', self.trigger_activate, 'active')):
                if self.build_only:
                    return
                trigger()   # public in Humble, Jazzy and Kilted alike
                # success is read from our own state, which the transition callbacks set
                if self.lifecycle_state != reached:
                    raise self.transition_error or EvitError(f'lifecycle transition {name} failed')
        finally:
            self._quiet_failures = False

    _quiet_failures = False
    _declared = False

    def _watch_clock_jumps(self) -> Any:
        """rcl's time-jump callback on the node clock (it fires when /clock, under use_sim_time, steps by
        :data:`CLOCK_JUMP_S` or more either way, e.g. ``ros2 bag play --loop``); None where rclpy lacks it."""
        try:
            threshold = JumpThreshold(min_forward=Duration(nanoseconds=int(CLOCK_JUMP_S * 1e9)),
                                      min_backward=Duration(nanoseconds=-int(CLOCK_JUMP_S * 1e9)),
                                      on_clock_change=False)
            return self.get_clock().create_jump_callback(threshold, post_callback=self._on_clock_jump)
        except Exception as exc:  # noqa: BLE001 - an rclpy without jump callbacks: latency may read a jump
            self._log.debug(f'no clock jump callbacks in this rclpy ({type(exc).__name__}: {exc})')
            return None

    def _on_clock_jump(self, jump: Any) -> None:
        """Frames in flight across the jump leave latency, the latency windows restart; one line per jump."""
        delta_ns = int(jump.delta.nanoseconds)
        now_ns = self.get_clock().now().nanoseconds
        if now_ns - delta_ns <= 0:   # the first /clock message after start (from time 0): not a jump
            return
        self._worker.on_clock_jump(now_ns, delta_ns)
        for cam in list(self.cameras.values()):
            cam.stats.on_clock_jump()
        self._log.info(f'clock jumped by {delta_ns / 1e9:+.1f} s (/clock, use_sim_time): frames stamped before '
                       'the jump are left out of latency and the latency windows restart')

    def _guard_change_state_service(self) -> None:
        """rclpy raises out of the change_state service for a transition the current state does not have (e.g.
        activate while unconfigured), which would end the executor: answer success=false and log instead."""
        service = getattr(self, '_service_change_state', None)
        inner = getattr(service, 'callback', None)
        if inner is None:
            return

        def change_state(request: Any, response: Any) -> Any:
            t = request.transition
            available = self._available_transitions()
            if available and not any((t.label == label) if t.label else (t.id == tid) for tid, label in available):
                # refused here, before rcl: one line whether asked by id or by label (rcl would log its own
                # error with a C source location by id, and nothing of ours by label)
                names = sorted({label for _, label in available})
                self._log.warning(f'lifecycle transition {t.label or _transition_label(t.id)} refused in state '
                                  f'{self.lifecycle_state}: from {self.lifecycle_state} only '
                                  f'{", ".join(names)}')
                response.success = False
                return response
            try:
                return inner(request, response)
            except Exception as exc:  # noqa: BLE001 - rcl's "Transition is not registered"
                self._log.warning(f'lifecycle transition {t.label or t.id} refused in state {self.lifecycle_state}: '
                                  f'{one_line(exc)}')
                response.success = False
                return response
        service.callback = change_state

    def _available_transitions(self) -> list[tuple[int, str]]:
        """(id, label) of the transitions of the current state ([] where rclpy does not expose them)."""
        machine = getattr(self, '_state_machine', None)   # private in every distro: guarded
        try:
            return [(int(t[0]), str(t[1])) for t in machine.available_transitions] if machine is not None else []
        except Exception:  # noqa: BLE001 - a private rclpy detail: fall back to rcl's check
            return []

    # -- lifecycle transitions -------------------------------------------------------------------------
    def _transition(self, name: str, work: Any, success_state: str, failure_state: str) -> Any:
        """Run one transition: SUCCESS -> ``success_state``; any error -> FAILURE, the reason logged."""
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - a failing transition is reported, never a crash
            self.transition_error = exc
            self.lifecycle_state = failure_state
            if not self._quiet_failures and not isinstance(exc, ExportInterrupted):   # a signal: shutting down
                self._log.error(f'{name} failed: {startup_error(exc)}')
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
        self.backend = load_backend(cfg, self._pylog)
        b = cfg.backend
        self._log.debug(f'engine selected: {self.backend.describe()} (backend.type={b.type}, '
                        f'engine_path={b.engine_path!r}, onnx_path={b.onnx_path!r}, precision={b.precision})')
        if cfg.backend.build_only:
            self.build_only = True
            self._log.info('backend.build_only=true: the engine is ready; exiting without subscribing')
            return
        self.segmenter = Segmenter(self.backend, input_cfg=cfg.input, outputs=cfg.outputs, drivable=cfg.drivable,
                                   dataset=self.dataset)
        net = transport.current()
        self.engine_stats = EngineStats({**self.backend.describe(), 'transport': net.summary,
                                         'transport.udp_receive_buffer_bytes': str(net.receive_buffer_bytes or '')})
        self._outputs = OutputStage(self.segmenter, self._worker.stop_event)
        if self.segmenter.engine_confidence:
            self._log.warning(f'the engine computes full-size confidence every frame (head {self.backend.io.head}); '
                              f're-export with --head {NODE_HEAD} so it is computed only while subscribed')
        self._guard = ParameterGuard(flat, all_specs([c.name for c in cfg.cameras],
                                                     [g for g, _ in cfg.drivable.groups]),
                                     self._apply_config, check=self._check_config,
                                     post_set_supported=hasattr(self, 'add_post_set_parameters_callback'))
        out_qos = qos_profile(cfg.qos.output_reliability, cfg.qos.output_depth)
        self._label_info = label_info = self._label_info_types()
        cameras: dict[str, Camera] = {}
        self.cameras = cameras
        for cam_cfg in cfg.cameras:
            cam = Camera(cam_cfg, CameraStats(cam_cfg.name, cam_cfg.subscribed_topic, self.dataset.class_names))
            _expect_period(cam)
            base = f'segmentation/{cam_cfg.name}/'
            pub = self.create_lifecycle_publisher
            # the mask's publisher events are counted (each event handler is one more entity the executor
            # waits on per spin, so not for every output; the others keep rclpy's default QoS warning)
            cam.pubs = {'mask': pub(Image, base + 'mask', out_qos, event_callbacks=self._output_events(cam)),
                        'color_mask': pub(Image, base + 'color_mask', out_qos),
                        'overlay': pub(Image, base + 'overlay', out_qos),
                        'confidence': pub(Image, base + 'confidence', out_qos)}
            for name in COMPRESSED_CODECS:   # <output>/compressed: image_transport's compressed naming
                cam.pubs[compressed_key(name)] = pub(CompressedImage, base + compressed_key(name), out_qos)
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
        mode, depth = cfg.qos.input_reliability, cfg.qos.input_depth
        self._worker.accept()
        for cam in self.cameras.values():
            cam_cfg = cam.cfg
            compressed = cam_cfg.transport == 'compressed'
            topic = cam_cfg.subscribed_topic   # <topic>/compressed for compressed transport
            cam.image_sub = InputSubscription(self, CompressedImage if compressed else Image, topic,
                                              self._make_callback(cam), mode, depth, self._qos_events(topic, cam.stats),
                                              self._log.info, self._log.debug)
            cam.stats.input_qos = cam.image_sub.reliability if cam.image_sub.decided else \
                f'auto: waiting for a publisher (subscribed {cam.image_sub.reliability})'
            cam.stats.input_depth = depth
            if cam_cfg.camera_info_topic:
                cam.stats.grid_status = f'waiting for CameraInfo on {cam_cfg.camera_info_topic}'
                cam.info_sub = InputSubscription(self, CameraInfo, cam_cfg.camera_info_topic,
                                                 self._make_info_callback(cam), mode, depth,
                                                 self._qos_events(cam_cfg.camera_info_topic), self._log.info,
                                                 self._log.debug)
            out_ns = self.resolve_topic(f'segmentation/{cam_cfg.name}/mask').rsplit('/', 1)[0]
            self._log.info(f'camera {cam_cfg.name}: {cam_cfg.transport} on {topic} (qos.input_reliability={mode}) '
                           f'-> {out_ns}/...')
        if mode == 'auto':
            self._poll_qos()
            self._qos_timer = self.create_timer(QOS_POLL_S, self._poll_qos, clock=self._steady)
        pipeline_threads()
        self._worker.start(self.cameras, self.segmenter, self._outputs, self.engine_stats)
        d = self.backend.describe()
        net = transport.current()
        self._log.info(f'ready: {cfg.model.name} on {d.get("backend")} ({d.get("device", "")} '
                       f'{d.get("precision", "")}) input {cfg.input.height}x{cfg.input.width}, '
                       f'{len(self.cameras)} camera(s); transport: {net.summary}')
        if net.capped():
            self._log.warning(net.cap_fix())

    def _deactivate(self, state: Any, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        self._worker.stop_accepting()
        if self._qos_timer is not None:
            self.destroy_timer(self._qos_timer)
            self._qos_timer = None
        for cam in self.cameras.values():
            for sub in (cam.image_sub, cam.info_sub):
                if sub is not None:
                    sub.close()
            cam.image_sub = cam.info_sub = None
        # frames already received are processed and published completely; nothing new comes in
        drained = self._worker.drain(self.cameras, drain_timeout_s)
        if not drained:
            self._log.warning(f'deactivate: the worker did not finish its frame within {drain_timeout_s:.0f} s; '
                              'its outputs are dropped')
        self._worker.stop(drain_timeout_s, discard=self.cameras.values())
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
        """Unconfigured: every value is accepted (read at configure; rclpy has already refused one outside its
        declared range); configured: the guard decides."""
        if self._guard is None:
            from rcl_interfaces.msg import SetParametersResult
            result = SetParametersResult(successful=True)
        else:
            result = self._guard.on_set(params)
        if self._declared:
            self._log.debug(f'parameters requested in state {self.lifecycle_state}: '
                            + ', '.join(f'{p.name}={p.value!r}' for p in params)
                            + (' -> accepted' if result.successful else f' -> refused: {result.reason}'))
        return result

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

    # -- callbacks (executor thread) ---------------------------------------------------------------------
    def _make_callback(self, cam: Camera) -> Any:
        offer = self._worker.offer

        def callback(msg: Any) -> None:
            offer(cam, msg)
        return callback

    def _make_info_callback(self, cam: Camera) -> Any:
        def callback(msg: CameraInfo) -> None:
            cam.info = (tuple(float(v) for v in msg.k), int(msg.height), int(msg.width))
        return callback

    def _output_events(self, cam: Camera) -> Any:
        """Event callbacks of a camera's mask publisher: what the publisher side can see (a subscriber with an
        incompatible QoS, subscribers matched and unmatched), counted in the camera's diagnostics."""
        stats = cam.stats

        def incompatible(event: Any) -> None:
            stats.on_output_event('incompatible_qos', int(getattr(event, 'total_count_change', 1)))

        def matched(event: Any) -> None:
            stats.on_output_event('matched', int(getattr(event, 'current_count_change', 0)))
        try:
            return PublisherEventCallbacks(incompatible_qos=incompatible, matched=matched)
        except TypeError:   # Humble: no matched event
            return PublisherEventCallbacks(incompatible_qos=incompatible)

    def _qos_events(self, topic: str, stats: CameraStats | None = None) -> Any:
        """Event callbacks of one input subscription (they name its topic); for a camera image, also the reader's
        own message_lost count (diagnostics ``message_lost_events``; the stamp gaps count the rest)."""
        def on_incompatible(event: Any) -> None:
            self._on_incompatible_qos(topic, event)
        if stats is None:
            return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)

        def lost(event: Any) -> None:
            stats.on_message_lost(int(getattr(event, 'total_count_change', 0)))
        try:
            return SubscriptionEventCallbacks(incompatible_qos=on_incompatible, message_lost=lost)
        except TypeError:   # an rclpy without the message_lost event
            return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)

    def _on_incompatible_qos(self, topic: str, event: Any) -> None:
        """A publisher the subscription cannot match: the policy and count, and the fix only where one applies."""
        policy = policy_name(getattr(event, 'last_policy_kind', '?'))
        count = getattr(event, 'total_count', '?')
        mode = self.cfg.qos.input_reliability
        what = f'{topic}: a publisher offers a QoS incompatible with the subscription ({policy} policy, {count} so far)'
        if mode == 'auto':   # auto re-subscribes at its next look at the publishers: nothing to fix
            self._log.info(f'{what}; auto QoS re-subscribes to match every publisher within {QOS_POLL_S:g} s',
                           throttle_duration_sec=10.0)
        elif policy == 'RELIABILITY':
            self._log.warning(f'{what}: qos.input_reliability={mode} cannot receive a best-effort publisher; set '
                              'qos.input_reliability to auto (follows the publishers) or best_effort (matches both)',
                              throttle_duration_sec=10.0)
        else:
            self._log.warning(f'{what}; compare the offered profile (ros2 topic info -v {topic}) with the '
                              f'subscription (qos.input_reliability={mode}, depth {self.cfg.qos.input_depth})',
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
                    if self._worker.stop_event.is_set():
                        return
                    self._log.warning(f'auto QoS on {sub.topic}: {exc}', throttle_duration_sec=10.0)
            if cam.image_sub is not None and cam.image_sub.decided:
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
                _expect_period(self.cameras[c.name])
        if any(k.startswith(('outputs.', 'drivable.')) for k in changes):
            self._worker.request_update(cfg)
        self._log.info(f'applied {", ".join(f"{k}={v!r}" for k, v in changes.items())}')

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
            sim_time = bool(self.get_parameter('use_sim_time').value)   # public in every distro
            for c in self.cameras.values():
                c.stats.clock_note = clock_note
                c.stats.sim_time = sim_time
            diag = self.cfg.diagnostics
            statuses = [c.stats.status(name, dataclasses.replace(
                diag, expected_rate_hz=c.cfg.expected_rate(diag.expected_rate_hz))) for c in self.cameras.values()]
        else:
            error = startup_error(self.transition_error) if self.transition_error is not None else ''
            statuses.append(lifecycle_status(name, state, error))
        engine = self.engine_stats
        if engine is not None:
            engine.describe['lifecycle_state'] = state
            statuses.append(engine.status(name, self.cfg.diagnostics))
        try:
            self._diag_pub.publish(diagnostic_array(statuses, self.get_clock().now().to_msg()))
        except Exception as exc:  # noqa: BLE001 - shutting down
            if not self._worker.stop_event.is_set():
                raise exc

    # -- shutdown ---------------------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 1.5) -> None:
        """Stop the worker (waits up to ``timeout_s``) and release the backend. Safe to call twice."""
        self._worker.stop(timeout_s)
        if self.backend is not None and not self._worker.alive():
            self.backend.close()
        for h in list(self._pylog.handlers):
            self._pylog.removeHandler(h)

    def worker_alive(self) -> bool:
        return self._worker.alive()

    def destroy_node(self) -> None:
        self.shutdown(timeout_s=0.5)
        if self._jump_handle is not None:
            try:
                self._jump_handle.unregister()
            except Exception:  # noqa: BLE001 - the clock may be gone already
                pass
            self._jump_handle = None
        for cam in getattr(self, 'cameras', {}).values():
            for sub in (cam.image_sub, cam.info_sub):
                if sub is not None:
                    sub.close()
        super().destroy_node()


def _expect_period(cam: Camera) -> None:
    """The stamp-gap estimate of missing frames knows the camera's own expected rate, when it has one."""
    hz = cam.cfg.expected_rate_hz
    cam.stats.gaps.expected_period_ns = 1e9 / hz if hz > 0 else None


def _transition_label(tid: int) -> str:
    """'activate' for Transition.TRANSITION_ACTIVATE, else the id as text."""
    from lifecycle_msgs.msg import Transition
    for name in dir(Transition):
        if name.startswith('TRANSITION_') and getattr(Transition, name) == tid:
            return name[len('TRANSITION_'):].lower()
    return str(tid)


__all__ = ['DRAIN_TIMEOUT_S', 'LABEL_INFO_QOS', 'NODE_NAME', 'QOS_POLL_S', 'SegmentationNode']

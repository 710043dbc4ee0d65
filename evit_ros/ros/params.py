"""The node's parameters: one table of names, defaults, ranges, descriptions and live/restart classes.

The names are exactly the dotted names :func:`evit_ros.config.from_flat` reads, so the YAML file, the node
and the CLI tools share one configuration. Per-camera (``cameras.<cam>.*``) and per-group
(``drivable.<group>.classes``) parameters are declared from the ``cameras`` and ``drivable.groups`` lists.

Live parameters are applied while the node runs; the others are read once at startup and a change is
refused with "requires restart" (they are not declared read-only, so the refusal can say why).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from evit_ros.config import (
    BACKEND_TYPES,
    INPUT_RELIABILITIES,
    INTERPOLATIONS,
    MASK_RESOLUTIONS,
    PRECISIONS,
    RELIABILITIES,
    RESIZE_MODES,
    TRANSPORTS,
    BackendConfig,
    CameraConfig,
    DiagnosticsConfig,
    GridConfig,
    InputConfig,
    LifecycleConfig,
    ModelConfig,
    MountConfig,
    NodeConfig,
    OutputConfig,
    QosConfig,
    from_flat,
)
from evit_ros.errors import ConfigError

# parameter kinds (ROS types)
BOOL, INT, DOUBLE, STRING, STRING_ARRAY, DOUBLE_ARRAY = 'bool', 'integer', 'double', 'string', 'string[]', 'double[]'


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter. ``range`` is (lo, hi, step) for numbers; ``choices`` for enumerated strings."""

    name: str
    kind: str
    default: Any
    description: str
    live: bool
    range: tuple[float, float, float] | None = None
    choices: tuple[str, ...] = ()
    dynamic: bool = False   # declared with dynamic typing: '[]' from the ros2 CLI (a bool array) unsets it

    @property
    def constraints(self) -> str:
        """Human-readable constraint text (for the descriptor and the README)."""
        if self.choices:
            return 'one of: ' + ', '.join(self.choices)
        if self.range is not None:
            lo, hi, step = self.range
            text = f'[{_num(lo)}, {_num(hi)}]'
            return text + (f', multiple of {_num(step)}' if step and self.kind == INT and step > 1 else '')
        return ''


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


_M, _B, _I, _O = ModelConfig(), BackendConfig(), InputConfig(), OutputConfig()
_G, _D, _Q, _MT = GridConfig(), DiagnosticsConfig(), QosConfig(), MountConfig()
_L = LifecycleConfig()

GLOBAL_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec('model.name', STRING, _M.name, 'Model zoo name, e.g. efficientvit-seg-b0-cityscapes', False),
    ParamSpec('model.checkpoint', STRING, _M.checkpoint,
              'Weights file (.pt); empty: search the checkpoint path (packaged demo weights for b0)', False),
    ParamSpec('backend.type', STRING, _B.type, 'Inference runtime; auto prefers TensorRT, then ONNX Runtime, '
              'then PyTorch', False, choices=BACKEND_TYPES),
    ParamSpec('backend.engine_path', STRING, _B.engine_path, 'TensorRT engine file (built by evit-ros build-engine)',
              False),
    ParamSpec('backend.onnx_path', STRING, _B.onnx_path,
              'Exported ONNX; empty: export the model to the cache automatically', False),
    ParamSpec('backend.precision', STRING, _B.precision, 'Engine precision (TensorRT/torch)', False,
              choices=PRECISIONS),
    ParamSpec('backend.threads', INT, _B.threads, 'CPU threads of the runtime; 0: runtime default', False,
              range=(0, 256, 1)),
    ParamSpec('backend.build_only', BOOL, _B.build_only, 'Load/build the engine, then exit (install-time builds)',
              False),
    ParamSpec('input.height', INT, _I.height, 'Network input height in pixels', False, range=(32, 4096, 32)),
    ParamSpec('input.width', INT, _I.width, 'Network input width in pixels', False, range=(32, 4096, 32)),
    ParamSpec('input.resize_mode', STRING, _I.resize_mode, 'Camera frame -> network input: stretch, letterbox '
              '(pad) or crop (center)', False, choices=RESIZE_MODES),
    ParamSpec('input.interpolation', STRING, _I.interpolation, 'Resize interpolation of camera frames', False,
              choices=INTERPOLATIONS),
    ParamSpec('input.max_decoded_pixels', INT, _I.max_decoded_pixels, 'Largest camera frame (width*height) '
              'accepted; larger raw or compressed frames are bad frames (size), refused before decoding', False,
              range=(1024, 1 << 30, 1)),
    ParamSpec('cameras', STRING_ARRAY, ['front'], 'Camera names; each gets cameras.<cam>.* parameters and '
              'segmentation/<cam>/* outputs', False),
    ParamSpec('outputs.mask', BOOL, _O.mask, 'Publish segmentation/<cam>/mask (mono8 class ids)', True),
    ParamSpec('outputs.color_mask', BOOL, _O.color_mask, 'Publish segmentation/<cam>/color_mask (rgb8)', True),
    ParamSpec('outputs.overlay', BOOL, _O.overlay, 'Publish segmentation/<cam>/overlay (computed only while '
              'subscribed)', True),
    ParamSpec('outputs.confidence', BOOL, _O.confidence, 'Publish segmentation/<cam>/confidence (computed only '
              'while subscribed)', True),
    ParamSpec('outputs.mask_resolution', STRING, _O.mask_resolution, 'Output image size: camera (input frame '
              'size) or model (network input size)', True, choices=MASK_RESOLUTIONS),
    ParamSpec('outputs.overlay_alpha', DOUBLE, _O.overlay_alpha, 'Overlay blend weight of the color mask',
              True, range=(0.0, 1.0, 0.0)),
    ParamSpec('outputs.jpeg_quality', INT, _O.jpeg_quality, 'JPEG quality of segmentation/<cam>/color_mask/'
              'compressed and overlay/compressed (mask and confidence are PNG, lossless)', True, range=(1, 100, 1)),
    ParamSpec('outputs.palette_overrides', STRING_ARRAY, None, 'Color overrides "classid:r,g,b", e.g. '
              '"13:255,0,0"', True),
    ParamSpec('drivable.groups', STRING_ARRAY, ['drivable'], 'Class group names; each gets '
              'drivable.<group>.classes and segmentation/<cam>/drivable/<group>/* outputs', False),
    ParamSpec('drivable.roi', DOUBLE_ARRAY, None, 'Region of interest for roi fractions: normalized '
              '[x0, y0, x1, y1, ...] polygon (>= 3 points); unset or []: whole image', True, dynamic=True),
    ParamSpec('grid.resolution_m', DOUBLE, _G.resolution_m, 'Ground grid cell size (m)', True,
              range=(0.01, 5.0, 0.0)),
    ParamSpec('grid.length_m', DOUBLE, _G.length_m, 'Ground grid extent ahead of the vehicle (m)', True,
              range=(1.0, 500.0, 0.0)),
    ParamSpec('grid.width_m', DOUBLE, _G.width_m, 'Ground grid extent across the vehicle (m), centred', True,
              range=(1.0, 500.0, 0.0)),
    ParamSpec('grid.frame_id', STRING, _G.frame_id, 'Frame of the grid and boundary (vehicle frame on the '
              'ground)', True),
    ParamSpec('diagnostics.expected_rate_hz', DOUBLE, _D.expected_rate_hz, 'Expected camera rate; WARN below '
              'half of it (a camera\'s own cameras.<cam>.expected_rate_hz overrides it)', True,
              range=(0.1, 1000.0, 0.0)),
    ParamSpec('diagnostics.latency_budget_ms', DOUBLE, _D.latency_budget_ms, 'End-to-end latency budget; WARN '
              'when p95 exceeds it, ERROR when the median does', True, range=(1.0, 60000.0, 0.0)),
    ParamSpec('diagnostics.silence_timeout_s', DOUBLE, _D.silence_timeout_s, 'A camera without frames for '
              'this long is reported silent (ERROR)', True, range=(0.1, 3600.0, 0.0)),
    ParamSpec('diagnostics.low_confidence_threshold', DOUBLE, _D.low_confidence_threshold, 'A pixel whose max '
              'softmax probability is below this is low-confidence (diagnostics confidence.low_fraction)', True,
              range=(0.0, 1.0, 0.0)),
    ParamSpec('diagnostics.min_mean_confidence', DOUBLE, _D.min_mean_confidence, 'WARN when a camera\'s mean '
              'confidence stays below this for diagnostics.low_confidence_frames frames (0: never)', True,
              range=(0.0, 1.0, 0.0)),
    ParamSpec('diagnostics.low_confidence_frames', INT, _D.low_confidence_frames, 'Consecutive low-confidence '
              'frames before the WARN', True, range=(1, 100000, 1)),
    ParamSpec('qos.input_reliability', STRING, _Q.input_reliability, 'Camera/CameraInfo subscription reliability; '
              'auto: reliable when every publisher of the topic offers reliable, else best_effort (re-decided '
              'when publishers change)', False, choices=INPUT_RELIABILITIES),
    ParamSpec('qos.input_depth', INT, _Q.input_depth, 'Camera subscription queue depth (reader history; 1 loses '
              'frames of a steady multi-camera stream in the transport)', False,
              range=(1, 100, 1)),
    ParamSpec('qos.output_reliability', STRING, _Q.output_reliability, 'Output publishers reliability', False,
              choices=RELIABILITIES),
    ParamSpec('qos.output_depth', INT, _Q.output_depth, 'Output publishers queue depth (5: the sensor-data '
              'convention; 1 loses masks to reliable subscribers in bursts)', False, range=(1, 100, 1)),
    ParamSpec('lifecycle.autostart', BOOL, _L.autostart, 'Configure and activate at startup (plain ros2 run); '
              'false: stay unconfigured until a lifecycle manager or `ros2 lifecycle set` drives the node', False),
)


def camera_specs(cam: str) -> tuple[ParamSpec, ...]:
    """Parameters of one camera (declared for every name in ``cameras``)."""
    p = f'cameras.{cam}.'
    return (
        ParamSpec(p + 'topic', STRING, '', f'Image topic; empty: /{cam}/image_raw (compressed: <topic>/compressed)',
                  False),
        ParamSpec(p + 'transport', STRING, 'raw', 'raw (sensor_msgs/Image) or compressed (CompressedImage on '
                  '<topic>/compressed)', False, choices=TRANSPORTS),
        ParamSpec(p + 'camera_info_topic', STRING, '', 'CameraInfo topic for intrinsics (K); empty: no ground '
                  'grid/boundary', False),
        ParamSpec(p + 'expected_rate_hz', DOUBLE, 0.0, 'This camera\'s expected rate (WARN below half of it); '
                  '0.0: diagnostics.expected_rate_hz', True, range=(0.0, 1000.0, 0.0)),
        ParamSpec(p + 'mount.height_m', DOUBLE, _MT.height_m, 'Camera height above the ground (m)', True,
                  range=(0.05, 20.0, 0.0)),
        ParamSpec(p + 'mount.pitch_deg', DOUBLE, _MT.pitch_deg, 'Camera pitch, positive looks down (deg)', True,
                  range=(-89.0, 89.0, 0.0)),
        ParamSpec(p + 'mount.roll_deg', DOUBLE, _MT.roll_deg, 'Camera roll (deg)', True, range=(-90.0, 90.0, 0.0)),
        ParamSpec(p + 'mount.yaw_deg', DOUBLE, _MT.yaw_deg, 'Camera yaw, positive looks left (deg)', True,
                  range=(-180.0, 180.0, 0.0)),
        ParamSpec(p + 'mount.x_m', DOUBLE, _MT.x_m, 'Camera position ahead of the grid frame origin (m)', True,
                  range=(-100.0, 100.0, 0.0)),
        ParamSpec(p + 'mount.y_m', DOUBLE, _MT.y_m, 'Camera position left of the grid frame origin (m)', True,
                  range=(-100.0, 100.0, 0.0)),
    )


def group_specs(group: str) -> tuple[ParamSpec, ...]:
    """Parameters of one drivable class group (declared for every name in ``drivable.groups``)."""
    default = ['road'] if group == 'drivable' else None
    return (ParamSpec(f'drivable.{group}.classes', STRING_ARRAY, default,
                      'Class names (dataset names, "_" for spaces) that make up the group', True),)


def all_specs(cameras: list[str], groups: list[str]) -> dict[str, ParamSpec]:
    """Every parameter of a node with these cameras and groups, by name."""
    specs = {s.name: s for s in GLOBAL_SPECS}
    for cam in cameras:
        specs.update({s.name: s for s in camera_specs(cam)})
    for g in groups:
        specs.update({s.name: s for s in group_specs(g)})
    return specs


def descriptor(spec: ParamSpec) -> Any:
    """The rcl_interfaces ParameterDescriptor of a spec (description, constraints, ranges)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    d = ParameterDescriptor(description=spec.description + ('' if spec.live else ' [requires restart]'),
                            additional_constraints=spec.constraints, dynamic_typing=spec.dynamic)
    if spec.range is not None:
        lo, hi, step = spec.range
        if spec.kind == INT:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=int(step))]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=float(step))]
    return d


def _type_of(kind: str) -> Any:
    from rclpy.parameter import Parameter
    return {BOOL: Parameter.Type.BOOL, INT: Parameter.Type.INTEGER, DOUBLE: Parameter.Type.DOUBLE,
            STRING: Parameter.Type.STRING, STRING_ARRAY: Parameter.Type.STRING_ARRAY,
            DOUBLE_ARRAY: Parameter.Type.DOUBLE_ARRAY}[kind]


def _plain(value: Any) -> Any:
    """ROS parameter value -> plain Python (arrays become lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return list(value)


def _declare(node: Any, spec: ParamSpec) -> Any:
    """Declare ``spec`` (or read it when already declared: a lifecycle node re-reads its parameters on configure)."""
    from rclpy.exceptions import ParameterException
    if node.has_parameter(spec.name):
        try:
            return _plain(node.get_parameter(spec.name).value)
        except ParameterException:   # declared without a value (unset, e.g. drivable.roi)
            return None
    default = spec.default if spec.default is not None else (None if spec.dynamic else _type_of(spec.kind))
    try:
        param = node.declare_parameter(spec.name, default, descriptor(spec))
    except (ParameterException, TypeError, ValueError) as exc:
        hint = f'; valid: {spec.constraints}' if spec.constraints else ''
        fix = 'Fix it in the params file or -p override'
        given = getattr(node, '_parameter_overrides', {}).get(spec.name)
        given_type = getattr(getattr(given, 'type_', None), 'name', '')
        if spec.kind == DOUBLE and given_type == 'INTEGER':
            fix += ' (write doubles with a decimal point, e.g. 1.0, not 1)'
        elif spec.kind == INT and given_type == 'DOUBLE':
            fix += ' (write integers without a decimal point, e.g. 512, not 512.0)'
        raise ConfigError(f'parameter {spec.name} ({spec.kind}) was refused: {exc}{hint}. {fix}') from exc
    return _plain(param.value)


def _names(value: Any, what: str) -> list[str]:
    names = [str(v) for v in (value or [])]
    for n in names:
        if not n or not n.replace('_', 'a').isalnum():
            raise ConfigError(f'{what} entry {n!r} must be a non-empty [A-Za-z0-9_] word (it becomes part of '
                              'parameter and topic names)')
    return names


def _no_duplicates(names: list[str], what: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f'{what} lists {", ".join(dup)} more than once ({names}); every name must be unique')


def declare_one(node: Any, name: str) -> Any:
    """Declare (or read) the global parameter ``name`` alone, e.g. ``lifecycle.autostart`` before the rest."""
    return _declare(node, next(s for s in GLOBAL_SPECS if s.name == name))


def declare_all(node: Any) -> dict[str, Any]:
    """Declare every parameter on ``node`` (YAML/CLI overrides apply; already declared ones are read) and return
    the flat values (unset omitted)."""
    flat: dict[str, Any] = {}
    for spec in GLOBAL_SPECS:
        flat[spec.name] = _declare(node, spec)
    cameras = _names(flat['cameras'], 'cameras')
    if not cameras:
        raise ConfigError('cameras is empty; list at least one camera name, e.g. [front]')
    _no_duplicates(cameras, 'cameras')
    for cam in cameras:
        CameraConfig(cam)   # validates the name before it becomes part of parameter names
        for spec in camera_specs(cam):
            flat[spec.name] = _declare(node, spec)
    groups = _names(flat['drivable.groups'], 'drivable.groups')
    _no_duplicates(groups, 'drivable.groups')
    for g in groups:
        for spec in group_specs(g):
            flat[spec.name] = _declare(node, spec)
    return {k: v for k, v in flat.items() if v is not None}


def unknown_overrides(node: Any, declared: Mapping[str, Any]) -> list[str]:
    """Parameter names given in the params file / command line that the node does not have (likely typos)."""
    overrides = getattr(node, '_parameter_overrides', {}) or {}
    builtin = {'use_sim_time', 'start_type_description_service'}
    return sorted(n for n in overrides if n not in declared and n not in builtin and not n.startswith('qos_overrides.'))


class ParameterGuard:
    """Validates run-time parameter changes and hands accepted configurations to ``apply``.

    Restart-only names are refused with "requires restart"; live ones are validated by rebuilding the whole
    :class:`NodeConfig` through ``from_flat`` (plus ``check``, e.g. class names against the dataset), and
    refused with that error as the reason.
    """

    def __init__(self, flat: Mapping[str, Any], specs: Mapping[str, ParamSpec],
                 apply: Callable[[NodeConfig, dict[str, Any]], None],
                 check: Callable[[NodeConfig], None] | None = None, post_set_supported: bool = False) -> None:
        self.flat = dict(flat)
        self.specs = dict(specs)
        self._apply = apply
        self._check = check
        self._pending: tuple[NodeConfig, dict[str, Any]] | None = None
        # True where rclpy calls on_post_set (Jazzy+): apply there; False (Humble): apply in on_set
        self._post_set_supported = post_set_supported

    def validate(self, changes: Mapping[str, Any]) -> tuple[NodeConfig | None, str]:
        """(new config, '') if the changes are acceptable, else (None, reason)."""
        relevant = {k: v for k, v in changes.items() if k in self.specs}
        if not relevant:
            return None, ''
        restart = sorted(k for k in relevant if not self.specs[k].live)
        if restart:
            return None, (f'{", ".join(restart)} requires restart: it is read only at startup; change it in the '
                          'params file and restart the node (managed node: cleanup, set it, configure)')
        candidate = dict(self.flat)
        for k, v in relevant.items():
            if v is None:
                candidate.pop(k, None)
            else:
                candidate[k] = v
        try:
            cfg = from_flat(candidate)
            if self._check is not None:
                self._check(cfg)
        except ConfigError as exc:
            return None, str(exc)
        return cfg, ''

    def on_set(self, params: list[Any]) -> Any:
        """``add_on_set_parameters_callback`` target."""
        from rcl_interfaces.msg import SetParametersResult
        from rclpy.parameter import Parameter
        deleted = [p.name for p in params if p.type_ == Parameter.Type.NOT_SET and p.name in self.specs]
        if deleted:
            return SetParametersResult(successful=False, reason=f'{", ".join(deleted)} cannot be deleted; set it to '
                                       'its default instead (drivable.roi: \'[]\' means the whole image)')
        changes = {p.name: _plain(p.value) for p in params}
        cfg, reason = self.validate(changes)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        if cfg is not None:
            relevant = {k: v for k, v in changes.items() if k in self.specs}
            self._pending = (cfg, relevant)
            if not self._post_set_supported:
                self._commit()
        return SetParametersResult(successful=True)

    def on_post_set(self, params: list[Any]) -> None:
        """``add_post_set_parameters_callback`` target (Jazzy+): apply after the values are stored."""
        self._commit()

    def _commit(self) -> None:
        if self._pending is None:
            return
        cfg, changes = self._pending
        self._pending = None
        for k, v in changes.items():
            if v is None:
                self.flat.pop(k, None)
            else:
                self.flat[k] = v
        self._apply(cfg, changes)

    def attach(self, node: Any) -> None:
        """Register the callbacks (post-set where rclpy has it, i.e. Jazzy+; on Humble apply in on-set)."""
        node.add_on_set_parameters_callback(self.on_set)
        if hasattr(node, 'add_post_set_parameters_callback'):
            self._post_set_supported = True
            node.add_post_set_parameters_callback(self.on_post_set)

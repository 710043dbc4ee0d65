"""Typed, validated configuration shared by the node, the CLI tools and the evaluator.

Configuration flows one way: YAML (``config/evit_ros.yaml``, ROS ``ros__parameters`` layout) ->
flat dotted parameters (declared by the node with descriptions and ranges) -> :func:`from_flat` ->
frozen dataclasses -> the core. The CLI reads the same YAML with :func:`load_config`, so the node and
the tools agree on model, sizes, groups and backend.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evit_ros.errors import ConfigError

BACKEND_TYPES = ('auto', 'tensorrt', 'onnxruntime', 'torch')
PRECISIONS = ('fp32', 'fp16', 'int8')
RESIZE_MODES = ('stretch', 'letterbox', 'crop')
INTERPOLATIONS = ('bicubic', 'linear', 'area', 'nearest')
TRANSPORTS = ('raw', 'compressed')
MASK_RESOLUTIONS = ('camera', 'model')
RELIABILITIES = ('best_effort', 'reliable')
# auto: reliable when every publisher of the topic offers reliable, else best_effort (evit_ros.ros.qos)
INPUT_RELIABILITIES = ('auto', 'best_effort', 'reliable')
DEFAULT_MAX_DECODED_PIXELS = 16_000_000   # 4x a 2048x2048 camera: larger frames are refused before decoding
DEFAULT_MODEL = 'efficientvit-seg-b0-cityscapes'


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f'{name}={value!r} is not valid; use one of: {", ".join(choices)}')


def _range(name: str, value: float, lo: float, hi: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
        raise ConfigError(f'{name}={value!r} is out of range; use a value in [{lo}, {hi}]')


@dataclass(frozen=True)
class ModelConfig:
    name: str = DEFAULT_MODEL
    checkpoint: str = ''


@dataclass(frozen=True)
class BackendConfig:
    type: str = 'auto'
    engine_path: str = ''
    onnx_path: str = ''
    precision: str = 'fp16'
    threads: int = 0           # 0: runtime default
    build_only: bool = False

    def __post_init__(self) -> None:
        _choice('backend.type', self.type, BACKEND_TYPES)
        _choice('backend.precision', self.precision, PRECISIONS)
        _range('backend.threads', self.threads, 0, 256)


@dataclass(frozen=True)
class InputConfig:
    height: int = 512
    width: int = 1024
    resize_mode: str = 'stretch'
    interpolation: str = 'linear'
    max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS

    def __post_init__(self) -> None:
        for name, v in (('input.height', self.height), ('input.width', self.width)):
            if not isinstance(v, int) or v < 32 or v > 4096 or v % 32:
                lo = max(32, (int(v) // 32) * 32) if isinstance(v, (int, float)) else 32
                raise ConfigError(f'{name}={v!r} must be a multiple of 32 in [32, 4096]; '
                                  f'nearest valid: {lo} or {lo + 32}')
        _choice('input.resize_mode', self.resize_mode, RESIZE_MODES)
        _choice('input.interpolation', self.interpolation, INTERPOLATIONS)
        _range('input.max_decoded_pixels', self.max_decoded_pixels, 1024, 1 << 30)


@dataclass(frozen=True)
class MountConfig:
    """Camera pose on the vehicle: height above flat ground, orientation (deg), offset in the vehicle frame."""

    height_m: float = 1.5
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    yaw_deg: float = 0.0
    x_m: float = 0.0
    y_m: float = 0.0

    def __post_init__(self) -> None:
        _range('mount.height_m', self.height_m, 0.05, 20.0)
        _range('mount.pitch_deg', self.pitch_deg, -89.0, 89.0)
        _range('mount.roll_deg', self.roll_deg, -90.0, 90.0)
        _range('mount.yaw_deg', self.yaw_deg, -180.0, 180.0)
        _range('mount.x_m', self.x_m, -100.0, 100.0)
        _range('mount.y_m', self.y_m, -100.0, 100.0)


@dataclass(frozen=True)
class CameraConfig:
    name: str
    topic: str = ''
    transport: str = 'raw'
    camera_info_topic: str = ''
    mount: MountConfig = field(default_factory=MountConfig)
    expected_rate_hz: float = 0.0   # 0: diagnostics.expected_rate_hz

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace('_', 'a').isalnum():
            raise ConfigError(f'camera name {self.name!r} must be a non-empty [A-Za-z0-9_] word '
                              '(it becomes part of topic names)')
        _choice(f'cameras.{self.name}.transport', self.transport, TRANSPORTS)
        if self.expected_rate_hz != 0.0:
            _range(f'cameras.{self.name}.expected_rate_hz', self.expected_rate_hz, 0.1, 1000.0)

    def expected_rate(self, default_hz: float) -> float:
        """This camera's expected rate: its own ``expected_rate_hz``, else ``diagnostics.expected_rate_hz``."""
        return self.expected_rate_hz or default_hz

    @property
    def resolved_topic(self) -> str:
        return self.topic or f'/{self.name}/image_raw'

    @property
    def subscribed_topic(self) -> str:
        """The topic the node reads: ``<topic>/compressed`` for compressed transport (image_transport naming)."""
        topic = self.resolved_topic
        if self.transport == 'compressed' and not topic.endswith('/compressed'):
            topic += '/compressed'
        return topic


@dataclass(frozen=True)
class OutputConfig:
    mask: bool = True
    color_mask: bool = True
    overlay: bool = True
    confidence: bool = True
    mask_resolution: str = 'camera'
    overlay_alpha: float = 0.5
    palette_overrides: tuple[tuple[int, tuple[int, int, int]], ...] = ()
    jpeg_quality: int = 90      # color_mask/compressed and overlay/compressed

    def __post_init__(self) -> None:
        _choice('outputs.mask_resolution', self.mask_resolution, MASK_RESOLUTIONS)
        _range('outputs.overlay_alpha', self.overlay_alpha, 0.0, 1.0)
        _range('outputs.jpeg_quality', self.jpeg_quality, 1, 100)


@dataclass(frozen=True)
class DrivableConfig:
    """Named class groups (group -> class names) and a region of interest (normalized x, y polygon)."""

    groups: tuple[tuple[str, tuple[str, ...]], ...] = (('drivable', ('road',)),)
    roi: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        for g, classes in self.groups:
            if not g or not g.replace('_', 'a').isalnum():
                raise ConfigError(f'drivable group name {g!r} must be a [A-Za-z0-9_] word (it becomes a topic part)')
            if not classes:
                raise ConfigError(f'drivable.{g}.classes is empty; list at least one class name, e.g. [road]')
        if self.roi and len(self.roi) < 3:
            raise ConfigError(f'drivable.roi has {len(self.roi)} points; give at least 3 (x, y) pairs or none')
        for x, y in self.roi:
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ConfigError(f'drivable.roi point ({x}, {y}) must be normalized to [0, 1]')


@dataclass(frozen=True)
class GridConfig:
    resolution_m: float = 0.1
    length_m: float = 40.0
    width_m: float = 20.0
    frame_id: str = 'base_link'

    def __post_init__(self) -> None:
        _range('grid.resolution_m', self.resolution_m, 0.01, 5.0)
        _range('grid.length_m', self.length_m, 1.0, 500.0)
        _range('grid.width_m', self.width_m, 1.0, 500.0)
        if not self.frame_id:
            raise ConfigError('grid.frame_id is empty; set the vehicle frame, e.g. base_link')


@dataclass(frozen=True)
class DiagnosticsConfig:
    expected_rate_hz: float = 10.0
    latency_budget_ms: float = 100.0
    silence_timeout_s: float = 2.0
    # the uncertainty signal: pixels whose max softmax probability is below low_confidence_threshold count as
    # low; a camera whose mean confidence stays below min_mean_confidence for low_confidence_frames frames WARNs
    low_confidence_threshold: float = 0.5
    min_mean_confidence: float = 0.8
    low_confidence_frames: int = 30

    def __post_init__(self) -> None:
        _range('diagnostics.expected_rate_hz', self.expected_rate_hz, 0.1, 1000.0)
        _range('diagnostics.latency_budget_ms', self.latency_budget_ms, 1.0, 60000.0)
        _range('diagnostics.silence_timeout_s', self.silence_timeout_s, 0.1, 3600.0)
        _range('diagnostics.low_confidence_threshold', self.low_confidence_threshold, 0.0, 1.0)
        _range('diagnostics.min_mean_confidence', self.min_mean_confidence, 0.0, 1.0)
        _range('diagnostics.low_confidence_frames', self.low_confidence_frames, 1, 100000)


@dataclass(frozen=True)
class QosConfig:
    input_reliability: str = 'auto'
    # 5: a steady stream of several cameras from one process reaches the callback (docs/performance.md#surround-rig)
    input_depth: int = 5
    output_reliability: str = 'reliable'
    output_depth: int = 5   # the ROS sensor-data depth; 1 loses masks in bursts of several cameras

    def __post_init__(self) -> None:
        _choice('qos.input_reliability', self.input_reliability, INPUT_RELIABILITIES)
        _choice('qos.output_reliability', self.output_reliability, RELIABILITIES)
        _range('qos.input_depth', self.input_depth, 1, 100)
        _range('qos.output_depth', self.output_depth, 1, 100)


@dataclass(frozen=True)
class LifecycleConfig:
    """``autostart``: the node configures and activates itself (plain ``ros2 run``); false for a lifecycle manager."""

    autostart: bool = True


@dataclass(frozen=True)
class NodeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    input: InputConfig = field(default_factory=InputConfig)
    cameras: tuple[CameraConfig, ...] = (CameraConfig('front'),)
    outputs: OutputConfig = field(default_factory=OutputConfig)
    drivable: DrivableConfig = field(default_factory=DrivableConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    qos: QosConfig = field(default_factory=QosConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ConfigError('cameras is empty; list at least one camera name, e.g. [front]')
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ConfigError(f'cameras has duplicate names: {names}')


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """Nested YAML mapping -> dotted names, as ROS 2 does for ``ros__parameters``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def read_yaml_parameters(path: str | Path, node_name: str = 'evit_segmentation') -> dict[str, Any]:
    """Flat parameters for ``node_name`` from a ROS 2 params file (``/**`` and the node's own section merged)."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f'params file {p} does not exist; pass an existing YAML (e.g. config/evit_ros.yaml)') from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f'params file {p} is not valid YAML: {exc}') from exc
    if not isinstance(doc, Mapping):
        raise ConfigError(f'params file {p} must map node names to {{ros__parameters: ...}}')
    flat: dict[str, Any] = {}
    for key in ('/**', node_name, '/' + node_name, f'/**/{node_name}'):
        section = doc.get(key)
        if isinstance(section, Mapping) and isinstance(section.get('ros__parameters'), Mapping):
            flat.update(flatten(section['ros__parameters']))
    return flat


def _get(flat: Mapping[str, Any], name: str, default: Any) -> Any:
    value = flat.get(name, default)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f'{name}={value!r} must be true or false')
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and (
            isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f'{name}={value!r} must be a number')
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f'{name}={value!r} must be a string')
    return value


def _section(cls: Any, prefix: str, flat: Mapping[str, Any], **fixed: Any) -> Any:
    default = cls(**fixed) if fixed else cls()
    kwargs = dict(fixed)
    for name in cls.__dataclass_fields__:
        if name in fixed:
            continue
        current = getattr(default, name)
        if isinstance(current, (bool, int, float, str)):
            kwargs[name] = _get(flat, f'{prefix}{name}', current)
    return cls(**kwargs)


def parse_palette_overrides(items: Any) -> tuple[tuple[int, tuple[int, int, int]], ...]:
    """``['11:255,0,0', ...]`` (class id : r,g,b) -> ((11, (255, 0, 0)), ...)."""
    out = []
    for item in list(items or ()):
        try:
            cid, rgb = str(item).split(':')
            r, g, b = (int(v) for v in rgb.split(','))
            entry = (int(cid), (r, g, b))
        except ValueError as exc:
            raise ConfigError(f'outputs.palette_overrides entry {item!r} must look like "11:255,0,0" '
                              '(class id : r,g,b)') from exc
        if not (0 <= entry[0] <= 254 and all(0 <= v <= 255 for v in entry[1])):
            raise ConfigError(f'outputs.palette_overrides entry {item!r}: class id in [0, 254], colors in [0, 255]')
        out.append(entry)
    return tuple(out)


def parse_roi(values: Any) -> tuple[tuple[float, float], ...]:
    """Flat ``[x0, y0, x1, y1, ...]`` normalized coordinates -> ((x0, y0), ...)."""
    if isinstance(values, (str, bytes)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                for v in list(values or ())):
        raise ConfigError(f'drivable.roi={values!r} must be a list of numbers [x0, y0, x1, y1, ...] (normalized), '
                          'or [] for the whole image')
    vals = [float(v) for v in list(values or ())]
    if len(vals) % 2:
        raise ConfigError(f'drivable.roi has {len(vals)} numbers; give x, y pairs (an even count)')
    return tuple((vals[i], vals[i + 1]) for i in range(0, len(vals), 2))


def from_flat(flat: Mapping[str, Any]) -> NodeConfig:
    """Build and validate the whole configuration from dotted parameter names (missing names get defaults)."""
    camera_names = list(flat.get('cameras', ['front']) or [])
    cameras = []
    for cam in camera_names:
        mount = _section(MountConfig, f'cameras.{cam}.mount.', flat)
        cameras.append(_section(CameraConfig, f'cameras.{cam}.', flat, name=str(cam), mount=mount))
    group_names = list(flat.get('drivable.groups', ['drivable']) or [])
    groups = []
    for g in group_names:
        default = ['road'] if g == 'drivable' else []
        groups.append((str(g), tuple(str(c) for c in (flat.get(f'drivable.{g}.classes', default) or []))))
    outputs = _section(OutputConfig, 'outputs.', flat,
                       palette_overrides=parse_palette_overrides(flat.get('outputs.palette_overrides', [])))
    return NodeConfig(
        model=_section(ModelConfig, 'model.', flat),
        backend=_section(BackendConfig, 'backend.', flat),
        input=_section(InputConfig, 'input.', flat),
        cameras=tuple(cameras),
        outputs=outputs,
        drivable=DrivableConfig(groups=tuple(groups), roi=parse_roi(flat.get('drivable.roi', []))),
        grid=_section(GridConfig, 'grid.', flat),
        diagnostics=_section(DiagnosticsConfig, 'diagnostics.', flat),
        qos=_section(QosConfig, 'qos.', flat),
        lifecycle=_section(LifecycleConfig, 'lifecycle.', flat),
    )


def load_config(path: str | Path | None, node_name: str = 'evit_segmentation',
                overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    """The node's configuration from its YAML params file (``None``: defaults), with CLI overrides applied."""
    flat = read_yaml_parameters(path, node_name) if path else {}
    flat.update(overrides or {})
    return from_flat(flat)

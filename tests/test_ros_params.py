"""Node parameters: names match evit_ros.config.from_flat, descriptors carry ranges, the shipped YAML declares
cleanly, bad values fail at startup, and run-time changes are applied, refused with the reason, or refused with
"requires restart". Runs on a bare rclpy node (no backend)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

rclpy = pytest.importorskip('rclpy')

from rclpy.parameter import Parameter  # noqa: E402

from evit_ros.config import NodeConfig, from_flat, read_yaml_parameters  # noqa: E402
from evit_ros.errors import ConfigError  # noqa: E402
from evit_ros.ros.params import (  # noqa: E402
    DOUBLE,
    DOUBLE_ARRAY,
    GLOBAL_SPECS,
    INT,
    STRING_ARRAY,
    ParameterGuard,
    all_specs,
    camera_specs,
    declare_all,
    group_specs,
)

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / 'config' / 'evit_ros.yaml'


@pytest.fixture(scope='module')
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def _node(context, flat: dict, name: str = 'evit_segmentation'):
    overrides = [Parameter(k, value=v) for k, v in flat.items()]
    return rclpy.create_node(name, context=context, parameter_overrides=overrides)


def _changed_value(spec):
    """A valid value different from the spec default."""
    if spec.choices:
        return next(c for c in spec.choices if c != spec.default)
    if spec.kind == 'bool':
        return not spec.default
    if spec.kind == INT:
        lo, hi, step = spec.range
        return int(spec.default + step) if spec.default + step <= hi else int(spec.default - step)
    if spec.kind == DOUBLE:
        lo, hi, _ = spec.range
        return (spec.default + hi) / 2.0
    if spec.kind == STRING_ARRAY:
        return None
    if spec.kind == DOUBLE_ARRAY:
        return [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    return spec.default + 'x' if spec.name != 'grid.frame_id' else 'odom'


def test_every_parameter_is_read_by_from_flat_with_the_same_default() -> None:
    specs = all_specs(['front'], ['drivable'])
    defaults = {n: s.default for n, s in specs.items() if s.default is not None}
    assert from_flat(defaults) == from_flat({}) == NodeConfig()
    base = from_flat({})
    for name, spec in specs.items():
        value = _changed_value(spec)
        if value is None:
            continue
        changed = from_flat({name: value})
        assert changed != base, f'{name}={value!r} did not change the NodeConfig: from_flat does not read it'


def test_descriptors_have_descriptions_ranges_and_restart_markers(context) -> None:
    node = _node(context, {'cameras': ['front', 'left'], 'drivable.groups': ['drivable', 'walkable'],
                           'drivable.walkable.classes': ['sidewalk']})
    try:
        flat = declare_all(node)
        names = set(flat) | {'outputs.palette_overrides', 'drivable.roi'}
        assert {s.name for s in camera_specs('left')} <= names
        assert 'drivable.walkable.classes' in names
        for name, spec in all_specs(['front', 'left'], ['drivable', 'walkable']).items():
            d = node.describe_parameter(name)
            assert d.description, name
            assert d.description.endswith('[requires restart]') == (not spec.live), name
            if spec.kind == INT:
                assert len(d.integer_range) == 1 and d.integer_range[0].to_value >= d.integer_range[0].from_value
            if spec.kind == DOUBLE:
                assert len(d.floating_point_range) == 1, name
            if spec.choices:
                assert all(c in d.additional_constraints for c in spec.choices)
        assert node.describe_parameter('input.height').integer_range[0].step == 32
    finally:
        node.destroy_node()


def test_shipped_yaml_declares_and_matches_config(context) -> None:
    flat_yaml = read_yaml_parameters(YAML)
    specs = all_specs(list(flat_yaml['cameras']), list(flat_yaml['drivable.groups']))
    assert set(flat_yaml) <= set(specs), set(flat_yaml) - set(specs)
    node = _node(context, flat_yaml)
    try:
        flat = declare_all(node)
        assert from_flat(flat) == from_flat(flat_yaml)
        assert flat['cameras.front.topic'] == flat_yaml['cameras.front.topic']
        # a double in the YAML stays a double parameter
        assert node.get_parameter('outputs.overlay_alpha').type_ == Parameter.Type.DOUBLE
    finally:
        node.destroy_node()


@pytest.mark.parametrize(('flat', 'needle'), [
    ({'input.height': 100}, 'input.height'),                       # not a multiple of 32: descriptor step
    ({'outputs.overlay_alpha': 1}, 'outputs.overlay_alpha'),      # integer for a double
    ({'outputs.mask_resolution': 'huge'}, 'outputs.mask_resolution'),
    ({'cameras': ['front', 'bad-name']}, 'bad-name'),
    ({'drivable.roi': [0.1, 0.2, 0.3]}, 'drivable.roi'),
])
def test_bad_values_fail_at_startup_naming_the_parameter(context, flat, needle) -> None:
    node = _node(context, flat, name='bad_params')
    try:
        with pytest.raises(ConfigError, match=needle.replace('.', r'\.')):
            from_flat(declare_all(node))
    finally:
        node.destroy_node()


def test_runtime_changes_applied_refused_with_reason_or_requires_restart(context) -> None:
    node = _node(context, {'cameras': ['front']}, name='guarded')
    applied: list[tuple[NodeConfig, dict]] = []
    try:
        flat = declare_all(node)
        specs = all_specs(['front'], ['drivable'])

        def check(cfg: NodeConfig) -> None:
            for _, classes in cfg.drivable.groups:
                if 'nonsense' in classes:
                    raise ConfigError('unknown cityscapes class nonsense')

        guard = ParameterGuard(flat, specs, lambda cfg, ch: applied.append((cfg, ch)), check=check)
        guard.attach(node)

        ok = node.set_parameters([Parameter('outputs.overlay_alpha', value=0.25)])[0]
        assert ok.successful, ok.reason
        assert applied[-1][0].outputs.overlay_alpha == 0.25 and applied[-1][1] == {'outputs.overlay_alpha': 0.25}
        assert node.get_parameter('outputs.overlay_alpha').value == 0.25

        ok = node.set_parameters([Parameter('cameras.front.mount.pitch_deg', value=5.0)])[0]
        assert ok.successful and applied[-1][0].cameras[0].mount.pitch_deg == 5.0

        n = len(applied)
        bad = node.set_parameters([Parameter('outputs.mask_resolution', value='huge')])[0]
        assert not bad.successful and 'outputs.mask_resolution' in bad.reason and 'camera' in bad.reason
        bad = node.set_parameters([Parameter('outputs.overlay_alpha', value=1.5)])[0]
        assert not bad.successful and bad.reason
        bad = node.set_parameters([Parameter('drivable.drivable.classes', value=['nonsense'])])[0]
        assert not bad.successful and 'nonsense' in bad.reason
        bad = node.set_parameters([Parameter('outputs.palette_overrides', value=['13:300,0,0'])])[0]
        assert not bad.successful and 'palette_overrides' in bad.reason
        for name, value in (('input.height', 256), ('backend.type', 'torch'), ('cameras.front.topic', '/x'),
                            ('qos.input_depth', 5), ('cameras', ['front', 'left'])):
            res = node.set_parameters([Parameter(name, value=value)])[0]
            assert not res.successful and 'requires restart' in res.reason and name in res.reason, (name, res)
        assert len(applied) == n
        assert node.get_parameter('input.height').value == 512
        # use_sim_time and other rclpy parameters are not ours to refuse
        assert node.set_parameters([Parameter('use_sim_time', value=False)])[0].successful
    finally:
        node.destroy_node()


def test_specs_table_is_consistent() -> None:
    names = [s.name for s in GLOBAL_SPECS] + [s.name for s in camera_specs('c')] + [s.name for s in group_specs('g')]
    assert len(names) == len(set(names))
    for s in GLOBAL_SPECS:
        if s.kind in (INT, DOUBLE):
            lo, hi, _ = s.range
            assert lo <= s.default <= hi, s.name
    live = {s.name for s in GLOBAL_SPECS if s.live}
    assert 'outputs.overlay_alpha' in live and 'input.height' not in live
    assert dataclasses.is_dataclass(GLOBAL_SPECS[0])

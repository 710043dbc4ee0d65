"""The launch file's decisions, executed for real with small stand-ins for the launch/launch_ros classes (their
wheels do not exist on PyPI): node-only log level, boolean arguments in any case, a missing params file fails,
``~``/``$VAR`` in params_file are expanded, the node's exit ends the launch (non-zero on failure), rviz2 missing
-> a WARNING and the node alone; and the RViz config subscribes to what the node publishes."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch' / 'segmentation.launch.py'


class _Action:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class _Config:
    def __init__(self, name: str, **kwargs) -> None:
        self.name = name

    def perform(self, context: dict) -> str:
        return context[self.name]


class _Shutdown(_Action):
    pass


class _Logger:
    """launch.logging.get_logger(name): records (level, message)."""

    records: list[tuple[str, str, str]] = []

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, level: str):
        return lambda msg, *args: self.records.append((self.name, level, msg % args if args else msg))


def _load_launch(monkeypatch, rviz_installed: bool) -> types.ModuleType:
    _Logger.records = []
    fakes = {
        'launch': {'LaunchDescription': _Action},
        'launch.actions': {'DeclareLaunchArgument': _Action, 'OpaqueFunction': _Action, 'Shutdown': _Shutdown},
        'launch.logging': {'get_logger': _Logger},
        'launch.substitutions': {'LaunchConfiguration': _Config, 'PathJoinSubstitution': _Action},
        'launch_ros': {},
        'launch_ros.actions': {'Node': _Action},
        'launch_ros.substitutions': {'FindPackageShare': _Action},
    }
    for name, attrs in fakes.items():
        mod = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(mod, k, v)
        monkeypatch.setitem(sys.modules, name, mod)
    sys.modules['launch'].logging = sys.modules['launch.logging']   # what `import launch.logging` binds
    ament = types.ModuleType('ament_index_python.packages')

    class PackageNotFoundError(KeyError):
        pass

    def get_package_prefix(name: str) -> str:
        if name == 'rviz2' and rviz_installed:
            return '/opt/ros/jazzy'
        raise PackageNotFoundError(name)

    ament.PackageNotFoundError, ament.get_package_prefix = PackageNotFoundError, get_package_prefix
    monkeypatch.setitem(sys.modules, 'ament_index_python', types.ModuleType('ament_index_python'))
    monkeypatch.setitem(sys.modules, 'ament_index_python.packages', ament)
    spec = importlib.util.spec_from_file_location('evit_launch_under_test', LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _context(**overrides: str) -> dict:
    ctx = {'params_file': str(REPO / 'config' / 'evit_ros.yaml'), 'namespace': '', 'use_sim_time': 'false',
           'rviz': 'false', 'log_level': 'info', 'autostart': 'true', 'fastdds_profile': ''}
    ctx.update(overrides)
    return ctx


def _node(actions: list, executable: str):
    return next(a for a in actions if a.kwargs.get('executable') == executable)


def test_launch_sets_only_the_node_log_level_and_accepts_any_case_booleans(monkeypatch) -> None:
    launch = _load_launch(monkeypatch, rviz_installed=True)
    desc = launch.generate_launch_description()
    assert any(isinstance(a, _Action) and a.kwargs.get('function') is launch._actions for a in desc.args[0])
    actions = launch._actions(_context(namespace='/car1', use_sim_time='True', log_level='debug'))
    node = _node(actions, 'segmentation_node')
    assert node.kwargs['arguments'] == ['--ros-args', '--log-level', 'car1.evit_segmentation:=debug']
    assert node.kwargs['parameters'][1] == {'use_sim_time': True}
    assert node.kwargs['namespace'] == '/car1'
    for text, value in (('TRUE', True), ('1', True), ('False', False), ('no', False)):
        assert launch.as_bool('use_sim_time', text) is value
    with pytest.raises(RuntimeError, match='not a boolean'):
        launch.as_bool('use_sim_time', 'maybe')
    with pytest.raises(RuntimeError, match='log_level'):
        launch._actions(_context(log_level='verbose'))


def test_launch_autostart_sets_the_lifecycle_parameter(monkeypatch) -> None:
    launch = _load_launch(monkeypatch, rviz_installed=False)
    declared = {a.args[0]: a.kwargs['default_value'] for a in launch.generate_launch_description().args[0]
                if a.args and 'default_value' in a.kwargs}
    assert declared['autostart'] == 'true'   # plain launch: configured and active as before
    for text, value in (('true', True), ('False', False), ('0', False)):
        node = _node(launch._actions(_context(autostart=text)), 'segmentation_node')
        assert node.kwargs['parameters'][2] == {'lifecycle.autostart': value}
    with pytest.raises(RuntimeError, match='autostart'):
        launch._actions(_context(autostart='later'))


def test_launch_fails_on_a_missing_params_file(monkeypatch, tmp_path) -> None:
    launch = _load_launch(monkeypatch, rviz_installed=True)
    with pytest.raises(RuntimeError, match='does not exist'):
        launch._actions(_context(params_file=str(tmp_path / 'nope.yaml')))


def test_launch_expands_home_and_variables_in_params_file(monkeypatch, tmp_path) -> None:
    """params_file:=~/my.yaml reached launch_ros unexpanded: 'not a file', and the node ran on built-in defaults."""
    launch = _load_launch(monkeypatch, rviz_installed=False)
    mine = tmp_path / 'my.yaml'
    mine.write_text('/**: {ros__parameters: {backend: {threads: 1}}}\n')
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('EVIT_TEST_CONF', str(tmp_path))
    for given in ('~/my.yaml', '$EVIT_TEST_CONF/my.yaml', '${EVIT_TEST_CONF}/my.yaml', f' {mine} '):
        node = _node(launch._actions(_context(params_file=given)), 'segmentation_node')
        assert node.kwargs['parameters'][0] == str(mine), given
    monkeypatch.delenv('EVIT_TEST_CONF')
    with pytest.raises(RuntimeError, match=r'\$EVIT_TEST_CONF/my.yaml does not exist'):
        launch._actions(_context(params_file='$EVIT_TEST_CONF/my.yaml'))
    with pytest.raises(RuntimeError, match=rf'~/other.yaml \({tmp_path}/other.yaml\) does not exist'):
        launch._actions(_context(params_file='~/other.yaml'))


class _Exit:
    def __init__(self, returncode: int) -> None:
        self.returncode = returncode


class _LaunchContext:
    def __init__(self, is_shutdown: bool) -> None:
        self.is_shutdown = is_shutdown


def test_node_exit_ends_the_launch_and_a_failure_makes_it_fail(monkeypatch) -> None:
    """ros2 launch printed exit 0 after the node's startup failure (exit 2): a systemd unit saw success."""
    launch = _load_launch(monkeypatch, rviz_installed=False)
    node = _node(launch._actions(_context()), 'segmentation_node')
    on_exit = node.kwargs['on_exit']
    done = on_exit(_Exit(0), _LaunchContext(is_shutdown=False))
    assert len(done) == 1 and isinstance(done[0], _Shutdown)
    # launch turns an exception raised by an event handler into one error line and exit code 1
    with pytest.raises(RuntimeError, match='evit_segmentation exited with code 2 \\(startup failed'):
        on_exit(_Exit(2), _LaunchContext(is_shutdown=False))
    with pytest.raises(RuntimeError, match='exited with code -11'):
        on_exit(_Exit(-11), _LaunchContext(is_shutdown=False))
    # after Ctrl-C the launch is ending anyway: no error for how the node went
    assert isinstance(on_exit(_Exit(-15), _LaunchContext(is_shutdown=True))[0], _Shutdown)


def test_launch_without_rviz2_warns_and_runs_the_node_alone(monkeypatch) -> None:
    launch = _load_launch(monkeypatch, rviz_installed=False)
    actions = launch._actions(_context(rviz='true'))
    assert [a.kwargs.get('executable') for a in actions if 'executable' in a.kwargs] == ['segmentation_node']
    assert not [a for a in actions if 'msg' in a.kwargs], 'a LogInfo logs at INFO level'
    assert len(_Logger.records) == 1
    name, level, msg = _Logger.records[0]
    assert level == 'warning' and 'rviz2 is not installed' in msg and '[WARN]' not in msg
    launch = _load_launch(monkeypatch, rviz_installed=True)
    rviz = _node(launch._actions(_context(rviz='True')), 'rviz2')
    assert rviz.kwargs['parameters'] == [{'use_sim_time': False}]


# --------------------------------------------------------------------------------------------------------------
# RViz config against the node's outputs

_DISPLAY_TYPES = {'rviz_default_plugins/Image': 'Image', 'rviz_default_plugins/Map': 'OccupancyGrid',
                  'rviz_default_plugins/Polygon': 'PolygonStamped'}
_RVIZ_RELIABILITY = {'Reliable': 'reliable', 'Best Effort': 'best_effort'}


def _node_outputs(cfg) -> dict[str, str]:
    """Every topic the node publishes for this configuration -> message type (relative names, as in RViz)."""
    out = {}
    for cam in cfg.cameras:
        base = f'segmentation/{cam.name}/'
        for name in ('mask', 'color_mask', 'overlay', 'confidence'):
            out[base + name] = 'Image'
        for g, _ in cfg.drivable.groups:
            out[f'{base}drivable/{g}/mask'] = 'Image'
            out[f'{base}drivable/{g}/grid'] = 'OccupancyGrid'
            out[f'{base}drivable/{g}/boundary'] = 'PolygonStamped'
    return out


def test_every_rviz_display_matches_a_node_output_or_the_camera() -> None:
    from evit_ros.config import load_config
    cfg = load_config(REPO / 'config' / 'evit_ros.yaml')
    outputs = _node_outputs(cfg)
    cameras = {c.subscribed_topic: c for c in cfg.cameras}
    doc = yaml.safe_load((REPO / 'config' / 'evit_ros.rviz').read_text())
    displays = [d for d in doc['Visualization Manager']['Displays'] if 'Topic' in d]
    assert len(displays) >= 4
    seen_camera = False
    for d in displays:
        topic = d['Topic']['Value']
        kind = _DISPLAY_TYPES[d['Class']]
        reliability = _RVIZ_RELIABILITY[d['Topic']['Reliability Policy']]
        assert d['Topic']['Durability Policy'] == 'Volatile', d['Name']
        if topic in cameras:
            seen_camera = True
            assert kind == 'Image' and cameras[topic].transport == 'raw'
            # cameras publish reliable by default; RViz must subscribe as the camera publishes (a best-effort
            # subscription to a reliable camera of large frames loses them through Fast DDS's 512 KiB segment)
            assert reliability == 'reliable', d['Name']
            continue
        assert topic in outputs, f'RViz display {d["Name"]!r} subscribes {topic}, which the node does not publish'
        assert outputs[topic] == kind, d['Name']
        assert reliability == cfg.qos.output_reliability, d['Name']
        if 'Update Topic' in d:   # the Map display's incremental updates: the node publishes whole grids only
            assert d['Update Topic']['Value'] == topic + '_updates'
    assert seen_camera


def test_launch_fastdds_profile_sets_the_nodes_switch_only_when_given(monkeypatch) -> None:
    from evit_ros.ros.transport import SWITCH, SWITCH_VALUES
    launch = _load_launch(monkeypatch, rviz_installed=False)
    assert launch.FASTDDS_PROFILE_ENV == SWITCH and launch.FASTDDS_PROFILE_CHOICES == SWITCH_VALUES
    assert _node(launch._actions(_context()), 'segmentation_node').kwargs['additional_env'] is None
    for text, value in (('off', 'off'), ('Node', 'node')):
        node = _node(launch._actions(_context(fastdds_profile=text)), 'segmentation_node')
        assert node.kwargs['additional_env'] == {SWITCH: value}
    with pytest.raises(RuntimeError, match='fastdds_profile:=udp'):
        launch._actions(_context(fastdds_profile='udp'))

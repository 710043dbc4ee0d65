"""The ROS layer on every distro it supports: Humble, Jazzy and Kilted.

Humble has no wheels, so what the ROS layer (``evit_ros/ros/*.py``, ``evit_ros/bench/node*.py``) uses of rclpy and
of ROS interfaces is found by static analysis of its source (tests/rclpy_usage.py, so a newly used name is caught
without editing this file) and checked against Humble's names (tests/data/rclpy_humble_names.json, extracted from
Humble's sources by tools/extract_rclpy_names.py). What Humble lacks must be behind a fallback and listed in
:data:`HUMBLE_FALLBACKS` with the reason. The same uses are checked against the rclpy installed here (Jazzy in
``.venv``, Kilted in ``make test-compat``'s ``.venv-compat``), and the private rclpy internals the node relies on
are checked to exist in Humble's source and on real objects of the installed rclpy. Finally the Fast DDS profile
variable the node names is shown to be the one this distro's Fast DDS reads.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rclpy_usage import REPO, Facts, Use, analyze, analyze_source, iter_missing

rclpy = pytest.importorskip('rclpy')

HUMBLE_FILE = REPO / 'tests' / 'data' / 'rclpy_humble_names.json'
PROFILE = REPO / 'config' / 'fastdds_large_frames.xml'

# What Humble lacks (a module, or a member name on any class) -> where the fallback is and why it is enough.
HUMBLE_FALLBACKS = {
    'rclpy.event_handler': 'Iron+ name of rclpy.qos_event; ros/node.py imports SubscriptionEventCallbacks from '
                           'rclpy.qos_event on ImportError (Humble has it there)',
    'rclpy.event_handler.SubscriptionEventCallbacks': 'see rclpy.event_handler',
    'rclpy.event_handler.PublisherEventCallbacks': 'see rclpy.event_handler',
    'add_post_set_parameters_callback': 'Jazzy+; under hasattr in ros/node.py and ros/params.py: on Humble the '
                                        'on-set callback applies accepted changes itself (post_set_supported=False)',
    'rclpy.qos_event.PublisherEventCallbacks': "Humble's PublisherEventCallbacks has no matched= (Iron+); ros/node.py "
                                               'retries without it on TypeError: no matched/unmatched counts there',
}
# Private internals (no public API in all three distros) -> why the node needs them. Each must exist in Humble's
# source and on the installed rclpy's real objects (tests below); the analysis finds every private use.
PRIVATE_INTERNALS = {
    '_service_change_state': "LifecycleNode's change_state service: its callback is wrapped so that a transition "
                             'the current state lacks is answered success=false instead of raising out of the '
                             'executor (Humble, Jazzy); rclpy has no hook for it',
    '_parameter_overrides': "Node's overrides from params files and -p: their types name the fix for a refused "
                            'parameter, and names no parameter has are reported as typos; no public getter',
    '_state_machine': "LifecycleNode's state machine: the transitions of the current state, named in the one "
                      'refusal line of a transition the state lacks; under try, else the line names none',
    '_data': 'the generated slot behind sensor_msgs/Image.data: a zero-copy payload (the public setter copies '
             'when field checks are off); under hasattr, else the public setter',
}
# the analysis must find at least these (it cannot go blind without this test failing)
MUST_FIND = {
    'rclpy.lifecycle.LifecycleNode', 'rclpy.qos.QoSProfile(durability=)', 'rclpy.qos.ReliabilityPolicy.RELIABLE',
    'rclpy.node.Node.create_subscription(event_callbacks=)', 'rclpy.node.Node.get_publishers_info_by_topic',
    'rclpy.lifecycle.node.LifecycleNode.trigger_configure', 'rclpy.lifecycle.node.LifecycleNode.create_timer',
    'rclpy.node.Node.declare_parameter', 'rclpy.init(signal_handler_options=)', 'rclpy.clock.Clock(clock_type=)',
    'rclpy.executors.ExternalShutdownException', 'rclpy.parameter.Parameter.Type.STRING_ARRAY',
    'sensor_msgs/msg/Image', 'sensor_msgs/msg/Image.step', 'diagnostic_msgs/msg/DiagnosticStatus.hardware_id',
    'rcl_interfaces/srv/GetParameters/Request.names', 'vision_msgs/msg/LabelInfo',
    'rcl_interfaces/msg/SetParametersResult.successful', 'nav_msgs/msg/OccupancyGrid.info',
}


@pytest.fixture(scope='module')
def humble() -> Facts:
    return Facts(json.loads(HUMBLE_FILE.read_text()))


@pytest.fixture(scope='module')
def humble_uses(humble: Facts) -> list[Use]:
    return list(dict.fromkeys(analyze(humble)))


def _installed_interface(key: str) -> dict[str, Any] | None:
    """Fields and constants of an installed message/service type (None: not installed)."""
    pkg, kind, *rest = key.split('/')
    try:
        cls: Any = getattr(importlib.import_module(f'{pkg}.{kind}'), rest[0])
    except (ImportError, AttributeError):
        return None
    for part in rest[1:]:
        cls = getattr(cls, part)
    if not hasattr(cls, 'get_fields_and_field_types'):
        return {'fields': [], 'constants': []}
    return {'fields': list(cls.get_fields_and_field_types()),
            'constants': [n for n in dir(cls) if n.isupper() and not n.startswith('_')]}


@pytest.fixture(scope='module')
def installed() -> Facts:
    """Facts of the rclpy installed here, by the same extractor, and its real message classes."""
    sys.path.insert(0, str(REPO / 'tools'))
    try:
        import extract_rclpy_names
    finally:
        sys.path.remove(str(REPO / 'tools'))
    data = extract_rclpy_names.extract_rclpy(Path(rclpy.__file__).parent)
    return Facts(data, interfaces=_installed_interface)


def _fallback(use: Use) -> str | None:
    for key, why in HUMBLE_FALLBACKS.items():
        if use.target == key or use.target.endswith('.' + key):
            return why
    return None


def _listing(uses: list[Use]) -> str:
    return '\n'.join(f'  {u.where}: {u.kind} {u.name}' + (f' (guard: {u.guard})' if u.guard else '') for u in uses)


def test_the_humble_facts_come_from_humbles_sources() -> None:
    data = json.loads(HUMBLE_FILE.read_text())
    assert data['made_by'] == 'tools/extract_rclpy_names.py' and data['label'] == 'humble'
    assert data['version'].startswith('3.3.'), data['version']    # rclpy 3.3.x is Humble's
    assert data['sources']['rclpy']['ref'] == 'humble' and len(data['sources']['rclpy']['commit']) == 40
    assert {s['repository'] for s in data['sources']['interfaces']} == {
        'ros2/rcl_interfaces', 'ros2/common_interfaces', 'ros-perception/vision_msgs'}
    assert 'rclpy.node.Node' in data['classes'] and 'sensor_msgs/msg/Image' in data['interfaces']


def test_the_analysis_finds_what_the_ros_layer_uses(humble_uses: list[Use]) -> None:
    found = {u.name for u in humble_uses}
    assert not MUST_FIND - found, sorted(MUST_FIND - found)
    assert len(found) > 150, len(found)


def test_every_name_the_ros_layer_uses_exists_in_humble_or_has_a_fallback(humble: Facts,
                                                                          humble_uses: list[Use]) -> None:
    missing = list(iter_missing(humble_uses, humble))
    # the Humble path itself (an except-ImportError branch) must exist, so only try/hasattr/getattr guard
    unguarded = [u for u in missing if u.guard not in ('try', 'hasattr', 'getattr')]
    assert not unguarded, 'used by the ROS layer, missing in Humble, no fallback:\n' + _listing(unguarded)
    unlisted = [u for u in missing if _fallback(u) is None]
    assert not unlisted, 'missing in Humble behind a guard, but not in HUMBLE_FALLBACKS:\n' + _listing(unlisted)
    # no stale entry: each fallback is for something used and really missing in Humble
    for key in HUMBLE_FALLBACKS:
        assert any(u.target == key or u.target.endswith('.' + key) for u in missing), f'{key}: stale entry'


def test_every_name_exists_in_the_installed_rclpy_or_has_a_fallback(installed: Facts) -> None:
    uses = list(dict.fromkeys(analyze(installed)))
    assert {u.name for u in uses} >= {n for n in MUST_FIND if not n.startswith('rclpy.lifecycle.node')}
    missing = list(iter_missing(uses, installed))
    unguarded = [u for u in missing if not u.guard]
    assert not unguarded, (f'used by the ROS layer, missing in the installed rclpy {_version()}:\n'
                           + _listing(unguarded))
    # the newer API that Humble lacks is what this distro (Jazzy or later) runs
    for u in uses:
        if _fallback(u) and u.kind != 'name':
            assert installed.has(u), f'{u.name} is missing in rclpy {_version()}'


def _version() -> str:
    from importlib.metadata import version
    return version('rclpy')


def test_the_analysis_flags_a_name_humble_lacks_unless_guarded(humble: Facts) -> None:
    src = '''
import rclpy
from rclpy.event_handler import SubscriptionEventCallbacks
from sensor_msgs.msg import Image, NoSuchImage
def f(node):
    node.create_subscription(Image, 't', print, 1, no_such_option=True)
    node.add_post_set_parameters_callback(print)
    rclpy.init(context=None, domain_id=3)
    Image(height=1, no_such_field=2)
    if hasattr(node, 'add_post_set_parameters_callback'):
        node.add_post_set_parameters_callback(print)
    return getattr(node, '_parameter_overrides', {})
'''
    missing = {(u.name, u.guard) for u in iter_missing(analyze_source(src, humble), humble)}
    assert missing == {
        ('rclpy.event_handler', ''), ('rclpy.event_handler.SubscriptionEventCallbacks', ''),
        ('rclpy.node.Node.create_subscription(no_such_option=)', ''),
        ('rclpy.node.Node.add_post_set_parameters_callback', ''), ('sensor_msgs/msg/NoSuchImage', ''),
        ('sensor_msgs/msg/Image.no_such_field', ''), ('rclpy.node.Node.add_post_set_parameters_callback', 'hasattr'),
    }, missing


def test_private_internals_exist_in_humble_and_in_the_installed_rclpy(humble: Facts, humble_uses: list[Use]) -> None:
    used = {u.target.rsplit('.', 1)[-1] if u.kind == 'member' else u.detail for u in humble_uses if u.private}
    assert used == set(PRIVATE_INTERNALS), f'private internals used: {sorted(used)}; list each with its reason'
    assert all(u.guard in ('getattr', 'hasattr') for u in humble_uses if u.private), \
        _listing([u for u in humble_uses if u.private and u.guard not in ('getattr', 'hasattr')])
    # Humble, from its source: where each lives
    assert humble.member('rclpy.lifecycle.node.LifecycleNode', '_service_change_state')
    assert humble.member('rclpy.service.Service', 'callback')
    assert humble.member('rclpy.node.Node', '_parameter_overrides')
    assert humble.has(Use('', 'field', 'sensor_msgs/msg/Image', '_data'))
    # the installed rclpy (Jazzy or Kilted), on real objects
    from rclpy.lifecycle import LifecycleNode
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = LifecycleNode('private_internals_probe', context=ctx,
                             parameter_overrides=[Parameter('input.width', value=512)])
        try:
            assert callable(node._service_change_state.callback)
            given = node._parameter_overrides['input.width']
            assert given.value == 512 and given.type_.name == 'INTEGER'
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
    msg = Image()
    assert '_data' in type(msg).__slots__
    import array
    payload = array.array('B', b'\x01\x02')
    msg._data = payload
    assert msg.data is payload    # the slot is what the public property reads


def _start_rclpy(env: dict[str, str]) -> str:
    """What a process that starts and ends one rclpy node prints (Fast DDS writes to stdout, the RMW to stderr)."""
    code = ('import rclpy; rclpy.init(); n = rclpy.create_node("profiles_probe"); n.destroy_node(); '
            'rclpy.shutdown(); print("done")')
    clean = {k: v for k, v in os.environ.items() if k not in ('FASTRTPS_DEFAULT_PROFILES_FILE',
                                                               'FASTDDS_DEFAULT_PROFILES_FILE')}
    proc = subprocess.run([sys.executable, '-c', code], env={**clean, **env}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and 'done' in lines, proc.stdout
    return '\n'.join(line for line in lines if line != 'done')


def test_the_profile_variable_the_node_names_is_the_one_this_fast_dds_reads(tmp_path: Path) -> None:
    from evit_ros.ros.diagnostics import PROFILES_FILE_FASTDDS2, PROFILES_FILE_FASTDDS3, profiles_file_variable
    var = profiles_file_variable()
    other = PROFILES_FILE_FASTDDS3 if var == PROFILES_FILE_FASTDDS2 else PROFILES_FILE_FASTDDS2
    # read: Fast DDS reports a missing profiles file named there
    assert 'XMLPARSER' in _start_rclpy({var: str(tmp_path / 'missing.xml')})
    # the shipped profile through it: not a word (no error, no deprecation warning)
    assert _start_rclpy({var: str(PROFILE)}) == ''
    # the other name: ignored by Fast DDS 2 (Jazzy), honoured with a deprecation warning by Fast DDS 3 (Kilted)
    err = _start_rclpy({other: str(PROFILE)})
    assert err == '' if var == PROFILES_FILE_FASTDDS2 else 'deprecated' in err, err

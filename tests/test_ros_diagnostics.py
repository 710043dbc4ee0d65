"""Diagnostics statuses from camera/engine statistics: rates, percentiles, bad frames, levels and messages."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('rclpy')

from evit_ros.config import DiagnosticsConfig  # noqa: E402
from evit_ros.ros.diagnostics import STAGES, CameraStats, EngineStats  # noqa: E402

CFG = DiagnosticsConfig(expected_rate_hz=10.0, latency_budget_ms=100.0, silence_timeout_s=2.0)


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def test_camera_status_rates_percentiles_and_ok() -> None:
    st = CameraStats('front', '/front/image_raw', ('road', 'sidewalk'))
    t0 = st.created
    st._t_mark = t0
    for i in range(20):
        st.on_receive(now=t0 + 0.1 * i)
        st.on_result({'decode': 1.0, 'infer': 10.0 + i, 'end_to_end': 40.0 + i}, np.array([0.75, 0.25]),
                      {'drivable': (0.75, 0.5)}, now=t0 + 0.1 * i + 0.02)
    s = st.status('evit_segmentation', CFG, now=t0 + 2.0)
    v = _values(s)
    assert s.level == b'\x00' and s.message == 'ok'
    assert float(v['input_rate_hz']) == pytest.approx(10.0) and float(v['output_rate_hz']) == pytest.approx(10.0)
    assert v['rate_window_s'] == '1.9' and v['frames_missing'] == '0'
    assert float(v['latency.infer.p50_ms']) == pytest.approx(19.5) and float(v['latency.infer.max_ms']) == 29.0
    assert float(v['latency.end_to_end.p95_ms']) == pytest.approx(np.percentile(np.arange(40, 60), 95), abs=0.01)
    assert v['latency.preprocess.p50_ms'] == 'nan'          # a stage never reported stays nan
    assert all(f'latency.{s}.p50_ms' in v for s in STAGES)
    assert v['class_fraction.road'] == '0.7500' and v['drivable.drivable.roi_fraction'] == '0.5000'
    assert v['total_dropped_frames'] == '0' and v['expected_frequency'] == '10.00'


def test_camera_status_warns_and_errors() -> None:
    st = CameraStats('left', '/left/image_raw', ('road',))
    t0 = st.created
    s = st.status('n', CFG, now=t0 + 3.0)
    assert s.level == b'\x01' and 'no frames received yet on /left/image_raw' in s.message
    st.on_receive()
    st.on_bad('corrupt')
    st.on_bad('corrupt')
    st.on_drop()
    st.on_result({'end_to_end': 150.0}, None, {})
    st.last_rx = t0 + 3.5
    s = st.status('n', CFG, now=t0 + 4.0)
    v = _values(s)
    assert s.level == b'\x02' and 'over budget' in s.message and '2 bad frame(s)' in s.message
    assert v['bad_frames'] == '2' and v['bad_frames.corrupt'] == '2' and v['dropped_frames'] == '1'
    s = st.status('n', CFG, now=t0 + 10.0)
    assert s.level == b'\x02' and 'camera silent for 6.5 s' in s.message
    assert 'bad frame' not in s.message          # counted once, in the report after they happened


def test_engine_status_reports_backend_and_failures() -> None:
    e = EngineStats({'backend': 'onnxruntime', 'precision': 'fp32'})
    e.on_batch(2, {'preprocess': 1.0, 'infer': 20.0})
    s = e.status('n', CFG)
    v = _values(s)
    assert s.level == b'\x00' and v['backend'] == 'onnxruntime' and v['mean_batch_size'] == '2.00'
    e.on_batch(1, {'infer': 500.0})
    e.on_batch(1, {'infer': 400.0})
    assert e.status('n', CFG).level == b'\x01'
    e.on_error('BackendError: boom')
    s = e.status('n', CFG)
    assert s.level == b'\x02' and 'boom' in s.message



def test_lost_frames_warning_names_the_cause_and_both_fixes() -> None:
    from evit_ros.ros.diagnostics import lost_frames_hint
    hint = lost_frames_hint('best_effort', 6 * 1024 * 1024)
    assert '6144 KiB' in hint and '512 KiB' in hint and 'best effort' in hint
    assert 'fastdds_large_frames.xml' in hint and 'compressed' in hint
    assert lost_frames_hint('reliable', 6 * 1024 * 1024) == ''          # reliable frames are not lost this way
    assert lost_frames_hint('best_effort', 300 * 1024) == ''            # small frames fit the segment
    assert 'larger than 512 KiB' in lost_frames_hint('best_effort', 0)  # nothing arrived yet: size unknown
    # the variable this distro's Fast DDS reads comes first, then both per distro
    from evit_ros.ros.diagnostics import profiles_file_variable
    first = hint.split('fastdds_large_frames.xml')[0]
    assert f'{profiles_file_variable()}=<share>/evit_ros/config/' in first
    assert 'Jazzy (Fast DDS 2) read FASTRTPS_DEFAULT_PROFILES_FILE' in hint
    assert 'Kilted and later (Fast DDS 3) read FASTDDS_DEFAULT_PROFILES_FILE' in hint


@pytest.mark.parametrize(('rclpy_version', 'distro', 'variable'), [
    ('3.3.15', '', 'FASTRTPS_DEFAULT_PROFILES_FILE'),     # Humble: Fast DDS 2.6
    ('7.1.6', '', 'FASTRTPS_DEFAULT_PROFILES_FILE'),      # Jazzy: Fast DDS 2.14
    ('9.1.2', '', 'FASTDDS_DEFAULT_PROFILES_FILE'),       # Kilted: Fast DDS 3.2
    ('10.0.1', '', 'FASTDDS_DEFAULT_PROFILES_FILE'),      # Rolling
    ('', 'humble', 'FASTRTPS_DEFAULT_PROFILES_FILE'),     # no rclpy metadata: $ROS_DISTRO decides
    ('', 'kilted', 'FASTDDS_DEFAULT_PROFILES_FILE'),
    ('', '', 'FASTRTPS_DEFAULT_PROFILES_FILE'),           # nothing known: the name every distro reads
])
def test_profiles_file_variable_is_the_one_each_distro_reads(rclpy_version, distro, variable) -> None:
    from evit_ros.ros.diagnostics import profiles_file_variable
    assert profiles_file_variable(rclpy_version, distro) == variable


def test_profiles_file_variable_follows_the_running_rclpy() -> None:
    from importlib.metadata import version

    from evit_ros.ros.diagnostics import profiles_file_variable
    major = int(version('rclpy').split('.')[0])
    expected = 'FASTDDS_DEFAULT_PROFILES_FILE' if major >= 9 else 'FASTRTPS_DEFAULT_PROFILES_FILE'
    assert profiles_file_variable() == expected


def test_class_fractions_are_taken_once_per_report_and_groups_merge() -> None:
    st = CameraStats('front', '/front/image_raw', ('road', 'sidewalk'))
    assert st.fractions_due()                                  # nothing stored yet
    st.on_result({}, np.array([0.6, 0.4]), {'drivable': (0.6, 0.5), 'walkable': (0.4, 0.1)})
    assert not st.fractions_due()                              # the next report has them
    st.on_result({}, None, {'drivable': (0.7, 0.55)})         # a frame that computed only the drivable group
    v = _values(st.status('evit_segmentation', CFG))
    assert v['class_fraction.road'] == '0.6000'
    assert v['drivable.drivable.fraction'] == '0.7000' and v['drivable.walkable.fraction'] == '0.4000'
    assert st.fractions_due()                                  # reported: the next frame counts again
    st.on_result({}, np.array([1.0, 0.0]), {'drivable': (1.0, 1.0)})   # a full frame replaces (groups renamed)
    v = _values(st.status('evit_segmentation', CFG))
    assert v['class_fraction.road'] == '1.0000' and 'drivable.walkable.fraction' not in v

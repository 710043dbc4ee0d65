"""Packaging: the colcon install layout every vehicle uses, package.xml, and the ROS-free core."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from import_graph_support import load_import_graph

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _tracked_files() -> list[str]:
    out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line and (REPO / line).is_file()]


def test_package_xml_declares_ament_python_and_runtime_deps() -> None:
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'evit_ros'
    assert root.find('export/build_type').text == 'ament_python'
    deps = {e.text for e in root.findall('exec_depend')}
    for dep in ('rclpy', 'sensor_msgs', 'std_msgs', 'nav_msgs', 'geometry_msgs', 'diagnostic_msgs',
                'python3-numpy', 'python3-opencv', 'python3-yaml'):
        assert dep in deps, dep
    assert {e.text for e in root.findall('test_depend')} >= {'python3-pytest'}



# rosdep keys checked against ros/rosdistro rosdep/python.yaml (snapshot of 2026-08-22): these exist there.
# onnx and TensorRT have no key, so package.xml names them in a comment instead; cuda-python has none either,
# so this package defines python3-cuda-python-pip in config/rosdep.yaml (accepted below from that file).
ROSDEP_PYTHON_KEYS = {'python3-numpy', 'python3-opencv', 'python3-yaml', 'python3-onnxruntime-pip', 'python3-torch',
                      'python3-pytest'}


def test_package_xml_runtime_deps_use_real_rosdep_keys_with_a_comment_for_per_backend_ones() -> None:
    text = (REPO / 'package.xml').read_text()
    root = ET.parse(REPO / 'package.xml').getroot()
    deps = [e.text for e in root.findall('exec_depend')]
    assert 'python3-onnxruntime-pip' in deps and 'python3-torch' in deps
    import yaml
    own_keys = set(yaml.safe_load((REPO / 'config' / 'rosdep.yaml').read_text()))
    for dep in deps:
        assert not dep.startswith('python') or dep in ROSDEP_PYTHON_KEYS | own_keys, f'{dep} is not a known rosdep key'
    for key in ('python3-onnxruntime-pip', 'python3-torch', 'python3-cuda-python-pip'):   # per-backend: a comment
        # right before says who needs it
        before = text[:text.index(f'<exec_depend>{key}</exec_depend>')].rstrip()
        assert before.endswith('-->'), key
    assert 'onnx' in text and 'cuda-python' in text and 'TensorRT' in text


@pytest.mark.slow
def test_colcon_build_installs_where_ros_expects(tmp_path: Path) -> None:
    colcon = VENV_BIN / 'colcon'
    if not colcon.exists():
        pytest.skip('colcon is not installed in this environment (make venv installs it)')
    src = tmp_path / 'ws' / 'src' / 'evit_ros'
    for rel in _tracked_files():
        if rel.startswith(('.venv/', 'engines/', 'demo_out/')):
            continue
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    ws = tmp_path / 'ws'
    env = {'PATH': f'{VENV_BIN}:/usr/bin:/bin', 'HOME': str(tmp_path)}
    # the README's command (`--packages-select` needs colcon-package-selection, from colcon-common-extensions)
    proc = subprocess.run([str(colcon), 'build', '--packages-select', 'evit_ros', '--base-paths', 'src',
                           '--event-handlers', 'console_direct-'],
                          cwd=ws, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (ws / 'install' / 'setup.bash').is_file(), 'colcon-bash missing: `source install/setup.bash` would fail'
    share = ws / 'install' / 'evit_ros' / 'share' / 'evit_ros'
    assert (share / 'package.xml').is_file()
    assert (share / 'launch' / 'segmentation.launch.py').is_file()
    assert (share / 'config' / 'evit_ros.yaml').is_file()
    assert (share / 'config' / 'evit_ros.rviz').is_file()
    index = ws / 'install' / 'evit_ros' / 'share' / 'ament_index' / 'resource_index' / 'packages'
    assert (index / 'evit_ros').is_file()
    for script in ('segmentation_node', 'evit-ros'):
        exe = ws / 'install' / 'evit_ros' / 'lib' / 'evit_ros' / script
        assert exe.is_file(), f'{exe} missing: ros2 run/launch look for executables in lib/<package>'
        assert exe.read_text().startswith('#!') and 'evit' in exe.read_text()
    # the installed CLI runs from the install space alone (as `ros2 run evit_ros evit-ros` would)
    site = next((ws / 'install' / 'evit_ros' / 'lib').glob('python3*/site-packages'))
    run_env = dict(env, PYTHONPATH=f'{site}:{os.pathsep.join(p for p in sys.path if "site-packages" in p)}')
    out = subprocess.run([str(VENV_BIN / 'python'), str(ws / 'install' / 'evit_ros' / 'lib' / 'evit_ros' / 'evit-ros'),
                          '--help'], capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and 'export' in out.stdout, out.stderr[-2000:]
    import_check = subprocess.run([str(VENV_BIN / 'python'), '-c', 'import evit_ros; print(evit_ros.__file__)'],
                                  capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=60)
    assert str(site) in import_check.stdout, import_check.stdout + import_check.stderr
    site = list((ws / 'install' / 'evit_ros' / 'lib').glob('python3*/site-packages/evit_ros/ros'))
    assert site, 'the evit_ros package itself was not installed'


def _core_modules() -> list[str]:
    """Every module of the package but the node's room and ``__main__`` (which would run the CLI)."""
    ig = load_import_graph()
    return [m for m in ig.modules() if ig.room(m) not in ('ros', 'entry')]


def test_core_never_imports_ros() -> None:
    """Every module outside evit_ros.ros imports with rclpy and all ROS message packages made unimportable."""
    modules = _core_modules()
    assert 'evit_ros.config' in modules and 'evit_ros.pipeline' in modules
    script = textwrap.dedent(f'''
        import importlib, importlib.abc, sys
        BLOCKED = ('rclpy', 'rosidl', 'rpyutils', 'builtin_interfaces', 'std_msgs', 'sensor_msgs', 'nav_msgs',
                   'geometry_msgs', 'diagnostic_msgs', 'rosgraph_msgs', 'rcl_interfaces', 'launch', 'launch_ros',
                   'cv_bridge', 'tf2_ros')
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError(f'ROS module {{name}} imported by the ROS-free core')
                return None
        sys.meta_path.insert(0, Block())
        failed = []
        for mod in {modules!r}:
            try:
                importlib.import_module(mod)
            except ImportError as exc:
                failed.append(f'{{mod}}: {{exc}}')
        print('\\n'.join(failed))
        sys.exit(1 if failed else 0)
    ''')
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_lists_every_command() -> None:
    proc = subprocess.run([sys.executable, '-m', 'evit_ros', '--help'], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for cmd in ('export', 'build-engine', 'bench', 'eval', 'train-synthetic', 'demo'):
        assert cmd in proc.stdout


def test_cuda_python_is_declared_with_a_rosdep_key_this_package_defines() -> None:
    """rosdistro has no cuda-python key: package.xml's key must resolve through config/rosdep.yaml."""
    import yaml
    deps = {e.text for e in ET.parse(REPO / 'package.xml').getroot().findall('exec_depend')}
    assert 'python3-cuda-python-pip' in deps
    rules = yaml.safe_load((REPO / 'config' / 'rosdep.yaml').read_text())['python3-cuda-python-pip']['ubuntu']
    # JetPack 6: the 12.2 series, which runs on 6.0's CUDA 12.2 driver and on the newer ones (not 12.9)
    assert rules['jammy']['pip']['packages'] == ['cuda-python>=12.2,<12.3']
    text = (REPO / 'config' / 'rosdep.yaml').read_text()
    assert 'older runtime on a' in text and 'JetPack 6.0' in text     # the reason sits next to the rule
    assert rules['noble']['pip']['packages'] == ['cuda-python>=13,<14']       # JetPack 7: CUDA 13
    reqs = (REPO / 'requirements.txt').read_text()
    assert 'cuda-python==12.' in reqs

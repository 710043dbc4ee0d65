"""The package's import graph: rooms import only downward, no module circles, ROS only in the node's room.

The checks live in ``tools/import_graph.py`` (``python tools/import_graph.py`` prints the graph); lazy imports
inside functions count like module-level ones.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from import_graph_support import load_import_graph

REPO = Path(__file__).resolve().parents[1]
ig = load_import_graph()


@pytest.fixture(scope='module')
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    return ig.imports()


def test_every_room_is_in_the_layer_order() -> None:
    rooms = {p.name for p in (REPO / 'evit_ros').iterdir() if p.is_dir() and (p / '__init__.py').exists()}
    assert rooms - set(ig.LAYERS) == set(), 'add the new room to LAYERS in tools/import_graph.py, in its place'


def test_no_room_imports_a_higher_one(graph) -> None:
    edges, _ = graph
    assert ig.upward(edges) == []


def test_no_modules_import_each_other_in_a_circle(graph) -> None:
    edges, _ = graph
    assert ig.circles(edges) == []


def test_ros_is_imported_only_by_the_node_and_the_node_benchmarks(graph) -> None:
    _, external = graph
    assert ig.ros_outside_the_ros_room(external) == []
    assert 'rclpy' in external['evit_ros.ros.segmentation_node']   # the check sees the real importers


def test_the_device_layer_sits_below_export_and_backends(graph) -> None:
    edges, _ = graph
    rooms = ig.room_edges(edges)
    assert 'device' in rooms['export'] and 'device' in rooms['backends']
    assert rooms['device'] <= {'foundation'}


def test_the_checks_catch_an_upward_import_a_lazy_circle_and_stray_ros(tmp_path: Path) -> None:
    pkg = tmp_path / 'evit_ros'
    for room in ('model', 'cli'):
        (pkg / room).mkdir(parents=True)
        (pkg / room / '__init__.py').write_text('')
    (pkg / '__init__.py').write_text('')
    (pkg / 'errors.py').write_text('')
    (pkg / 'model' / 'a.py').write_text('from evit_ros.cli import run\n')            # upward
    (pkg / 'model' / 'b.py').write_text('def f():\n    from evit_ros.model import c\n')   # lazy, circle with c
    (pkg / 'model' / 'c.py').write_text('from . import b\nimport rclpy\n')          # relative import, ROS
    (pkg / 'cli' / '__init__.py').write_text('from evit_ros.errors import *\nrun = 1\n')
    edges, external = ig.imports(tmp_path)
    assert ig.upward(edges, tmp_path) == [('evit_ros.model.a', 'evit_ros.cli')]
    assert ig.circles(edges) == [['evit_ros.model.b', 'evit_ros.model.c']]
    assert ig.ros_outside_the_ros_room(external) == [('evit_ros.model.c', 'rclpy')]


def _layout_rows() -> list[str]:
    text = (REPO / 'docs' / 'development.md').read_text()
    section = text.split('## Layout', 1)[1]
    return [line for line in section.splitlines() if line.startswith('| `')]


def test_the_layout_table_matches_the_tree() -> None:
    """Every room and top-level module has a row in docs/development.md, and every path a row names exists."""
    named: set[str] = set()
    for row in _layout_rows():
        cell = row.split('|')[1]
        for path in cell.replace('`', '').split(','):
            path = path.strip().rstrip('/')
            assert (REPO / path).exists(), f'docs/development.md Layout names {path}, which does not exist'
            named.add(path)
    package = REPO / 'evit_ros'
    wanted = {f'evit_ros/{p.name}' for p in package.iterdir()
              if (p.is_dir() and not p.name.startswith('__')) or (p.suffix == '.py' and not p.name.startswith('__'))}
    assert wanted - named == set(), 'add these to the Layout table of docs/development.md'
    for room in (p for p in package.iterdir() if p.is_dir() and (p / '__init__.py').exists()):
        row = next(r for r in _layout_rows() if r.split('|')[1].strip(' `/') == f'evit_ros/{room.name}')
        modules = {m.stem for m in room.glob('*.py') if m.stem != '__init__'}
        missing = {m for m in modules if f'`{m}`' not in row}
        assert not missing, f'the Layout row of evit_ros/{room.name}/ does not name {sorted(missing)} (in backticks)'

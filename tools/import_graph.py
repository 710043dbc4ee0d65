"""The import graph of the evit_ros package: which room imports which, what runs upward, what is circular.

Every ``import`` counts, at module level or inside a function (a lazy import is still a dependency). A room
is a sub-package (``model``, ``device``, ...); the top-level modules (``errors``, ``config``, ...) are the
``foundation``. Rooms are ordered from the bottom up in :data:`LAYERS`; a module may import its own room or
a lower one, never a higher one, and no set of modules may import each other in a circle.

    python tools/import_graph.py            # rooms and arrows; exit 1 on an upward arrow or a circle
    python tools/import_graph.py --modules  # every module-to-module arrow that crosses rooms

``tests/test_architecture.py`` runs the same checks.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'evit_ros'

# bottom to top: each room may import only itself and the rooms before it
LAYERS: tuple[str, ...] = ('foundation', 'model', 'device', 'pipeline', 'export', 'backends', 'synthetic', 'eval',
                           'ros', 'bench', 'cli', 'entry')
# ROS client libraries and message packages: the node's room imports them; so do the node benchmarks (node, rig), which
# drive a node over DDS. Everything else imports without a ROS installation.
ROS_MODULES = ('rclpy', 'rosidl_runtime_py', 'rpyutils', 'builtin_interfaces', 'std_msgs', 'sensor_msgs',
               'nav_msgs', 'geometry_msgs', 'diagnostic_msgs', 'lifecycle_msgs', 'rcl_interfaces', 'vision_msgs')
ROS_IMPORTERS = ('evit_ros.ros', 'evit_ros.bench.node', 'evit_ros.bench.node_baselines', 'evit_ros.bench.rig')


def modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        out['.'.join(parts)] = path
    return out


def _targets(mod: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ''
    if node.level:
        here = mod.split('.') if is_package else mod.split('.')[:-1]
        here = here[:len(here) - (node.level - 1)]
        base = '.'.join(here + ([base] if base else []))
    return [f'{base}.{a.name}' for a in node.names]   # a name that is not a module stands for `base`


def imports(root: Path = REPO) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(package_edges, external)``: module -> package modules it imports; module -> top-level external names."""
    mods = modules(root)
    edges: dict[str, set[str]] = defaultdict(set)
    external: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(mod, node, path.name == '__init__.py'):
                if target.split('.')[0] != PACKAGE:
                    if target:
                        external[mod].add(target.split('.')[0])
                    continue
                while target not in mods and '.' in target:   # a name inside a module -> that module
                    target = target.rsplit('.', 1)[0]
                if target in mods and target != mod:
                    edges[mod].add(target)
    return edges, external


def room(mod: str, root: Path = REPO) -> str:
    """The room of a module: its sub-package, ``foundation`` for top-level modules, ``entry`` for __main__."""
    parts = mod.split('.')
    if len(parts) == 1:
        return 'foundation'
    if parts[1] == '__main__':
        return 'entry'
    if (root / PACKAGE / parts[1]).is_dir():
        return parts[1]
    return 'foundation'


def upward(edges: dict[str, set[str]], root: Path = REPO) -> list[tuple[str, str]]:
    """Arrows from a room to a higher one (or to a room missing from LAYERS)."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            ra, rb = room(a, root), room(b, root)
            if ra not in rank or rb not in rank or rank[rb] > rank[ra]:
                bad.append((a, b))
    return bad


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Sets of modules that import each other in a circle (strongly connected components of size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:   # Tarjan; the package is small, recursion depth stays far below the limit
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(set(edges) | {t for ts in edges.values() for t in ts}):
        if v not in index:
            visit(v)
    return found


def ros_outside_the_ros_room(external: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, ROS package) for every ROS import outside :data:`ROS_IMPORTERS`."""
    return [(mod, name) for mod, names in sorted(external.items()) for name in sorted(names)
            if name in ROS_MODULES and not any(mod == r or mod.startswith(r + '.') for r in ROS_IMPORTERS)]


def room_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            if room(a) != room(b):
                out[room(a)].add(room(b))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--modules', action='store_true', help='also list every module arrow that crosses rooms')
    args = p.parse_args(argv)
    edges, external = imports()
    rooms = room_edges(edges)
    print('rooms, bottom to top, and the rooms each imports:')
    for name in LAYERS:
        print(f'  {name:<11} -> {", ".join(sorted(rooms.get(name, ()), key=LAYERS.index)) or "-"}')
    if args.modules:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                if room(a) != room(b):
                    print(f'  {a} -> {b}')
    problems = ([f'upward: {a} -> {b}' for a, b in upward(edges)]
                + [f'circle: {" <-> ".join(c)}' for c in circles(edges)]
                + [f'ROS import outside the ROS room: {m} imports {n}' for m, n in ros_outside_the_ros_room(external)])
    for line in problems:
        print(line)
    print(f'{len(edges)} modules with package imports; {len(problems)} problems')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python3
"""Extract the public surface of an rclpy source tree (and of ROS interface packages) as a JSON fact file.

Humble has no Python wheels, so the ROS layer cannot be imported against it in CI; its source is public. This
script reads the source with ``ast`` (nothing is imported) and writes what code using rclpy can reach:

- ``modules``: every ``rclpy.*`` module and the names bound at its top level (classes, functions, variables,
  imported names with their origin); names bound only under ``if TYPE_CHECKING:`` are left out;
- ``classes``: per qualified class name its bases (resolved to qualified names where they come from rclpy),
  methods (parameter names, ``**kwargs`` or not, the return annotation as written), and attributes (class-level
  assignments, properties, ``self.X = ...`` in any method, nested classes); a private ``__m`` of class ``C`` is
  listed under its mangled name ``_C__m``, the name code outside the class must use;
- ``functions``: module-level functions, with the same per-function facts;
- ``interfaces`` (with ``--interfaces``): ``pkg/msg/Type`` and ``pkg/srv/Type`` (``Request``/``Response``) with
  their field names and constants, from the ``.msg``/``.srv`` files.

A source is a directory, or ``GITDIR@REF[:SUBDIR]``: a ref of a (bare) git repository, read with ``git show``
(its commit is recorded); ``NAME=`` before either records NAME (e.g. ros2/rclpy) as its origin. The Humble fact
file of tests/test_ros_compat.py was made from the repositories ros2/rclpy, ros2/rcl_interfaces and
ros2/common_interfaces (branch ``humble``) and ros-perception/vision_msgs (tag ``4.1.1``, Humble's release line 4.x):

    python tools/extract_rclpy_names.py --rclpy ros2/rclpy=RCLPY.git@humble:rclpy/rclpy \\
        --interfaces ros2/rcl_interfaces=RCL_INTERFACES.git@humble \\
        ros2/common_interfaces=COMMON_INTERFACES.git@humble ros-perception/vision_msgs=VISION_MSGS.git@4.1.1 \\
        --label humble -o tests/data/rclpy_humble_names.json

The same script reads an installed rclpy (``--rclpy .venv/lib/python3.11/site-packages/rclpy``), which the test
uses to prove the extraction finds everything the ROS layer uses in the rclpy it really runs.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FORMAT = 1


def _git_source(spec: str, tmp: Path) -> tuple[Path, dict[str, str]]:
    """``GITDIR@REF[:SUBDIR]`` -> an extracted directory and where it came from."""
    gitdir, _, rest = spec.rpartition('@')
    ref, _, sub = rest.partition(':')
    commit = subprocess.run(['git', f'--git-dir={gitdir}', 'rev-parse', f'{ref}^{{commit}}'], check=True,
                            capture_output=True, text=True).stdout.strip()
    out = tmp / f'src{len(list(tmp.iterdir()))}'
    listing = subprocess.run(['git', f'--git-dir={gitdir}', 'ls-tree', '-r', '--name-only', commit], check=True,
                             capture_output=True, text=True).stdout.splitlines()
    for name in listing:   # only what is read (a snapshot may lack large binary files)
        if name.endswith(('.py', '.msg', '.srv', 'package.xml')):
            blob = subprocess.run(['git', f'--git-dir={gitdir}', 'show', f'{commit}:{name}'], check=True,
                                  capture_output=True).stdout
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(blob)
    origin = {'ref': ref, 'commit': commit}
    if sub:
        origin['subdir'] = sub
    return (out / sub if sub else out), origin


def _resolve(spec: str, tmp: Path) -> tuple[Path, dict[str, str]]:
    """``[NAME=]DIR`` or ``[NAME=]GITDIR@REF[:SUBDIR]``; NAME (e.g. ros2/rclpy) is recorded as the origin."""
    name, eq, rest = spec.partition('=')
    if not eq:
        name, rest = '', spec
    if '@' in rest and not Path(rest).exists():
        root, origin = _git_source(rest, tmp)
    else:
        root, origin = Path(rest), {'directory': Path(rest).name}
    if name:
        origin['repository'] = name
    return root, origin


# ---------------------------------------------------------------------------------------------------------------
# rclpy

def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run at import: the body, plus if/try branches (not ``if TYPE_CHECKING``)."""
    out: list[ast.stmt] = []
    for st in body:
        if isinstance(st, ast.If):
            if not _is_type_checking(st.test):
                out += _top_level(st.body)
            out += _top_level(st.orelse)
        elif isinstance(st, ast.Try):
            out += _top_level(st.body)
            for h in st.handlers:
                out += _top_level(h.body)
            out += _top_level(st.orelse) + _top_level(st.finalbody)
        else:
            out.append(st)
    return out


def _targets(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for e in target.elts for n in _targets(e)]
    return []


def _signature(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> dict[str, Any]:
    a = fn.args
    params = [p.arg for p in a.posonlyargs + a.args]
    if method and params and not any(isinstance(d, ast.Name) and d.id == 'staticmethod' for d in fn.decorator_list):
        params = params[1:]   # self / cls
    return {'params': params + [p.arg for p in a.kwonlyargs], 'varargs': a.vararg is not None,
            'varkw': a.kwarg is not None, 'returns': ast.unparse(fn.returns) if fn.returns else None}


def _decorators(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    out = set()
    for d in fn.decorator_list:
        if isinstance(d, ast.Name):
            out.add(d.id)
        elif isinstance(d, ast.Attribute):
            out.add(d.attr)   # @x.setter -> 'setter'
    return out


class _Module:
    def __init__(self, name: str, package: str, tree: ast.Module) -> None:
        self.name, self.package, self.tree = name, package, tree
        self.names: dict[str, str] = {}     # name -> 'class' | 'function' | 'variable' | 'module:X' | 'import:X.Y'

    def absolute(self, module: str | None, level: int) -> str:
        if not level:
            return module or ''
        base = self.package.split('.')
        base = base[:len(base) - (level - 1)] if level > 1 else base
        return '.'.join(base + ([module] if module else []))


def _scan_module(mod: _Module, classes: dict[str, Any], functions: dict[str, Any]) -> None:
    for st in _top_level(mod.tree.body):
        if isinstance(st, ast.ClassDef):
            mod.names[st.name] = 'class'
            _scan_class(mod, st, f'{mod.name}.{st.name}', classes)
        elif isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mod.names[st.name] = 'function'
            functions[f'{mod.name}.{st.name}'] = _signature(st, method=False)
        elif isinstance(st, ast.Import):
            for a in st.names:
                if a.asname:
                    mod.names[a.asname] = f'module:{a.name}'
                else:
                    top = a.name.split('.')[0]
                    mod.names.setdefault(top, f'module:{top}')
        elif isinstance(st, ast.ImportFrom):
            src = mod.absolute(st.module, st.level)
            for a in st.names:
                if a.name == '*':
                    continue
                mod.names[a.asname or a.name] = f'import:{src}.{a.name}'
        elif isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            for t in targets:
                for n in _targets(t):
                    mod.names.setdefault(n, 'variable')


def _scan_class(mod: _Module, cls: ast.ClassDef, qual: str, classes: dict[str, Any]) -> None:
    bases = []
    for b in cls.bases:
        text = ast.unparse(b)
        head, _, tail = text.partition('.')
        bound = mod.names.get(head, '')
        if bound.startswith('import:'):
            text = bound[len('import:'):] + (f'.{tail}' if tail else '')
        elif bound.startswith('module:'):
            text = bound[len('module:'):] + (f'.{tail}' if tail else '')
        elif bound == 'class':
            text = f'{mod.name}.{text}'
        bases.append(text)
    methods: dict[str, Any] = {}
    attributes: set[str] = set()
    private = f'_{cls.name.lstrip("_")}'
    for st in cls.body:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decos = _decorators(st)
            if 'property' in decos or 'setter' in decos or 'getter' in decos:
                attributes.add(st.name)
            else:
                mangled = st.name.startswith('__') and not st.name.endswith('__')
                methods[f'{private}{st.name}' if mangled else st.name] = _signature(st, method=True)
            for node in ast.walk(st):   # self.X = ... anywhere in a method
                tgts: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    tgts = list(node.targets)
                elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                    tgts = [node.target]
                for t in tgts:
                    for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]):
                        if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == 'self':
                            name = e.attr
                            if name.startswith('__') and not name.endswith('__'):
                                name = f'{private}{name}'
                            attributes.add(name)
        elif isinstance(st, ast.ClassDef):
            attributes.add(st.name)
            _scan_class(mod, st, f'{qual}.{st.name}', classes)
        elif isinstance(st, (ast.Assign, ast.AnnAssign)):
            for t in (st.targets if isinstance(st, ast.Assign) else [st.target]):
                attributes.update(_targets(t))
    attributes -= set(methods)
    classes[qual] = {'bases': bases, 'methods': dict(sorted(methods.items())), 'attributes': sorted(attributes)}


def extract_rclpy(root: Path) -> dict[str, Any]:
    """``root``: the ``rclpy`` package directory (the one holding ``__init__.py``)."""
    if not (root / '__init__.py').is_file():
        raise SystemExit(f'{root} is not the rclpy package directory (no __init__.py)')
    modules: dict[str, _Module] = {}
    for path in sorted(root.rglob('*.py')):
        rel = path.relative_to(root.parent).with_suffix('')
        parts = list(rel.parts)
        is_pkg = parts[-1] == '__init__'
        if is_pkg:
            parts = parts[:-1]
        name = '.'.join(parts)
        if any(p.startswith('test') for p in parts[1:]):
            continue
        package = name if is_pkg else name.rpartition('.')[0]
        modules[name] = _Module(name, package, ast.parse(path.read_text(encoding='utf-8'), filename=str(path)))
    classes: dict[str, Any] = {}
    functions: dict[str, Any] = {}
    for mod in modules.values():
        _scan_module(mod, classes, functions)
    version = None
    if (root.parent / 'package.xml').is_file():   # a source tree
        m = re.search(r'<version>([^<]+)</version>', (root.parent / 'package.xml').read_text())
        version = m.group(1) if m else None
    for info in root.parent.glob('rclpy-*.egg-info'):   # an installed package
        version = info.name.split('-')[1]
    return {'version': version,
            'modules': {n: dict(sorted(m.names.items())) for n, m in sorted(modules.items())},
            'classes': dict(sorted(classes.items())), 'functions': dict(sorted(functions.items()))}


# ---------------------------------------------------------------------------------------------------------------
# interfaces

_FIELD = re.compile(r'^\s*([A-Za-z_][\w/]*(?:<=\d+)?(?:\[[^\]]*\])?)\s+([A-Za-z_]\w*)\s*(=)?')


def _fields(text: str) -> dict[str, list[str]]:
    fields, constants = [], []
    for line in text.splitlines():
        line = line.split('#', 1)[0]
        m = _FIELD.match(line)
        if m:
            (constants if m.group(3) else fields).append(m.group(2))
    return {'fields': fields, 'constants': constants}


def extract_interfaces(roots: list[Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for root in roots:
        for path in sorted(list(root.rglob('msg/*.msg')) + list(root.rglob('srv/*.srv'))):
            pkg = path.parent.parent.name
            if any(p in ('test', 'tests', 'test_msgs') for p in path.parts) or pkg == 'test_msgs':
                continue
            text = path.read_text(encoding='utf-8')
            key = f'{pkg}/{path.parent.name}/{path.stem}'
            if path.suffix == '.srv':
                req, _, resp = text.partition('\n---')
                out[key] = {'Request': _fields(req), 'Response': _fields(resp)}
            else:
                out[key] = _fields(text)
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--rclpy', required=True, help='the rclpy package directory, or GITDIR@REF:SUBDIR')
    ap.add_argument('--interfaces', nargs='*', default=[], help='interface package trees (DIR or GITDIR@REF)')
    ap.add_argument('--label', default='', help='what these facts describe, e.g. humble')
    ap.add_argument('-o', '--output', required=True)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        root, origin = _resolve(args.rclpy, tmp)
        facts: dict[str, Any] = {'format': FORMAT, 'label': args.label, 'sources': {'rclpy': origin},
                                 'made_by': 'tools/extract_rclpy_names.py'}
        facts.update(extract_rclpy(root))
        if args.interfaces:
            dirs = []
            for spec in args.interfaces:
                d, o = _resolve(spec, tmp)
                dirs.append(d)
                facts['sources'].setdefault('interfaces', []).append(o)
            facts['interfaces'] = extract_interfaces(dirs)
    Path(args.output).write_text(json.dumps(facts, indent=1, sort_keys=False) + '\n')
    print(f'{args.output}: {len(facts["modules"])} modules, {len(facts["classes"])} classes, '
          f'{len(facts["functions"])} functions, {len(facts.get("interfaces", {}))} interfaces'
          f' (rclpy {facts["version"]})', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())

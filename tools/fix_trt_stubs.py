#!/usr/bin/env python3
"""Make the installed ``tensorrt-stubs`` wheel readable by mypy (idempotent).

The wheel (10.13.0.35.1) installs plain ``tensorrt/`` and ``tensorrt_bindings/`` directories of
``.pyi`` files without ``py.typed``, so mypy ignores them (PEP 561), and some signatures use the
keyword ``in`` as a parameter name, which is a syntax error. This script writes proper stub-only
packages ``tensorrt-stubs/`` and ``tensorrt_bindings-stubs/`` next to them in site-packages, with
``in`` renamed to ``in_``. The original files are left untouched; running it again rewrites the same
output. Usage: ``python tools/fix_trt_stubs.py`` with the venv's interpreter.
"""
from __future__ import annotations

import ast
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

DIST = 'tensorrt-stubs'
PACKAGES = ('tensorrt', 'tensorrt_bindings')
MARKER = '# patched by evit_ros tools/fix_trt_stubs.py\n'
_IN_PARAM = re.compile(r'(?<=[(,\s])in(?=\s*:)')


def _split_params(params: str) -> list[str]:
    parts, depth, cur = [], 0, ''
    for ch in params:
        if ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def _default_after_default(line: str) -> str:
    """``f(a: int = None, b: int)`` -> ``f(a: int = None, b: int = ...)`` (stub-only signatures)."""
    m = re.match(r'(\s*def \w+\()(.*)(\)\s*(?:->.*)?:\s*(?:\.\.\.)?\s*)$', line.rstrip('\n'))
    if not m:
        return line
    parts = _split_params(m.group(2))
    seen_default = False
    for i, part in enumerate(parts):
        name = part.strip()
        if name.startswith('*') or name == '/':
            seen_default = False if name.startswith('*') else seen_default
            continue
        if '=' in part:
            seen_default = True
        elif seen_default:
            parts[i] = part + ' = ...'
    nl = '\n' if line.endswith('\n') else ''
    return m.group(1) + ','.join(parts) + m.group(3) + nl


def fix_source(text: str) -> str:
    """Rename parameters called ``in`` (a keyword) to ``in_`` and give defaults to parameters that follow one."""
    out = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith('def '):
            line = _default_after_default(_IN_PARAM.sub('in_', line))
        out.append(line)
    return ''.join(out)


def site_root() -> Path:
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        sys.exit(f'{DIST} is not installed; run tools/install_trt_stubs.sh first')
    return Path(str(dist.locate_file('')))


def main() -> int:
    root = site_root()
    written = 0
    for pkg in PACKAGES:
        src = root / pkg
        if not src.is_dir():
            sys.exit(f'{src} is missing; reinstall {DIST}')
        dst = root / f'{pkg}-stubs'
        tmp = root / f'.{pkg}-stubs.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in sorted(src.rglob('*.pyi')):
            fixed = fix_source(f.read_text())
            try:
                ast.parse(fixed, filename=str(f))
            except SyntaxError as exc:
                sys.exit(f'{f}: still not valid Python after the fix ({exc}); update tools/fix_trt_stubs.py')
            target = tmp / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(MARKER + fixed)
            written += 1
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    print(f'fix_trt_stubs: wrote {written} stub files as {", ".join(p + "-stubs" for p in PACKAGES)} in {root}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

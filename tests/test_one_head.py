"""One head, named once: every tool that picks a graph head uses ``contract.NODE_HEAD``, never a literal."""
from __future__ import annotations

import ast
from pathlib import Path

from evit_ros import contract

REPO = Path(__file__).resolve().parents[1]
# modules whose job is to compare or list heads (they name every head on purpose), and the plain-PyTorch-node
# baseline of the node benchmark, whose float logits graph is the baseline's own, not a head choice
COMPARES_HEADS = {'evit_ros/contract.py', 'evit_ros/bench/heads.py', 'evit_ros/cli/bench_cmd.py',
                  'evit_ros/bench/node.py'}


def _head_literals(path: Path) -> list[str]:
    """``head='...'`` keyword arguments and ``head: str = '...'`` defaults in one module."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'head' and isinstance(node.value, ast.Constant):
            found.append(f'{path.relative_to(REPO)}:{node.value.lineno} head={node.value.value!r}')
        if isinstance(node, ast.arguments):
            args = node.posonlyargs + node.args
            for arg, default in zip(args[len(args) - len(node.defaults):], node.defaults, strict=True):
                if arg.arg == 'head' and isinstance(default, ast.Constant):
                    found.append(f'{path.relative_to(REPO)}:{default.lineno} default head={default.value!r}')
            for arg, kw_default in zip(node.kwonlyargs, node.kw_defaults, strict=True):
                if arg.arg == 'head' and isinstance(kw_default, ast.Constant):
                    found.append(f'{path.relative_to(REPO)}:{kw_default.lineno} default head={kw_default.value!r}')
    return found


def test_no_tool_names_a_head_but_the_contract() -> None:
    bad = [hit for p in sorted((REPO / 'evit_ros').rglob('*.py'))
           if p.relative_to(REPO).as_posix() not in COMPARES_HEADS for hit in _head_literals(p)]
    assert not bad, 'use evit_ros.contract.NODE_HEAD instead of a head literal: ' + '; '.join(bad)


def test_export_defaults_to_the_node_head_and_says_so() -> None:
    import argparse

    from evit_ros.cli import export_cmd
    p = argparse.ArgumentParser()
    export_cmd.add_arguments(p)
    action = next(a for a in p._actions if '--head' in a.option_strings)
    assert action.default == contract.NODE_HEAD and contract.NODE_HEAD in (action.help or '')


def test_the_docs_export_the_node_head() -> None:
    """No page tells a user to export another head for the node (other heads are described, not prescribed)."""
    pages = [REPO / 'README.md', REPO / 'engines' / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
    for page in pages:
        for line in page.read_text().splitlines():
            if line.lstrip().startswith(('evit-ros export', '--height')) and '--head' in line:
                assert f'--head {contract.NODE_HEAD}' in line, f'{page.name}: {line.strip()}'

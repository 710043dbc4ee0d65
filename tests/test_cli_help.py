"""Help texts state their defaults, so `--help` and the documentation (which quotes them) cannot silently disagree."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from evit_ros.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ('export', 'build-engine', 'bench', 'eval', 'doctor')


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ('help',)]


def _sub(command: str) -> argparse.ArgumentParser:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize('command', COMMANDS)
def test_every_option_with_a_default_says_it(command: str) -> None:
    missing = []
    for act in _options(_sub(command)):
        if act.default in (None, False, '', [], argparse.SUPPRESS) or isinstance(act, argparse._StoreTrueAction):
            continue
        if 'default' not in (act.help or ''):
            missing.append(f'{act.option_strings[-1]} (default {act.default!r})')
    assert not missing, f'evit-ros {command}: options whose help does not state the default: {missing}'


def test_bench_node_help_states_its_defaults() -> None:
    import subprocess
    import sys
    out = subprocess.run([sys.executable, '-m', 'evit_ros.bench.node', '--help'], capture_output=True, text=True,
                         timeout=60, env={**__import__('os').environ, 'PYTHONPATH': str(REPO)})
    assert out.returncode == 0, out.stderr
    text = ' '.join(out.stdout.split())
    for opt in ('--frames', '--warmup', '--threads'):
        m = re.search(re.escape(opt) + r' \S+ (.*?)(?= --|$)', text)
        assert m and 'default' in m.group(1), f'bench_node {opt}: help does not state its default: {text}'


def test_readme_bench_table_defaults_match_the_parser() -> None:
    # the `evit-ros bench` option table lives next to the command's description
    readme = (REPO / 'docs' / 'performance.md').read_text()
    bench = {a.option_strings[-1]: a for a in _options(_sub('bench'))}
    row = re.search(r'\| `--backend` \| `(\w+)` \| (.*) \|', readme)
    assert row and bench['--backend'].default == row.group(1)
    for kind in ('auto', 'tensorrt', 'onnxruntime', 'torch', 'torch-eager-host'):
        assert f'`{kind}`' in row.group(2) and kind in bench['--backend'].help
    head = re.search(r'\| `--head` \| `([\w+-]+)`', readme)
    assert head and bench['--head'].default == head.group(1)
    assert bench['--iters'].default == 20 and bench['--warmup'].default == 3


def test_eval_backend_choices_and_label_format_default() -> None:
    ev = {a.option_strings[-1]: a for a in _options(_sub('eval'))}
    assert list(ev['--backend'].choices) == ['auto', 'tensorrt', 'onnxruntime', 'torch']
    assert ev['--label-format'].default == 'trainid' and 'default: trainid' in ev['--label-format'].help
    be = {a.option_strings[-1]: a for a in _options(_sub('build-engine'))}
    assert 'next to the' in be['--timing-cache'].help

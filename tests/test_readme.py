"""The README is executable: every fenced ```bash block of README.md runs, so it cannot drift from the code.

Convention (other sections of the README follow it):
- every fenced ```bash block is executed, top to bottom, each with ``bash -e -o pipefail``, all in ONE
  temporary directory (so a later block can use what an earlier block wrote), with the repository's venv
  first on PATH (``evit-ros``, ``segmentation_node``, ``python``), ``config`` linked to the repository's
  ``config/``, an empty ``engines/``, this test session's ``EVIT_ROS_CACHE`` and ``ROS_DOMAIN_ID``;
- a block is skipped only when the line just before its opening fence is an HTML comment
  ``<!-- readme-test: skip REASON -->`` (a reason is required: a GPU, a downloaded checkpoint or dataset, a
  ROS installation, a command that runs until Ctrl-C, ...);
- runnable blocks use small sizes (the README says so where a command is shrunk for a quick try), because
  the whole test must stay within about a minute;
- a failure names the README line of the failing command and shows the end of its output;
- processes a block leaves running in the background are killed when it ends (each block runs in its own
  process group); shell commands belong in ```bash blocks (```sh, ```shell and ```console are refused, so no
  command escapes the test), and a ``readme-test`` comment anywhere but right above a ```bash fence is an error.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
SKIP_RE = re.compile(r'^<!--\s*readme-test:\s*skip\b\s*(.*?)\s*-->\s*$')
OTHER_SHELL_FENCES = ('```sh', '```shell', '```console', '```zsh')
BLOCK_TIMEOUT_S = 180
# the first line of every script: report the README line of a failing command (LINENO counts from this line)
ERR_TRAP = 'trap \'echo "README_TEST_FAILED_AT $LINENO: $BASH_COMMAND" >&2\' ERR'


@dataclass(frozen=True)
class Block:
    line: int          # README line of the first command (1-based, the line after the opening fence)
    text: str
    skip: str | None   # reason, or None when the block runs

    @property
    def ident(self) -> str:
        first = next((ln.strip() for ln in self.text.splitlines() if ln.strip()), '')
        return f'L{self.line}:{first[:40]}'


def readme_blocks(text: str) -> list[Block]:
    """Fenced ```bash blocks of a Markdown text, with their skip marker (raises on an unterminated fence)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == '```bash':
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != '```':
                j += 1
            if j == len(lines):
                raise ValueError(f'README.md line {i + 1}: ```bash block is never closed')
            prev = lines[i - 1].strip() if i > 0 else ''
            m = SKIP_RE.match(prev)
            skip = None
            if m:
                skip = m.group(1)
                if not skip:
                    raise ValueError(f'README.md line {i}: readme-test skip marker without a reason')
            blocks.append(Block(start + 1, '\n'.join(lines[start:j]), skip))
            i = j + 1
            continue
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_readme_parser_sees_markers_and_line_numbers() -> None:
    text = '# t\n\n```bash\necho a\n```\n<!-- readme-test: skip needs a GPU -->\n```bash\nnvidia-smi\n```\n'
    got = readme_blocks(text)
    assert [(b.line, b.text, b.skip) for b in got] == [(4, 'echo a', None), (8, 'nvidia-smi', 'needs a GPU')]
    with pytest.raises(ValueError, match='without a reason'):
        readme_blocks('<!-- readme-test: skip -->\n```bash\nx\n```\n')
    with pytest.raises(ValueError, match='never closed'):
        readme_blocks('```bash\nx\n')


def readme_problems(text: str) -> list[str]:
    """Markers not directly above a ```bash fence, malformed markers, and shell blocks in other fences."""
    lines = text.splitlines()
    problems = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if 'readme-test' in stripped:
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ''
            if not SKIP_RE.match(stripped):
                problems.append(f'line {i + 1}: malformed marker {stripped!r}; use <!-- readme-test: skip REASON -->')
            elif nxt != '```bash':
                problems.append(f'line {i + 1}: readme-test marker is not directly above a ```bash fence')
        if stripped in OTHER_SHELL_FENCES:
            problems.append(f'line {i + 1}: {stripped} block; write shell commands in ```bash blocks (the README '
                            'test runs those)')
    return problems


def test_readme_markers_and_fences_are_well_formed() -> None:
    assert readme_problems('<!-- readme-test: skip GPU -->\n\n```bash\nx\n```\n') == [
        'line 1: readme-test marker is not directly above a ```bash fence']
    assert readme_problems('```sh\nls\n```\n')
    problems = readme_problems(README.read_text())
    assert not problems, 'README.md: ' + '; '.join(problems)


def test_readme_has_runnable_blocks() -> None:
    runnable = [b for b in BLOCKS if b.skip is None]
    assert len(runnable) >= 3, 'README.md has almost no runnable ```bash blocks; the README test would prove nothing'
    assert any('evit-ros' in b.text for b in runnable)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp('readme')
    (d / 'config').symlink_to(REPO / 'config')
    (d / 'engines').mkdir()
    return d


def _env() -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env['PATH'] = venv_bin + os.pathsep + env.get('PATH', '')
    env['VIRTUAL_ENV'] = str(Path(sys.executable).parent.parent)
    env['PYTHONPATH'] = str(REPO) + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env['PYTHONUNBUFFERED'] = '1'
    return env


def _failure(block: Block, proc: subprocess.CompletedProcess[str] | None, why: str) -> str:
    out = '' if proc is None else (proc.stdout[-1500:] + '\n--- stderr ---\n' + proc.stderr[-2500:])
    return f'README.md block at line {block.line} {why}\n--- block ---\n{block.text}\n--- output (tail) ---\n{out}'


def _run_block(script: str, cwd: Path) -> subprocess.CompletedProcess[str] | None:
    """Run one block in its own process group (output to files, so background children cannot hang the pipes);
    whatever it leaves running is killed. None on timeout."""
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        p = subprocess.Popen(['bash', '-e', '-o', 'pipefail', '-c', script], cwd=cwd, env=_env(), stdout=out,
                             stderr=err, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            rc: int | None = p.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        out.seek(0)
        err.seek(0)
        if rc is None:
            return None
        return subprocess.CompletedProcess(p.args, rc, out.read(), err.read())


@pytest.mark.parametrize('block', BLOCKS, ids=[b.ident for b in BLOCKS])
def test_readme_block(block: Block, workdir: Path) -> None:
    if block.skip is not None:
        pytest.skip(f'README.md line {block.line}: {block.skip}')
    assert (Path(sys.executable).parent / 'evit-ros').exists(), \
        'evit-ros is not installed in the venv; run `make venv` (it installs the package in editable mode)'
    script = ERR_TRAP + '\n' + block.text + '\n'
    proc = _run_block(script, workdir)
    if proc is None:
        pytest.fail(_failure(block, None, f'did not finish within {BLOCK_TIMEOUT_S} s'))
    if proc.returncode != 0:
        m = re.search(r'README_TEST_FAILED_AT (\d+): (.*)', proc.stderr)
        where = ''
        if m:
            where = f', command at README line {block.line + int(m.group(1)) - 2}: {m.group(2)}'
        pytest.fail(_failure(block, proc, f'exited with {proc.returncode}{where}'))

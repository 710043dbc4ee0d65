"""The documentation is executable: every fenced ```bash block of README.md and of docs/*.md runs, so it cannot
drift from the code.

Convention (every page follows it; docs/development.md describes it for contributors):
- every fenced ```bash block is executed, README.md first, then the docs/*.md pages sorted by name, each page
  top to bottom, each block with ``bash -e -o pipefail``, all in ONE temporary directory (so a later block can
  use what an earlier block of the same page wrote; a page creates what its blocks need), with the repository's venv
  first on PATH (``evit-ros``, ``segmentation_node``, ``python``), ``config`` linked to the repository's
  ``config/``, an empty ``engines/``, this test session's ``EVIT_ROS_CACHE`` and ``ROS_DOMAIN_ID``;
- a block is skipped only when the line just before its opening fence is an HTML comment
  ``<!-- readme-test: skip REASON -->`` (a reason is required: a GPU, a downloaded checkpoint or dataset, a
  ROS installation, a command that runs until Ctrl-C, ...);
- runnable blocks use small sizes (the text says so where a command is shrunk for a quick try), because
  the whole test must stay within a minute or two;
- a failure names the file and line of the failing command (``docs/tensorrt.md line 40``) and shows the end
  of its output;
- processes a block leaves running in the background are killed when it ends (each block runs in its own
  process group); shell commands belong in ```bash blocks (```sh, ```shell and ```console are refused, so no
  command escapes the test), and a ``readme-test`` comment anywhere but right above a ```bash fence is an error;
- every relative link (``[text](path)``, ``![alt](path)``) of these pages points to an existing file or folder,
  and its ``#anchor``, when it has one and names a Markdown page, to a heading of that page.
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
# the executable pages, in the order their blocks run: the README, then docs/*.md sorted by name
DOC_FILES = [README] + sorted((REPO / 'docs').glob('*.md'))
SKIP_RE = re.compile(r'^<!--\s*readme-test:\s*skip\b\s*(.*?)\s*-->\s*$')
OTHER_SHELL_FENCES = ('```sh', '```shell', '```console', '```zsh')
BLOCK_TIMEOUT_S = 180
# the first line of every script: report the line of a failing command (LINENO counts from this line)
ERR_TRAP = 'trap \'echo "README_TEST_FAILED_AT $LINENO: $BASH_COMMAND" >&2\' ERR'


def _rel(path: Path) -> str:
    """The page's name as the messages and test ids show it: README.md, docs/tensorrt.md."""
    return path.relative_to(REPO).as_posix()


@dataclass(frozen=True)
class Block:
    line: int          # line of the first command in its file (1-based, the line after the opening fence)
    text: str
    skip: str | None   # reason, or None when the block runs
    file: str = 'README.md'   # the page, relative to the repository: README.md, docs/tensorrt.md

    @property
    def ident(self) -> str:
        first = next((ln.strip() for ln in self.text.splitlines() if ln.strip()), '')
        return f'{self.file}:L{self.line}:{first[:40]}'


def readme_blocks(text: str, file: str = 'README.md') -> list[Block]:
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
                raise ValueError(f'{file} line {i + 1}: ```bash block is never closed')
            prev = lines[i - 1].strip() if i > 0 else ''
            m = SKIP_RE.match(prev)
            skip = None
            if m:
                skip = m.group(1)
                if not skip:
                    raise ValueError(f'{file} line {i}: readme-test skip marker without a reason')
            blocks.append(Block(start + 1, '\n'.join(lines[start:j]), skip, file))
            i = j + 1
            continue
        i += 1
    return blocks


BLOCKS = [b for path in DOC_FILES for b in readme_blocks(path.read_text(), _rel(path))]


def test_readme_parser_sees_markers_and_line_numbers() -> None:
    text = '# t\n\n```bash\necho a\n```\n<!-- readme-test: skip needs a GPU -->\n```bash\nnvidia-smi\n```\n'
    got = readme_blocks(text)
    assert [(b.line, b.text, b.skip) for b in got] == [(4, 'echo a', None), (8, 'nvidia-smi', 'needs a GPU')]
    assert got[0].ident == 'README.md:L4:echo a'
    with pytest.raises(ValueError, match='without a reason'):
        readme_blocks('<!-- readme-test: skip -->\n```bash\nx\n```\n')
    with pytest.raises(ValueError, match='^docs/x.md line 1: .*never closed'):
        readme_blocks('```bash\nx\n', 'docs/x.md')
    assert readme_blocks(text, 'docs/x.md')[1].ident == 'docs/x.md:L8:nvidia-smi'


def test_every_page_is_collected_readme_first() -> None:
    names = [_rel(p) for p in DOC_FILES]
    assert names[0] == 'README.md' and names[1:] == sorted(names[1:]) and len(names) > 1, names
    assert all(n.startswith('docs/') for n in names[1:]), names
    files = list(dict.fromkeys(b.file for b in BLOCKS))
    assert files == [n for n in names if n in files], 'blocks must run in page order, README.md first'


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


def test_readme_problems_finds_misplaced_markers_and_other_shell_fences() -> None:
    assert readme_problems('<!-- readme-test: skip GPU -->\n\n```bash\nx\n```\n') == [
        'line 1: readme-test marker is not directly above a ```bash fence']
    assert readme_problems('```sh\nls\n```\n')


@pytest.mark.parametrize('path', DOC_FILES, ids=_rel)
def test_readme_markers_and_fences_are_well_formed(path: Path) -> None:
    problems = readme_problems(path.read_text())
    assert not problems, f'{_rel(path)}: ' + '; '.join(problems)


def test_readme_has_runnable_blocks() -> None:
    runnable = [b for b in BLOCKS if b.skip is None]
    assert len(runnable) >= 3, 'the docs have almost no runnable ```bash blocks; the README test would prove nothing'
    assert any('evit-ros' in b.text for b in runnable)
    assert any(b.file == 'README.md' and 'evit-ros' in b.text for b in runnable), \
        'README.md has no runnable evit-ros block'


LINK_RE = re.compile(r'!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
FENCE_RE = re.compile(r'^\s*(```|~~~)')


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans removed."""
    out, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if FENCE_RE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i, re.sub(r'`+[^`]*`+', '', line)))
    return out


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown page's headings: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered (-1, -2, ...)."""
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in text.splitlines():
        if FENCE_RE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
        if not m:
            continue
        slug = re.sub(r'[^\w\- ]', '', m.group(1).strip().lower()).replace(' ', '-')
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f'{slug}-{n}')
    return anchors


def link_problems(path: Path) -> list[str]:
    """Relative links of a page that point nowhere: a missing file or folder, or a missing heading anchor."""
    problems = []
    for line_no, line in _prose_lines(path.read_text()):
        for m in LINK_RE.finditer(line):
            target = m.group(1)
            if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):      # http:, https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition('#')
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f'line {line_no}: {target} -> no such file {file_part}')
            elif anchor and dest.suffix == '.md' and anchor not in heading_anchors(dest.read_text()):
                problems.append(f'line {line_no}: {target} -> {file_part or "this page"} has no heading #{anchor}')
    return problems


def test_link_checker_finds_missing_files_and_anchors(tmp_path: Path) -> None:
    assert heading_anchors('# A b\n## Explicit INT8: `evit-ros quantize`\n```bash\n# not a heading\n```\n## A b\n') \
        == {'a-b', 'explicit-int8-evit-ros-quantize', 'a-b-1'}
    (tmp_path / 'other.md').write_text('# Here\n')
    page = tmp_path / 'page.md'
    page.write_text('[ok](other.md) [ok](other.md#here) ![pic](other.md) [web](https://x.org/y) [self](#top)\n'
                    '# Top\n[bad](missing.md) [bad anchor](other.md#there) `[code](nowhere.md)`\n'
                    '```\n[in a block](nowhere.md)\n```\n')
    assert link_problems(page) == ['line 3: missing.md -> no such file missing.md',
                                   'line 3: other.md#there -> other.md has no heading #there']
    page.write_text('[self](#nowhere)\n')
    assert link_problems(page) == ['line 1: #nowhere -> this page has no heading #nowhere']


@pytest.mark.parametrize('path', DOC_FILES, ids=_rel)
def test_relative_links_point_to_existing_files(path: Path) -> None:
    problems = link_problems(path)
    assert not problems, f'{_rel(path)}: ' + '; '.join(problems)


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
    return f'{block.file} block at line {block.line} {why}\n--- block ---\n{block.text}\n--- output (tail) ---\n{out}'


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
        pytest.skip(f'{block.file} line {block.line}: {block.skip}')
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
            where = f', command at {block.file} line {block.line + int(m.group(1)) - 2}: {m.group(2)}'
        pytest.fail(_failure(block, proc, f'exited with {proc.returncode}{where}'))


def test_readme_outputs_are_ignored_and_removed_by_make_clean(workdir: Path, tmp_path: Path) -> None:
    """A user who runs the README's commands in the checkout gets a clean `git status`, and `make clean` removes
    what the commands wrote. Runs after every block above (same module, same working directory)."""
    import shutil
    made = [p for p in workdir.iterdir() if p.name not in ('config', 'engines')]
    made += [p for p in (workdir / 'engines').iterdir()]
    if not any(b.skip is None for b in BLOCKS) or not made:
        pytest.skip('no README block ran in this session (a -k selection)')
    names = [p.relative_to(workdir).as_posix() + ('/' if p.is_dir() else '') for p in made]
    not_ignored = [n for n in names
                   if subprocess.run(['git', '-C', str(REPO), 'check-ignore', '-q', '--no-index', n]).returncode != 0]
    assert not not_ignored, f'README commands leave files git status shows; add them to .gitignore: {not_ignored}'
    shutil.copy(REPO / 'Makefile', tmp_path / 'Makefile')
    for n in names:
        (tmp_path / n.rstrip('/')).parent.mkdir(parents=True, exist_ok=True)
        if n.endswith('/'):
            (tmp_path / n).mkdir(parents=True, exist_ok=True)
            (tmp_path / n / 'x').write_text('x')
        else:
            (tmp_path / n).write_text('x')
    proc = subprocess.run(['make', '-s', 'clean'], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    left = [n for n in names if (tmp_path / n.rstrip('/')).exists()]
    assert not left, f'`make clean` leaves what the README commands wrote: {left}'
    assert (tmp_path / 'engines').is_dir() or not any(n.startswith('engines/') for n in names)

"""The suite cannot hang: every test has a deadline, and a test past it fails with its name and what it waited for."""
from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_has_a_deadline_from_pytest_ini() -> None:
    ini = configparser.ConfigParser()
    ini.read(REPO / 'pytest.ini')
    assert 60 <= int(ini['pytest']['timeout']) <= 600
    assert ini['pytest']['timeout_method'] == 'signal'   # the test fails; the session goes on


def test_a_hanging_test_fails_with_its_name_and_the_wait(tmp_path: Path) -> None:
    (tmp_path / 'pytest.ini').write_text((REPO / 'pytest.ini').read_text().replace('timeout = ', 'timeout = 1\n#'))
    (tmp_path / 'test_hang.py').write_text(
        'import threading\n\n'
        'def test_waits_for_a_subscriber_that_never_comes():\n'
        '    threading.Event().wait(60)\n\n'
        'def test_after_the_hang_still_runs():\n'
        '    pass\n')
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert 'FAILED test_hang.py::test_waits_for_a_subscriber_that_never_comes' in out, out
    assert 'Timeout' in out and 'Event().wait(60)' in out, out    # the stack shows what it waited for
    assert '1 failed, 1 passed' in out, out

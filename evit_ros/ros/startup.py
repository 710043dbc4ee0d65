"""Startup of the node process: check the ROS arguments before rcl sees them, and handle signals ourselves.

Every startup failure ends as one ``FATAL`` line and exit code 2 (rcl's own parser answers a bad params
file with a multi-line ``RCLError``); SIGINT, SIGTERM and SIGHUP (the terminal or SSH session closing) at any
moment, including while the model loads or exports, end the process with exit code 0, one log line and no
traceback.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from evit_ros.deps import missing_module_message
from evit_ros.errors import ConfigError, EvitError

# The signals that end the node in order (SIGHUP: the terminal or SSH session that started it closed).
SHUTDOWN_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Set by any installed SignalFlag: slow work in the main thread (an export in a child process) polls it.
SIGNALLED = threading.Event()
_exit_hooks: list[Any] = []


def on_exit_now(hook: Any) -> Any:
    """Run ``hook()`` before :func:`exit_now` ends the process (e.g. end a child process, remove its files);
    returns a callable that unregisters it."""
    _exit_hooks.append(hook)

    def remove() -> None:
        if hook in _exit_hooks:
            _exit_hooks.remove(hook)
    return remove


def exit_now(code: int) -> None:
    """Flush Python and C stdio (rcutils logs through C streams), then end the process without finalization.

    Registered exit hooks run first (an export child is ended and its private folder removed)."""
    for hook in list(_exit_hooks):
        try:
            hook()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass
    os._exit(code)


class SignalFlag:
    """SIGINT/SIGTERM/SIGHUP handler: sets :attr:`event` (and :data:`SIGNALLED`); while ``exit_on_signal`` is
    true (startup) logs one line (``log``) and ends the process.

    During startup the process exits from the handler (code 0) instead of raising: an exception raised
    asynchronously can land in Python code that a C++ extension called (a nanobind module's import, rclpy's
    lifecycle), where it aborts the process (``terminate called after throwing nanobind::python_error``).
    Startup holds nothing that outlives the process (file locks are released by the OS).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.exit_on_signal = True
        self.signum = 0
        self.log: Any = None     # called with one line when a signal ends startup
        self._previous: dict[int, Any] = {}

    def install(self) -> SignalFlag:
        for sig in SHUTDOWN_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    @property
    def name(self) -> str:
        """Name of the signal received ('' before one)."""
        return signal.Signals(self.signum).name if self.signum else ''

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.event.is_set()
        self.signum = signum
        self.event.set()
        SIGNALLED.set()
        if self.exit_on_signal:
            if first and self.log is not None:
                try:
                    self.log(f'{self.name} during startup: exiting')
                except Exception:  # noqa: BLE001 - exiting anyway
                    pass
            exit_now(0)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ros_args(argv: Sequence[str]) -> list[str]:
    """The arguments between ``--ros-args`` and ``--``/the end (every such section)."""
    out: list[str] = []
    inside = False
    for a in argv:
        if a == '--ros-args':
            inside = True
        elif a == '--' and inside:
            inside = False
        elif inside:
            out.append(a)
    return out


def check_params_file(path: str) -> None:
    """The same checks rcl makes, with messages that say what to fix (ConfigError)."""
    import yaml
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f'params file {path} does not exist; pass an existing YAML, e.g. the installed '
                          'share/evit_ros/config/evit_ros.yaml')
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, 'problem_mark', None)
        at = f' at line {where.line + 1}, column {where.column + 1}' if where is not None else ''
        problem = getattr(exc, 'problem', None) or str(exc).splitlines()[0]
        raise ConfigError(f'params file {path} is not valid YAML{at}: {problem}; fix the syntax') from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f'params file {path} cannot be read: {exc}') from exc
    if doc is None:
        return   # empty file: rcl accepts it, nothing is set
    if not isinstance(doc, Mapping):
        raise ConfigError(f'params file {path} holds a YAML {type(doc).__name__}; it must map node names to '
                          '{ros__parameters: {...}}, e.g. "/**: {ros__parameters: {cameras: [front]}}"')
    for key, section in doc.items():
        if not _valid_section(section):
            raise ConfigError(f'params file {path}: section {key!r} must be a mapping with a ros__parameters '
                              'mapping inside, e.g. "/**: {ros__parameters: {cameras: [front]}}"')


def _valid_section(section: Any) -> bool:
    """A node section ({ros__parameters: {...}}) or a namespace level whose values are such sections."""
    if not isinstance(section, Mapping) or not section:
        return False
    if 'ros__parameters' in section:
        return isinstance(section['ros__parameters'], Mapping)
    return all(_valid_section(v) for v in section.values())


def check_ros_args(argv: Sequence[str]) -> None:
    """ConfigError for a missing/unreadable/malformed ``--params-file`` or an empty ``-p name:=`` override."""
    args = _ros_args(argv)
    for i, a in enumerate(args):
        value = args[i + 1] if i + 1 < len(args) else None
        if a == '--params-file':
            if value is None:
                raise ConfigError('--params-file needs a file name')
            check_params_file(value)
        elif a in ('-p', '--param'):
            if value is None or ':=' not in value:
                raise ConfigError(f'{a} {value or ""} must look like -p name:=value')
            name, _, val = value.partition(':=')
            if not val.strip():
                raise ConfigError(f'-p {name}:= has no value; write -p "{name}:=\'\'" for an empty string, or '
                                  'leave the override out to keep the params file/default value')


def one_line(exc: BaseException) -> str:
    """An exception as one line (rcl errors carry source locations and newlines)."""
    text = ' '.join(str(exc).split())
    return text if text else type(exc).__name__


def startup_error(exc: BaseException) -> str:
    """One line for anything the node construction can raise (also a failed transition's reason)."""
    if isinstance(exc, EvitError):
        return one_line(exc)
    if isinstance(exc, ModuleNotFoundError):
        return missing_module_message(exc.name or str(exc), 'the segmentation node')
    return f'{type(exc).__name__}: {one_line(exc)}'


__all__ = ['SHUTDOWN_SIGNALS', 'SIGNALLED', 'SignalFlag', 'check_params_file', 'check_ros_args', 'exit_now',
           'on_exit_now', 'one_line', 'startup_error']

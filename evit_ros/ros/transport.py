"""The node's own Fast DDS participant: frames in over UDP with large socket buffers, masks out through shared memory.

Why: a camera driver running Fast DDS defaults sends each frame through its own 512 KiB shared-memory segment.
Frames larger than that (640x480 rgb8 is 900 KiB) go out in fragments that the segment cannot hold when several
cameras publish at once: best-effort frames are lost (30-70 % with four 640x480 cameras at 10 Hz) and reliable
ones wait for a repair round (p95 235-730 ms before the node's callback, the first cameras of each burst worst).
The node cannot change the driver's segment, but it chooses where its own readers listen: with
``config/fastdds_node.xml`` every endpoint of the node's participant listens on UDP only, so the driver sends
frames there instead, into socket buffers of 16 MiB (the kernel caps them at ``net.core.rmem_max``). Measured with
the driver at defaults: every frame, reliable or best effort, in 3-14 ms. The node's masks still leave through
shared memory (a 32 MiB segment of its own) to subscribers on the same machine.

:func:`apply_node_profile` runs in ``segmentation_node``'s ``main`` before ``rclpy.init`` (the participant reads
its profile once, at creation). It changes nothing when the user configured Fast DDS (a profiles file variable,
``FASTDDS_BUILTIN_TRANSPORTS``, or a default profiles file in the working directory), when the RMW is not Fast
DDS, or with ``EVIT_ROS_FASTDDS_PROFILE=off``. No rclpy import here: the choice is made before rclpy starts.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from evit_ros.errors import ConfigError

# Fast DDS reads its XML profiles file from an environment variable whose name changed with Fast DDS 3
PROFILES_FILE_FASTDDS2 = 'FASTRTPS_DEFAULT_PROFILES_FILE'   # Fast DDS 2: Humble, Jazzy (and Foxy, Galactic, Iron)
PROFILES_FILE_FASTDDS3 = 'FASTDDS_DEFAULT_PROFILES_FILE'    # Fast DDS 3: Kilted and later
FASTDDS2_DISTROS = ('foxy', 'galactic', 'humble', 'iron', 'jazzy')
FASTDDS3_RCLPY_MAJOR = 9   # rclpy's major version in Kilted, the first distro on Fast DDS 3
PROFILES_FILE_PER_DISTRO = (f'Humble and Jazzy (Fast DDS 2) read {PROFILES_FILE_FASTDDS2}, Kilted and later '
                            f'(Fast DDS 3) read {PROFILES_FILE_FASTDDS3}')
BUILTIN_TRANSPORTS = 'FASTDDS_BUILTIN_TRANSPORTS'           # Fast DDS >= 2.12: a transport preset from the env
DEFAULT_PROFILE_FILES = ('DEFAULT_FASTRTPS_PROFILES.xml', 'DEFAULT_FASTDDS_PROFILES.xml')  # read from the cwd

SWITCH = 'EVIT_ROS_FASTDDS_PROFILE'      # '' or 'node': the node's profile (default); 'off': Fast DDS as configured
SWITCH_VALUES = ('', 'node', 'off')
NODE_PROFILE = 'fastdds_node.xml'
PROFILE_BUFFER_BYTES = 16 * 1024 * 1024  # the socket buffers fastdds_node.xml asks for (send and receive)
# below this net.core.rmem_max the node WARNs: a 4 MiB cap (an 8 MiB buffer) carried every frame of four 640x480
# cameras and of a 1024x2048 + a 640x480 one at 10 Hz; Ubuntu's default 212992 delayed or lost them
MIN_RMEM_MAX = 4 * 1024 * 1024
RMEM_MAX = Path('/proc/sys/net/core/rmem_max')


@dataclass(frozen=True)
class TransportChoice:
    """What the node's participant runs on, and why: shown in diagnostics and the startup log."""

    applied: bool           # the node's profile was set for this process
    kind: str               # node | user | other_rmw | off | missing | in_process
    profile: str            # the profiles file in effect ('' = none)
    summary: str            # one line for diagnostics (``transport``)
    rmem_max: int | None    # net.core.rmem_max, None where unreadable (not Linux)

    @property
    def receive_buffer_bytes(self) -> int | None:
        """The UDP receive buffer the kernel grants the node's profile (it doubles the capped request)."""
        if not self.applied or self.rmem_max is None:
            return None
        return 2 * min(PROFILE_BUFFER_BYTES, self.rmem_max)

    def capped(self) -> bool:
        """The node's profile is in effect but the kernel holds its receive buffer below what frames of several
        cameras need (:data:`MIN_RMEM_MAX`)."""
        return self.applied and self.rmem_max is not None and self.rmem_max < MIN_RMEM_MAX

    def cap_fix(self) -> str:
        """The one-line fix for a capped receive buffer."""
        return (f'net.core.rmem_max is {self.rmem_max} bytes, so the kernel holds the node\'s UDP receive buffer at '
                f'{(self.receive_buffer_bytes or 0) // 1024} KiB (the profile asks {PROFILE_BUFFER_BYTES >> 20} MiB, '
                f'and a cap below {MIN_RMEM_MAX >> 20} MiB is too small): bursts of frames from several cameras '
                'overflow it and wait for a repair round or are lost. Fix: '
                f'sudo sysctl -w net.core.rmem_max={PROFILE_BUFFER_BYTES} net.core.wmem_max={PROFILE_BUFFER_BYTES} '
                '(persist it in /etc/sysctl.d/) and restart the node')


_CURRENT: TransportChoice | None = None


def profiles_file_variable(rclpy_version: str | None = None, ros_distro: str | None = None) -> str:
    """The variable the running distro's Fast DDS reads its profiles file from.

    Fast DDS 3 (Kilted) reads only ``FASTDDS_DEFAULT_PROFILES_FILE``; its RMW still honours the old name but
    prints a deprecation warning at every start, and Fast DDS 2 (Jazzy, Humble) reads only the old name.
    The rclpy that runs decides (its package metadata; defaults: the installed one), else ``$ROS_DISTRO``;
    neither known: the old name, which every distro reads.
    """
    version = _installed_rclpy_version() if rclpy_version is None else rclpy_version
    major = version.split('.')[0]
    if major.isdigit():
        return PROFILES_FILE_FASTDDS3 if int(major) >= FASTDDS3_RCLPY_MAJOR else PROFILES_FILE_FASTDDS2
    distro = (os.environ.get('ROS_DISTRO', '') if ros_distro is None else ros_distro).strip().lower()
    if not distro or distro in FASTDDS2_DISTROS:
        return PROFILES_FILE_FASTDDS2
    return PROFILES_FILE_FASTDDS3


@cache
def _installed_rclpy_version() -> str:
    """rclpy's version from its package metadata (PyPI wheels and ROS installations both carry it), '' if none."""
    try:
        return importlib.metadata.version('rclpy')
    except importlib.metadata.PackageNotFoundError:
        return ''


def read_rmem_max(path: Path = RMEM_MAX) -> int | None:
    """net.core.rmem_max in bytes (the ceiling of every socket's receive buffer), None where unreadable."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def find_node_profile() -> Path | None:
    """``config/fastdds_node.xml`` in a source checkout, else the installed ``share/evit_ros/config``."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / 'config' / NODE_PROFILE]
    share = Path('share') / 'evit_ros' / 'config' / NODE_PROFILE
    candidates += [p / share for p in here.parents]                       # <prefix>/lib/pythonX/site-packages/...
    candidates += [Path(sys.prefix) / share]
    candidates += [Path(p) / share for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    return next((c for c in candidates if c.is_file()), None)


def choose(environ: dict[str, str] | os._Environ[str], cwd: Path, profile: Path | None,
           rmem_max: int | None, variable: str) -> TransportChoice:
    """Whether the node's profile applies in this environment: the user's own Fast DDS setup always wins."""
    switch = environ.get(SWITCH, '').strip().lower()
    if switch not in SWITCH_VALUES:
        raise ConfigError(f'{SWITCH}={environ.get(SWITCH)!r} is not one of node, off; unset it (or "node") for the '
                          "node's shipped Fast DDS profile, \"off\" for Fast DDS as the environment configures it")

    def keep(kind: str, why: str, profile_in_effect: str = '') -> TransportChoice:
        return TransportChoice(False, kind, profile_in_effect, why, rmem_max)

    rmw = environ.get('RMW_IMPLEMENTATION', '').strip()
    if rmw and not rmw.startswith('rmw_fastrtps'):
        return keep('other_rmw', f'{rmw} (the node\'s Fast DDS profile applies to Fast DDS only)')
    for var in (PROFILES_FILE_FASTDDS3, PROFILES_FILE_FASTDDS2):
        if environ.get(var, '').strip():
            return keep('user', f'your Fast DDS profile {environ[var]} ({var})', environ[var])
    if environ.get(BUILTIN_TRANSPORTS, '').strip():
        return keep('user', f'Fast DDS with {BUILTIN_TRANSPORTS}={environ[BUILTIN_TRANSPORTS]}')
    for name in DEFAULT_PROFILE_FILES:
        if (cwd / name).is_file():
            found = str(cwd / name)
            return keep('user', f'your Fast DDS profile {found} (read from the working directory)', found)
    if switch == 'off':
        return keep('off', f'Fast DDS defaults ({SWITCH}=off): large frames from several cameras are delayed or '
                    'lost in the camera driver\'s 512 KiB shared-memory segment')
    if profile is None:
        return keep('missing', f'Fast DDS defaults: the node\'s profile {NODE_PROFILE} is not installed '
                    '(reinstall evit_ros)')
    return TransportChoice(True, 'node', str(profile), f'node profile {profile} ({variable}): camera frames in '
                           'over UDP, masks out through shared memory', rmem_max)


def planned() -> TransportChoice:
    """What :func:`apply_node_profile` would choose in this process's environment (also what ``evit-ros doctor``
    reports)."""
    return choose(os.environ, Path.cwd(), find_node_profile(), read_rmem_max(), profiles_file_variable())


def apply_node_profile() -> TransportChoice:
    """Set the node's Fast DDS profile for this process unless the user configured Fast DDS; before rclpy.init."""
    global _CURRENT
    choice = planned()
    if choice.applied:
        os.environ[profiles_file_variable()] = choice.profile
    _CURRENT = choice
    return choice


def current() -> TransportChoice:
    """What this process runs on: what :func:`apply_node_profile` chose, else the environment as it is (a node
    created in-process, e.g. by a test or a composed launch, without the node's entry point)."""
    if _CURRENT is not None:
        return _CURRENT
    choice = choose(os.environ, Path.cwd(), None, read_rmem_max(), profiles_file_variable())
    if choice.kind != 'missing':
        return choice
    return TransportChoice(False, 'in_process', '', 'Fast DDS defaults (a node created in-process: segmentation_node '
                           'sets the node\'s profile at its start)', choice.rmem_max)

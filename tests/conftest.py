"""Shared test setup.

Every pytest process gets its own ROS domain and localhost-only discovery, so ROS tests of
concurrent runs (developers, CI) never see each other's topics.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 200))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('OMP_NUM_THREADS', '2')
os.environ.setdefault('MPLBACKEND', 'Agg')
# Automatically exported ONNX files (evit_ros.backends.ensure_onnx) are shared by all tests and the
# node subprocesses they start, and never touch the user's ~/.cache.
os.environ.setdefault('EVIT_ROS_CACHE', tempfile.mkdtemp(prefix='evit_ros_test_cache_'))

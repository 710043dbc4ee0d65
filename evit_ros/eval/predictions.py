"""``--save-predictions DIR``: predictions as label PNGs that other tools (cityscapesScripts, labelling tools) read.

Bags: ``DIR/<camera>/<stamp_ns>.png`` in the run's ``--label-format`` (trainIds, or labelIds). Cityscapes:
``DIR/<city>_<seq>_<frame>_pred_labelIds.png`` (labelIds, the format cityscapesScripts'
``evalPixelLevelSemanticLabeling`` and the benchmark server match by the ``city_seq_frame`` stem).
Every PNG is written under a temporary name and moved into place, so a killed run never leaves half a PNG.

A source (a bag, a slice, the Cityscapes folder) writes into its own hidden staging folder
``DIR/.partial-<host>-<pid>-<random>/`` and its PNGs move into ``DIR`` only when it finishes: a bag (or slice)
that fails leaves no prediction behind, and an existing PNG is never replaced (counted under
``predictions_not_saved``). Staging folders of processes that are gone (SIGKILL) are removed by the next run,
and at the end of this one, never those of a live process (:func:`remove_stale_partials`).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np

from evit_ros.datasets import CITYSCAPES_LABEL_TO_TRAIN, IGNORE_ID
from evit_ros.errors import DataError
from evit_ros.fileio import pid_alive

LEFT_SUFFIX = '_leftImg8bit'


def train_to_label_lut() -> np.ndarray:
    """trainId -> Cityscapes labelId (255 -> 0, 'unlabeled'), 256 entries."""
    lut = np.zeros(256, np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[train_id] = label_id
    lut[IGNORE_ID] = 0
    return lut


def check_predictions_dir(path: str | Path) -> None:
    """Refuse a non-empty or unwritable folder before the model is loaded (nothing of the user's is overwritten)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DataError(f'--save-predictions {p} is a file; give a folder (it is created)')
    if p.is_dir() and any(p.iterdir()):
        raise DataError(f'--save-predictions {p} is not empty; choose a new or empty folder')
    parent = p if p.is_dir() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise DataError(f'--save-predictions {p}: {parent} is not writable')


def _host() -> str:
    return re.sub(r'[^A-Za-z0-9_]', '_', socket.gethostname())[:40] or 'host'


_PARTIAL = re.compile(r'\.partial-(?:(?P<host>[A-Za-z0-9_]+)-)?(?P<pid>\d+)(?:-[^/]*)?$')


def remove_stale_partials(folder: str | Path, prefix: str = '') -> list[Path]:
    """Remove ``<prefix>...partial-[<host>-]<pid>[-...]`` entries of ``folder`` left by processes that are gone.

    Only entries of this host (or naming no host) whose process no longer exists are removed; returns them.
    ``prefix`` limits the entries considered (an out-bag's ``.<name>.partial-<pid>``).
    """
    d = Path(folder)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    try:
        entries = list(d.iterdir())
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(prefix or '.'):
            continue
        m = _PARTIAL.search(e.name)
        if m is None or (m.group('host') and m.group('host') != _host()) or pid_alive(int(m.group('pid'))):
            continue
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e, ignore_errors=True)
        else:
            e.unlink(missing_ok=True)
        removed.append(e)
    return removed


class PredictionWriter:
    """Writes one label PNG per scored image; ``staged``: into a staging folder, published by :meth:`commit`."""

    def __init__(self, root: str | Path, label_format: str = 'trainid', staged: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.labelid = label_format == 'labelid'
        self.lut = train_to_label_lut()
        self.written = 0
        self.staging: Path | None = None
        if staged:
            self.staging = Path(tempfile.mkdtemp(prefix=f'.partial-{_host()}-{os.getpid()}-', dir=self.root))

    def commit(self) -> int:
        """Move the staged PNGs into place (never over an existing file); returns how many were not moved."""
        if self.staging is None:
            return 0
        kept = 0
        for dirpath, _dirs, files in os.walk(self.staging):
            for name in files:
                src = Path(dirpath) / name
                dst = self.root / src.relative_to(self.staging)
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)   # atomic and never replaces: parallel workers cannot overwrite each other
                except FileExistsError:
                    kept += 1
                except OSError:       # a file system without hard links
                    if dst.exists():
                        kept += 1
                    else:
                        os.replace(src, dst)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None
        return kept

    def abort(self) -> None:
        """Drop every PNG of this source (it failed: its frames are not in the report)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def path_for(self, cam: str, stamp_ns: int, frame_id: str = '', cityscapes: bool = False) -> Path:
        if cityscapes:
            stem = frame_id[:-len(LEFT_SUFFIX)] if frame_id.endswith(LEFT_SUFFIX) else frame_id
            return self.root / f'{stem}_pred_labelIds.png'
        return self.root / cam / f'{stamp_ns}.png'

    def write(self, labels: np.ndarray, cam: str, stamp_ns: int, frame_id: str = '', cityscapes: bool = False) -> Path:
        import cv2
        path = self.path_for(cam, stamp_ns, frame_id, cityscapes)
        if self.staging is not None:
            path = self.staging / path.relative_to(self.root)
        path.parent.mkdir(parents=True, exist_ok=True)
        img = self.lut[labels] if (self.labelid or cityscapes) else np.ascontiguousarray(labels, np.uint8)
        tmp = path.with_name(f'.{path.name}.tmp.png')
        if not cv2.imwrite(str(tmp), img):
            raise DataError(f'could not write {tmp}; check the --save-predictions folder')
        os.replace(tmp, path)
        self.written += 1
        return path

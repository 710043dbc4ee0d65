"""Cityscapes reader: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``,
and THE ground-truth file reader that ``--cityscapes`` and ``--labels-dir`` share (:func:`read_label_file`).

Labels are labelIds mapped to trainIds (the official protocol), images are read as RGB and never resized
here: the pipeline resizes to the model input and the prediction back to the camera (label) size.

Ground-truth files follow cityscapesScripts' conventions: an 8-bit single-channel PNG holds the ids
themselves (labelIds or trainIds, per ``--label-format``); a 16-bit PNG holds instance-style ids (the
``*_instanceIds.png`` convention: an id ``>= 1000`` is ``labelId * 1000 + k``, an id below 1000 is the id
itself), read as ``id // 1000`` for ids ``>= 1000``, never cut to 8 bits; a 3- or 4-channel PNG whose colour
channels are equal is read as its first channel. A colour-coded file (``*_color.png``: channels differ), any
other sample type, an image larger than ``MAX_LABEL_PIXELS`` or a corrupt file is refused by name
(:class:`LabelFileError`, counted under ``bad_label_<reason>``), and decoder messages never reach stderr.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from evit_ros.errors import ConfigError, DataError
from evit_ros.eval.bags import IMAGE, BagEvent

TOPIC = '/cityscapes/image'
MAX_LABEL_PIXELS = 64 * 1024 * 1024   # a ground-truth PNG larger than this (8192x8192) is refused unread
MAX_FILE_BYTES = 256 * 1024 * 1024
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_STDERR_LOCK = threading.Lock()


class LabelFileError(DataError):
    """A ground-truth file that cannot be used; ``counter`` is its ``bad_label_<reason>`` report counter."""

    def __init__(self, path: Path, reason: str, why: str) -> None:
        super().__init__(f'ground truth {path} {why}; frame not scored')
        self.counter = f'bad_label_{reason}'


def _png_problem(data: bytes) -> str:
    """'' for a structurally sound PNG (chunk CRCs, IHDR size within bounds), else why not; not a PNG: ''."""
    if not data.startswith(PNG_SIGNATURE):
        return ''
    pos, end, seen_end = 8, len(data), False
    while pos + 12 <= end:
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        if pos + 12 + length > end:
            return f'is truncated (chunk {kind!r} runs past the end of the file)'
        body = data[pos + 4:pos + 8 + length]
        if zlib.crc32(body) != struct.unpack('>I', data[pos + 8 + length:pos + 12 + length])[0]:
            return f'is corrupt (CRC error in chunk {kind!r})'
        if kind == b'IHDR' and length >= 8:
            w, h = struct.unpack('>II', body[4:12])
            if w * h > MAX_LABEL_PIXELS:
                return f'declares {w}x{h} pixels, more than {MAX_LABEL_PIXELS} (refused unread)'
        if kind == b'IEND':
            seen_end = True
            break
        pos += 12 + length
    return '' if seen_end else 'is truncated (no IEND chunk)'


def quiet_imdecode(data: bytes, flags: int) -> np.ndarray | None:
    """``cv2.imdecode`` with the decoder's own messages (libpng, libjpeg write to fd 2) kept out of stderr."""
    import cv2
    buf = np.frombuffer(data, np.uint8)
    with _STDERR_LOCK, _stderr_silenced():
        return cv2.imdecode(buf, flags)


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    try:
        saved = os.dup(2)
    except OSError:   # no stderr at all: nothing to protect
        yield
        return
    try:
        with open(os.devnull, 'wb') as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_WARNED: dict[str, int] = {}


def warn_limited(key: str, message: str, limit: int = 3) -> None:
    """A warning line for the first ``limit`` problems of a kind, debug after that (the report counts them all)."""
    _WARNED[key] = _WARNED.get(key, 0) + 1
    if _WARNED[key] <= limit:
        LOG.warning('%s%s', message, ' (further ones are counted in the report, not logged)'
                    if _WARNED[key] == limit else '')
    else:
        LOG.debug('%s', message)


def read_label_file(path: str | Path) -> np.ndarray:
    """The ids of a ground-truth PNG (labelIds or trainIds, as stored), per cityscapesScripts' conventions.

    Returns a 2-D uint8 or uint16 array (ids 256..999 of a 16-bit file are kept: they are counted as values
    outside the label format by the scorer, never truncated). Raises LabelFileError naming the file and why.
    """
    import cv2
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise LabelFileError(p, 'too_large', f'is {size} bytes, more than {MAX_FILE_BYTES}')
        data = p.read_bytes()
    except OSError as exc:
        raise LabelFileError(p, 'file', f'cannot be read ({exc.strerror or exc})') from exc
    problem = _png_problem(data)
    if problem:
        raise LabelFileError(p, 'too_large' if 'declares' in problem else 'file', problem)
    img = quiet_imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise LabelFileError(p, 'file', 'cannot be decoded (not an image, or corrupt)')
    if img.ndim == 3:
        color = img[..., :3]
        if not (np.array_equal(color[..., 0], color[..., 1]) and np.array_equal(color[..., 0], color[..., 2])):
            raise LabelFileError(p, 'channels', f'has {img.shape[2]} channels that differ (a colour-coded '
                                 '*_color.png?); give single-channel id images such as *_gtFine_labelIds.png')
        img = color[..., 0]
    if img.ndim != 2:
        raise LabelFileError(p, 'channels', f'has shape {img.shape}; give a single-channel id image')
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.uint16:
        return np.where(img >= 1000, img // 1000, img).astype(np.uint16)
    raise LabelFileError(p, 'dtype', f'holds {img.dtype} samples; give 8-bit ids (or 16-bit instance-style ids)')
DATASET_ENV = 'CITYSCAPES_DATASET'   # cityscapesScripts' variable for the dataset root
LOG = logging.getLogger('evit_ros.eval')


def dataset_root(folder: str = '') -> Path:
    """``folder``, else ``$CITYSCAPES_DATASET``; a ConfigError says how to give one."""
    root = folder or os.environ.get(DATASET_ENV, '')
    if not root:
        raise ConfigError(f'--cityscapes needs a folder: pass --cityscapes DIR or set {DATASET_ENV} '
                          '(the folder holding leftImg8bit/ and gtFine/, or the unzipped *_trainvaltest/ folders)')
    return Path(root).expanduser()


def _find(root: Path, kind: str, split: str) -> Path | None:
    """``root/<kind>/<split>`` or the unzipped archive layout ``root/<kind>_trainvaltest/<kind>/<split>``."""
    for cand in (root / kind / split, root / f'{kind}_trainvaltest' / kind / split):
        if cand.is_dir():
            return cand
    return None


def cityscapes_pairs(root: str | Path, split: str = 'val') -> list[tuple[Path, Path]]:
    """Sorted (image, labelIds) pairs; raises DataError naming the expected layout when nothing matches.

    Accepts the official layout (``leftImg8bit/<split>``, ``gtFine/<split>``) and the unzipped archives
    (``leftImg8bit_trainvaltest/leftImg8bit/<split>``, ``gtFine_trainvaltest/gtFine/<split>``).
    Called before the model is loaded, so a wrong folder fails in a second.
    """
    r = Path(root)
    layout = (f'DIR/leftImg8bit/{split}/<city>/*_leftImg8bit.png and DIR/gtFine/{split}/<city>/'
              f'*_gtFine_labelIds.png (or the unzipped leftImg8bit_trainvaltest/ and gtFine_trainvaltest/)')
    if not r.is_dir():
        raise DataError(f'Cityscapes folder {r} does not exist; --cityscapes expects {layout}')
    img_dir = _find(r, 'leftImg8bit', split)
    if img_dir is None:
        raise DataError(f'no leftImg8bit/{split} under {r}; --cityscapes expects {layout}')
    gt_dir = _find(r, 'gtFine', split)
    if gt_dir is None:
        raise DataError(f'no gtFine/{split} under {r}; download gtFine_trainvaltest.zip and unzip it in {r} '
                        f'(expected {layout})')
    if split == 'test':
        LOG.warning('the Cityscapes test split has no public labels (its gtFine files are all void): nothing can '
                    'be scored; evaluate --split val, or submit --save-predictions to the benchmark server')
    pairs = []
    for img in sorted(img_dir.rglob('*_leftImg8bit.png')):
        rel = img.relative_to(img_dir)
        lab = gt_dir / rel.parent / img.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png')
        if not lab.is_file():
            raise DataError(f'label {lab} for {img} is missing; download gtFine_trainvaltest and unpack it in {r}')
        pairs.append((img, lab))
    if not pairs:
        raise DataError(f'no *_leftImg8bit.png under {img_dir}; check the --cityscapes directory and --split')
    return pairs


def iter_cityscapes(root: str | Path, split: str = 'val',
                    pairs: list[tuple[Path, Path]] | None = None) -> Iterator[BagEvent]:
    """One image event per pair carrying its labelIds (:func:`read_label_file`; the scorer maps them to trainIds).

    An unreadable image is an error event (``bad_image_corrupt``); an unusable label file gives an image event
    without a label whose ``detail`` is ``bad_label_<reason>: <why>`` (counted, the frame is not scored).
    """
    import cv2
    for i, (img_path, lab_path) in enumerate(pairs if pairs is not None else cityscapes_pairs(root, split)):
        t0 = time.perf_counter()
        try:
            raw = img_path.read_bytes()
        except OSError:
            raw = b''
        bgr = quiet_imdecode(raw, cv2.IMREAD_COLOR) if raw and not _png_problem(raw) else None
        decode_ms = (time.perf_counter() - t0) * 1000.0
        if bgr is None:
            yield BagEvent(TOPIC, IMAGE, i, error='corrupt', detail=str(img_path))
            continue
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        try:
            lab = read_label_file(lab_path)
        except LabelFileError as exc:
            warn_limited(exc.counter, str(exc))
            yield BagEvent(TOPIC, IMAGE, i, data=rgb, decode_ms=decode_ms, frame_id=img_path.stem,
                           detail=f'{exc.counter}: {exc}')
            continue
        yield BagEvent(TOPIC, IMAGE, i, data=rgb, decode_ms=decode_ms, frame_id=img_path.stem, label=lab)

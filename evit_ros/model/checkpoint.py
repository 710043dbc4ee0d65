"""Loading official EfficientViT-Seg checkpoints (strict, offline), finding them on disk, and ``create_model``.

Search path for ``pretrained=True`` (first hit wins), file name ``efficientvit_seg_<variant>_<dataset>.pt``:

1. every directory in the environment variable ``EVIT_ROS_CHECKPOINTS`` (``os.pathsep``-separated),
2. ``engines/`` in the current directory, then ``engines/`` in the evit_ros source checkout,
3. ``~/.cache/evit_ros/checkpoints``.

Nothing is downloaded: vehicles are offline. A missing file raises CheckpointError with the official
URL ``https://huggingface.co/han-cai/efficientvit-seg/resolve/main/<file>`` and the directories searched.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import torch
from torch import nn

from evit_ros.errors import CheckpointError
from evit_ros.fileio import file_sha256
from evit_ros.model.zoo import build_model, checkpoint_filename, list_models

__all__ = ['CHECKPOINT_ENV', 'DOWNLOAD_URL', 'checkpoint_search_path', 'find_checkpoint', 'read_state_dict',
           'load_checkpoint', 'identify_variant', 'checkpoint_sha256', 'download_url', 'create_model']

CHECKPOINT_ENV = 'EVIT_ROS_CHECKPOINTS'
DOWNLOAD_URL = 'https://huggingface.co/han-cai/efficientvit-seg/resolve/main/{file}'
_SHOW = 5  # keys listed per category in mismatch messages


def download_url(name: str) -> str:
    """Official download URL of a zoo model's checkpoint."""
    return DOWNLOAD_URL.format(file=checkpoint_filename(name))


def checkpoint_search_path() -> list[Path]:
    """Directories searched by ``pretrained=True``, in order (duplicates removed)."""
    dirs: list[Path] = []
    for entry in os.environ.get(CHECKPOINT_ENV, '').split(os.pathsep):
        if entry.strip():
            dirs.append(Path(entry.strip()).expanduser())
    dirs.append(Path.cwd() / 'engines')
    dirs.append(Path(__file__).resolve().parents[2] / 'engines')
    dirs.append(Path.home() / '.cache' / 'evit_ros' / 'checkpoints')
    seen: set[str] = set()
    out = []
    for d in dirs:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def find_checkpoint(name: str) -> str:
    """Path of the official checkpoint of ``name`` on the search path, or CheckpointError saying how to get it."""
    file = checkpoint_filename(name)
    dirs = checkpoint_search_path()
    for d in dirs:
        if (d / file).is_file():
            return str(d / file)
    searched = ', '.join(str(d) for d in dirs)
    raise CheckpointError(
        f'pretrained weights for {name} not found: no {file} in {searched}. Nothing is downloaded at run time; '
        f'download it on a connected machine from {DOWNLOAD_URL.format(file=file)} and put it in '
        f'{Path.home() / ".cache" / "evit_ros" / "checkpoints"} (or engines/, or a directory listed in '
        f'${CHECKPOINT_ENV}), or pass the file with checkpoint=PATH.')


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a checkpoint file (recorded in exported ONNX metadata)."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f'cannot read checkpoint {str(path)!r}: {exc}; check the path') from exc


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: ``{'state_dict': sd}`` or a bare ``sd``; a ``module.`` prefix is removed.

    Uses ``torch.load(map_location='cpu', weights_only=True)``, so a file that needs arbitrary pickled
    objects is refused instead of executed.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f'checkpoint {str(path)!r} does not exist or is not a file; check the path')
    try:
        obj = torch.load(str(p), map_location='cpu', weights_only=True)
    except Exception as exc:  # corrupt zip, pickle refused by weights_only, truncated file, ...
        raise CheckpointError(f'cannot load checkpoint {str(p)!r} with torch.load(weights_only=True): '
                              f'{type(exc).__name__}: {exc}. Use an official .pt file or a plain state dict '
                              f'saved with torch.save(model.state_dict(), path).') from exc
    if isinstance(obj, Mapping) and 'state_dict' in obj:
        obj = obj['state_dict']
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f'checkpoint {str(p)!r} holds {type(obj).__name__}, not a state dict '
                              f'(expected a dict of tensors or {{"state_dict": ...}})')
    non_tensor = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise CheckpointError(f'checkpoint {str(p)!r} is not a state dict: entries {non_tensor[:_SHOW]} are not '
                              f'tensors (expected a dict of tensors or {{"state_dict": ...}})')
    keys = [str(k) for k in obj]
    if all(k.startswith('module.') for k in keys):
        return {k[len('module.'):]: v for k, v in zip(keys, obj.values(), strict=True)}
    return dict(zip(keys, obj.values(), strict=True))


@cache
def _reference_shapes(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Ordered (key, shape) of a zoo model, built on the meta device (no memory, no init cost)."""
    with torch.device('meta'):
        model = build_model(name)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def identify_variant(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Zoo names whose state_dict keys and shapes all equal those of ``state_dict`` (usually one or none)."""
    return _matching_variants({k: tuple(v.shape) for k, v in state_dict.items()})


def _matching_variants(have: dict[str, tuple[int, ...]]) -> list[str]:
    return [n for n in list_models() if dict(_reference_shapes(n)) == have]


def _closest_variant(have: dict[str, tuple[int, ...]]) -> tuple[str, float]:
    best, best_score = '', 0.0
    for n in list_models():
        ref = dict(_reference_shapes(n))
        same = sum(1 for k, s in have.items() if ref.get(k) == s)
        score = same / max(len(ref), len(have))
        if score > best_score:
            best, best_score = n, score
    return best, best_score


def _mismatch_message(path: str, model_name: str, have: dict[str, tuple[int, ...]],
                      want: dict[str, tuple[int, ...]]) -> str:
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    shaped = [f'{k}: file {list(have[k])} vs model {list(want[k])}' for k in want if k in have and have[k] != want[k]]
    parts = [f'checkpoint {path!r} does not match {model_name}:']
    for label, items in (('missing', missing), ('unexpected', unexpected), ('mis-shaped', shaped)):
        if items:
            more = f' (+{len(items) - _SHOW} more)' if len(items) > _SHOW else ''
            parts.append(f'{len(items)} {label} key(s): {"; ".join(items[:_SHOW])}{more}.')
    exact = _matching_variants(have)
    if exact:
        parts.append(f'The file is {" / ".join(exact)}: load it as model {exact[0]} (--model {exact[0]}), '
                     f'or use a checkpoint made for {model_name}.')
    else:
        near, score = _closest_variant(have)
        if score >= 0.5:
            parts.append(f'It is closest to {near} ({score:.0%} of entries agree) but matches no official model.')
        else:
            parts.append('It matches no official EfficientViT-Seg model.')
    return ' '.join(parts)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, model_name: str | None = None) -> nn.Module:
    """Strictly load a checkpoint into ``model`` (in place) and return it.

    Any missing, unexpected or mis-shaped key raises CheckpointError listing the first few of each and,
    when the shapes reveal it, which zoo model the file actually belongs to.
    """
    sd = read_state_dict(path)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in sd.items()}
    if want != have:
        raise CheckpointError(_mismatch_message(str(path), model_name or type(model).__name__, have, want))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f'checkpoint {str(path)!r} could not be loaded into {model_name}: {exc}') from exc
    return model


def create_model(name: str, pretrained: bool = False, checkpoint: str | None = None) -> nn.Module:
    """An eval-mode EfficientViT-Seg model by official zoo name.

    ``checkpoint`` (a path) is loaded strictly; otherwise ``pretrained=True`` loads the official file
    found on the checkpoint search path (see :func:`evit_ros.model.checkpoint.find_checkpoint`); with
    neither the weights are PyTorch's default random init. Nothing is ever downloaded.
    """
    model = build_model(name)
    if checkpoint:
        load_checkpoint(model, checkpoint, model_name=name)
    elif pretrained:
        load_checkpoint(model, find_checkpoint(name), model_name=name)
    return model.eval()

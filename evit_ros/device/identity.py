"""Which GPU an engine belongs to: the identity the engine cache keys on.

A TensorRT engine is tied to the GPU model, its SM count and memory, and on a Jetson to the board: every
Orin module reports compute capability 8.7, but an engine tuned on an AGX Orin must not load on an Orin
Nano. Plain data and a file read, so the engine cache, the builder and the runtime share it without
importing CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEVICE_TREE_MODEL = Path('/proc/device-tree/model')


def board_model() -> str:
    """``/proc/device-tree/model`` (e.g. 'NVIDIA Jetson AGX Orin Developer Kit'); '' off a Jetson."""
    try:
        return DEVICE_TREE_MODEL.read_text(errors='ignore').strip('\x00 \n')
    except OSError:
        return ''


@dataclass(frozen=True)
class GpuIdentity:
    """What an engine is tied to. The compute capability alone is not enough: every Orin module reports
    8.7, but an AGX Orin engine tuned for 16 SMs and 64 GB must not be loaded on an 8 GB Orin Nano."""

    name: str
    compute_capability: str
    sm_count: int = 0
    total_memory_mb: int = 0
    board: str = ''

    @classmethod
    def from_tuple(cls, gpu: GpuIdentity | tuple[str, str]) -> GpuIdentity:
        """Accept the old ``(name, compute capability)`` pair (SM count / memory unknown = 0)."""
        if isinstance(gpu, GpuIdentity):
            return gpu
        return cls(str(gpu[0]), str(gpu[1]), 0, 0, board_model())

    def describe(self) -> str:
        board = f' on {self.board}' if self.board else ''
        return (f'{self.name} (sm {self.compute_capability}, {self.sm_count} SMs, {self.total_memory_mb} MiB)'
                f'{board}')

"""The one exception hierarchy of evit_ros.

Every error a user can cause derives from :class:`EvitError` and carries a message that names the
bad value and says what to do. Each class also derives from the closest builtin, so callers that
catch ``ValueError`` or ``RuntimeError`` keep working.
"""


class EvitError(Exception):
    """Base class of every evit_ros error."""


class ConfigError(EvitError, ValueError):
    """A parameter, YAML file or command-line option has an invalid value."""


class ModelError(EvitError, ValueError):
    """Unknown model name or an input the network cannot take (e.g. a size not a multiple of 32)."""


class CheckpointError(EvitError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the model it is loaded into."""


class ExportError(EvitError, RuntimeError):
    """ONNX export or its verification failed."""


class CacheError(EvitError, OSError):
    """The ONNX/engine cache folder cannot be written (read-only, a file in its place, a full disk)."""


class EngineError(EvitError, RuntimeError):
    """A TensorRT engine could not be built, loaded, or does not match its cache key."""


class EngineBuildError(EngineError):
    """The TensorRT builder or ONNX parser rejected the network."""


class EngineCacheMismatch(EngineError):
    """An engine exists but was built for another ONNX, TensorRT version, GPU or precision."""


class BackendError(EvitError, RuntimeError):
    """An inference backend failed to load or run."""


class BackendUnavailableError(BackendError, ImportError):
    """The runtime a backend needs (TensorRT, CUDA, ONNX Runtime, PyTorch) is not installed or has no device."""


class FrameError(EvitError, ValueError):
    """A camera frame cannot be decoded: unknown encoding, wrong size or step, truncated or corrupt data.

    ``reason`` is a short, stable key (e.g. ``'encoding'``, ``'size'``, ``'corrupt'``) used to count bad
    frames by cause in diagnostics and evaluation reports.
    """

    def __init__(self, message: str, reason: str = 'invalid') -> None:
        super().__init__(message)
        self.reason = reason


class DataError(EvitError, ValueError):
    """Evaluation data (bags, label images, dataset folders) is missing or malformed."""

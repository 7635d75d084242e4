"""All of lit_kd's error types. Each message names the problem and where it is (file and line, config key,
model path); the command line prints it as one line instead of a traceback."""


class LitKDError(Exception):
    """Base of every error lit_kd raises on bad input."""


class ConfigError(LitKDError, ValueError):
    """A configuration value is invalid (unknown loss name, τ ≤ 0, a hyperparameter out of range, ...)."""


class NonFiniteError(LitKDError, FloatingPointError):
    """NaN or +inf appeared in the logits or the loss during a step (policy ``raise``)."""


class CheckpointError(LitKDError, RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


class OutputDirError(LitKDError, OSError):
    """An output directory cannot be created or written."""


class CacheError(LitKDError, RuntimeError):
    """A teacher cache is missing, truncated, unreadable, or was built for another teacher, data or settings."""


class OutOfSpaceError(LitKDError, OSError):
    """The disk (or quota) is full while writing a checkpoint, a result or a cache; the message names the path."""


class LockedError(LitKDError, RuntimeError):
    """A directory is in use by another lit_kd process (its lock file names the owner)."""


class DataFormatError(LitKDError, ValueError):
    """A data source is missing, unreadable or has a bad row; the message says where (file and line)."""


class ModelLoadError(LitKDError, RuntimeError):
    """A model or tokenizer could not be loaded; the message names the role and the source."""


class VocabularyMismatchError(LitKDError, ValueError):
    """Teacher and student cannot be compared token by token."""


class ExportError(LitKDError, RuntimeError):
    """The export target is unusable (it exists, or its folder is not writable)."""

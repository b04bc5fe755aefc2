"""Errors that mean "the user gave us something wrong": the CLI prints them on one line."""


class LLPFError(Exception):
    """Base of every error the CLI reports as ``llpf: error: ...`` with exit code 2."""


class ConfigError(LLPFError):
    """A config key, value or phase pattern is wrong."""


class ModelMismatchError(LLPFError):
    """Start and destination models differ in architecture or shapes, or a checkpoint does not fit."""


class CheckpointError(LLPFError):
    """A weights or checkpoint file is missing, truncated, corrupt or unsafe."""


class DataError(LLPFError):
    """A dataset is missing, empty or does not fit the model."""


class RunDirError(LLPFError):
    """An output directory already holds a run, or cannot be written."""


class DeviceError(LLPFError):
    """The device asked for does not exist on this machine (or is not one torch knows)."""


class NonFiniteError(LLPFError):
    """Weights or a loss became NaN or infinite."""


class PrerequisiteWarning(UserWarning):
    """An input breaks a premise of the method (paper section 3.2, Eq. 4); the run goes on."""


class AlignmentError(LLPFError):
    """A model whose permutation groups cannot be found (torch.fx cannot trace it), or an alignment that fails."""

"""Exception types: every error a user can cause is a `FsmProbeError`.

The CLI turns these into one line on stderr and exit code 2.
"""


class FsmProbeError(Exception):
    """Base class of every error caused by bad input to fsm_probe."""


class AutomatonError(FsmProbeError):
    """A malformed automaton or task file (bad JSON, unknown state or symbol, non-total table)."""


class TaskError(FsmProbeError):
    """An unknown task name or bad task parameters."""


class InputError(FsmProbeError):
    """Bad model input: tokens outside the alphabet, sequences longer than the context."""


class ConfigError(FsmProbeError):
    """Nonsensical architecture or training hyperparameters."""


class CheckpointError(FsmProbeError):
    """A missing, truncated or mismatched checkpoint directory."""


class OutputError(FsmProbeError):
    """An output that cannot be written (full disk, I/O error, bad or foreign --out path)."""


class LockedError(OutputError):
    """The output directory is being written by another run."""


class ResourceError(ConfigError):
    """Sizes whose estimated memory does not fit: the message names the estimate and what to lower."""

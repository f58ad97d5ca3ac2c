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

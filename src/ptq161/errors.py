"""User-facing errors: the CLI prints them as one line and exits with their ``exit_code`` (2, or 3
for non-finite numbers)."""


class PTQ161Error(Exception):
    """A problem with the user's input (model, data, options) that has a one-line explanation."""

    exit_code = 2


class UnsupportedModelError(PTQ161Error):
    """The model's architecture has no adapter and generic discovery failed."""


class DataError(PTQ161Error):
    """A corpus or data file is missing, unreadable or too short."""


class NonFiniteError(PTQ161Error):
    """A NaN or infinite number in the weights, a loss, a block's output or a result (exit code 3)."""

    exit_code = 3


FINITE_CHUNK = 2**22  # elements checked at a time by check_finite


def check_finite(t, what: str) -> None:
    """``NonFiniteError`` "``what`` is NaN / infinite" unless every element of tensor or float ``t`` is finite."""
    import math

    import torch

    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            return
        # in slices: torch.isfinite makes temporaries of the tensor's size (|t| among them), which
        # for a large embedding raised the peak memory of a load by more than the embedding itself
        parts = t.reshape(-1).split(FINITE_CHUNK)
        if not all(bool(torch.isfinite(part).all()) for part in parts):
            kind = "NaN" if any(bool(torch.isnan(part).any()) for part in parts) else "infinite"
            raise NonFiniteError(f"{what} holds {kind} values")
    elif not math.isfinite(t):
        raise NonFiniteError(f"{what} is {t}")

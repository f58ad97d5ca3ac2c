"""Validation of token inputs shared by every model family."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError


def check_tokens(
    tokens: Tensor | np.ndarray | Sequence, d_vocab: int, n_ctx: int | None = None
) -> Tensor:
    """`tokens` as int64 `[batch, pos]`, or `InputError` naming what is wrong.

    A 1-D input gets a batch dimension. `n_ctx` bounds the length (Transformers).
    """
    if isinstance(tokens, Tensor):
        t = tokens
    else:
        try:
            t = torch.as_tensor(np.asarray(tokens))
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"tokens must be an integer array [batch, pos]: {e}") from None
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise InputError(f"tokens must be integers, got dtype {t.dtype}")
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        raise InputError(f"tokens must have shape [batch, pos], got {tuple(t.shape)}")
    if t.numel():
        lo, hi = torch.aminmax(t)
        if lo < 0 or hi >= d_vocab:
            bad = int(lo) if lo < 0 else int(hi)
            raise InputError(f"token id {bad} is outside the vocabulary [0, {d_vocab})")
    if n_ctx is not None and t.shape[1] > n_ctx:
        raise InputError(f"sequence length {t.shape[1]} exceeds the Transformer's context n_ctx={n_ctx}")
    return t.long()

"""Logit lens and tuned lens: read the model's answer out of every layer.

The logit lens decodes each residual-stream point (Transformer: `resid_pre` of block 0, then
`resid_mid` and `resid_post` of every block) through the final norm and the unembedding, and,
for an RNN, applies the readout to each layer's hidden state. Per layer and position it reports
how often the decoded argmax is the true label, the probability given to it, and the KL divergence
from the model's own output. The tuned lens (Belrose et al. 2023) first passes each point through a
learned affine map `h + A h + b`, trained to match the final output distribution.

On an RMT the sites are the inner Transformer's residual stream at the token positions of every
segment (the read and write memory slots are cut out and the segments put back in order), decoded
through the inner `ln_final` and unembedding; probes can also read the memory (`hook_memory`), one
row per segment end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from ..models import as_tokens, model_config
from ..models.rmt import MEMORY_HOOK
from ..tasks import Task
from ..tasks.datasets import IGNORE_INDEX, Batch, eval_set, label_batch
from ..training.run import Run, as_run, unwrap
from . import sites as S
from .sites import StreamPoint, stream_points

Site = StreamPoint  # the old name of a stream point


def stream_sites(
    model: nn.Module, incl_mid: bool = True, incl_cell: bool = False, incl_memory: bool = False
) -> list[StreamPoint]:
    """The residual-stream points of `model`, input to output (`sites.stream_points`)."""
    return stream_points(model_config(model), incl_mid=incl_mid, incl_cell=incl_cell, incl_memory=incl_memory)


def site_positions(model: nn.Module, hook: str, length: int) -> np.ndarray:
    """The input positions the rows of `cache_sites(...)[hook]` describe: every position, or for
    an RMT's memory the last position of each complete segment."""
    if hook == MEMORY_HOOK:
        seg = model_config(model).segment_length
        return np.arange(seg - 1, length, seg)
    return np.arange(length)


def analysis_batch(
    model: nn.Module,
    task: Task,
    tokens: Any = None,
    *,
    length: int = 20,
    n: int = 256,
    seed: int = 0,
) -> Batch:
    """Tokens with `task`'s labels and states at every position: `tokens` if given, else a
    fixed evaluation set of `n` sequences of `length`."""
    if tokens is None:
        return eval_set(task, length, n=n, seed=seed, final_only=False)
    t = as_tokens(model, tokens).cpu().numpy()
    return label_batch(task, t, final_only=False)


def cache_sites(
    model: nn.Module, tokens: Tensor, hooks: list[str], batch_size: int = 256
) -> dict[str, Tensor]:
    """Activations `[batch, pos, d]` at `hooks`, computed without gradients in chunks.

    RMT: inner hooks are cut to the token positions of each segment and concatenated back to
    `[batch, pos, d]`; `hook_memory` gives one row per complete segment, `[batch, pos // S, M*d]`.
    """
    wanted = set(hooks)
    parts: dict[str, list[Tensor]] = {h: [] for h in hooks}
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            _, cache = model.run_with_cache(
                tokens[start : start + batch_size], names_filter=lambda name: name in wanted
            )
            for h in hooks:
                parts[h].append(cache[h].detach())
    out = {h: torch.cat(v) for h, v in parts.items()}
    if S.family(model_config(model)) == S.RMT:
        out = {h: _rmt_rows(model, h, v, tokens.shape[1]) for h, v in out.items()}
    return out


def _rmt_rows(model: nn.Module, hook: str, value: Tensor, length: int) -> Tensor:
    cfg = model_config(model)
    S, M = cfg.segment_length, cfg.n_memory
    if hook == MEMORY_HOOK:
        n = length // S
        return value[:, :n].reshape(value.shape[0], n, -1)
    if value.ndim != 4 or value.shape[2] != S + 2 * M:
        raise InputError(f"{hook!r} is not a residual-stream hook of the RMT (shape {tuple(value.shape)})")
    tokens = value[:, :, M : M + S]
    return tokens.reshape(value.shape[0], -1, value.shape[-1])[:, :length]


def decode(model: nn.Module, resid: Tensor) -> Tensor:
    """Logits from any residual-stream vector: final norm + unembedding (RNN: the readout; RMT:
    the inner Transformer's)."""
    fam = S.family(model_config(model))
    if fam == S.RNN:
        return model.unembed(resid)
    if fam == S.RMT:
        model = model.transformer
    return model.unembed(model.ln_final(resid))


class TunedLens(nn.Module):
    """One affine translator `h + A h + b` per site (zero-initialised, so it starts as the logit lens).

    The last site is the model's own output and keeps the identity.
    """

    def __init__(self, sites: list[StreamPoint], d_model: int) -> None:
        super().__init__()
        self.sites = list(sites)
        self.translators = nn.ModuleDict()
        for site in self.sites[:-1]:
            lin = nn.Linear(d_model, d_model)
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
            self.translators[_key(site.hook)] = lin

    def forward(self, hook: str, resid: Tensor) -> Tensor:
        key = _key(hook)
        if key not in self.translators:
            return resid
        return resid + self.translators[key](resid)


def _key(hook: str) -> str:
    return hook.replace(".", "__")


def fit_tuned_lens(
    model: nn.Module | Run,
    task: Task | None = None,
    tokens: Any = None,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    incl_mid: bool = True,
    length: int = 20,
    n: int = 512,
    seed: int = 0,
) -> TunedLens:
    """Train a `TunedLens` for `model` (a `Run`, or a model with its `task`): per site,
    minimise KL(model output || lens output).

    Trained full-batch with Adam on the cached activations of `tokens` (or a fixed evaluation
    set); the model's weights are not changed.
    """
    if steps < 1:
        raise ConfigError(f"steps must be positive, got {steps}")
    run = as_run(model, task)
    model = run.model
    batch = analysis_batch(model, run.task, tokens, length=length, n=n, seed=seed)
    sites = stream_sites(model, incl_mid=incl_mid)
    t = torch.as_tensor(batch.tokens)
    acts = cache_sites(model, t, [s.hook for s in sites])
    with torch.no_grad():
        target = F.log_softmax(decode(model, acts[sites[-1].hook]), dim=-1)
    lens = TunedLens(sites, acts[sites[0].hook].shape[-1])
    opt = torch.optim.Adam(lens.parameters(), lr=lr, weight_decay=weight_decay)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                loss = sum(
                    _kl(target, decode(model, lens(s.hook, acts[s.hook]))).mean()
                    for s in sites[:-1]
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return lens.eval()


def _kl(target_logp: Tensor, logits: Tensor) -> Tensor:
    """KL(target || softmax(logits)) over the last axis."""
    logp = F.log_softmax(logits, dim=-1)
    return (target_logp.exp() * (target_logp - logp)).sum(-1)


@dataclass
class LensResult:
    """Per site x position: accuracy of the true label, its mean probability, KL from the output."""

    sites: list[str]
    hooks: list[str]
    accuracy: np.ndarray
    prob: np.ndarray
    kl: np.ndarray
    lens: str
    n_sequences: int

    @property
    def mean_accuracy(self) -> np.ndarray:
        """Accuracy per site, averaged over the labelled positions."""
        return np.nanmean(self.accuracy, axis=1)

    def first_site(self, threshold: float = 0.99) -> str | None:
        """The earliest site whose decoded answer is right at least `threshold` of the time."""
        for site, acc in zip(self.sites, self.mean_accuracy, strict=True):
            if acc >= threshold:
                return site
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "lens": self.lens,
            "sites": list(self.sites),
            "hooks": list(self.hooks),
            "n_sequences": self.n_sequences,
            "accuracy": self.accuracy.tolist(),
            "prob": self.prob.tolist(),
            "kl": self.kl.tolist(),
            "mean_accuracy": self.mean_accuracy.tolist(),
            "first_site": self.first_site(),
        }


def logit_lens(
    model: nn.Module | Run,
    task: Task | None = None,
    tokens: Any = None,
    labels: Any = None,
    *,
    lens: TunedLens | None = None,
    incl_mid: bool = True,
    length: int = 20,
    n: int = 256,
    seed: int = 0,
) -> LensResult:
    """Decode every site of `model` (a `Run`, or a model with its `task`) on `tokens` (default: a
    fixed evaluation set of the task).

    `labels` (`[batch, pos]` label indices) default to the task's true labels (with `labels`
    given, `task` may be omitted for a bare model). With `lens`, each
    site goes through its tuned-lens translator first.
    """
    if tokens is None and labels is not None:
        raise InputError("labels were given without the tokens they label")
    if labels is None:
        run = as_run(model, task)
        model = run.model
        batch = analysis_batch(model, run.task, tokens, length=length, n=n, seed=seed)
        t, y = torch.as_tensor(batch.tokens), batch.labels
    else:
        model = unwrap(model)
        t = as_tokens(model, tokens)
        y = labels
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if y.shape != t.shape:
        raise InputError(f"labels have shape {tuple(y.shape)}, tokens {tuple(t.shape)}")
    valid = y != IGNORE_INDEX  # final-only labels: only the last position is labelled
    count = valid.sum(0).float()  # positions nobody labels give NaN accuracy and probability
    y = y.clamp_min(0)
    sites = lens.sites if lens is not None else stream_sites(model, incl_mid=incl_mid)
    acts = cache_sites(model, t, [s.hook for s in sites])
    acc, prob, kl = [], [], []
    with torch.no_grad():
        final = F.log_softmax(decode(model, acts[sites[-1].hook]), dim=-1)
        for s in sites:
            resid = lens(s.hook, acts[s.hook]) if lens is not None else acts[s.hook]
            logits = decode(model, resid)
            logp = F.log_softmax(logits, dim=-1)
            acc.append(((logits.argmax(-1) == y) & valid).float().sum(0) / count)
            prob.append((logp.gather(-1, y[..., None])[..., 0].exp() * valid).sum(0) / count)
            kl.append(_kl(final, logits).mean(0))
    return LensResult(
        sites=[s.label for s in sites],
        hooks=[s.hook for s in sites],
        accuracy=torch.stack(acc).numpy(),
        prob=torch.stack(prob).numpy(),
        kl=torch.stack(kl).clamp_min(0).numpy(),
        lens="tuned" if lens is not None else "logit",
        n_sequences=int(t.shape[0]),
    )

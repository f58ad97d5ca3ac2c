"""Batched seeds: N recurrent nets of one architecture (seeds x learning rates) trained at once.

Each member's weights are stacked on a leading model axis and one forward/backward trains them
all. Each member trains as `train()` would train it alone: the same initial weights
(`build_model` with its seed), its own batch stream (`iterate_batches(..., seed=seed + 1000 * phase)`),
its own length curriculum, validation (`evaluate` on the member's own network), AdamW moments,
grad-norm clipping and learning-rate schedule, and its own early stop, after which it is taken
out of the stack. A step runs every member up to its own batch length only (members sorted by
length, so the shorter ones drop out of the recurrence as it passes their end).

Only rnn, gru and lstm are batched; the other architectures (the second-order RNN, which has no
torch cell, and the Transformers) train one after the other with `train()`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import _validate as _v
from ..errors import ConfigError
from ..models import ModelConfig, build_model
from ..models.config import CELL_ARCHS, check_memory
from ..tasks import Task
from ..tasks.datasets import IGNORE_INDEX
from .checkpoint import LOG, checkpoint_stage, write_checkpoint
from .config import TrainConfig
from .run import Run
from .trainer import Progress, check_training_memory, lr_schedule, train

BETAS, EPS = (0.9, 0.98), 1e-8  # train()'s AdamW


@dataclass
class _Member:
    """One model of the batch: its name, network and `train()`'s bookkeeping (`Progress`)."""

    name: str
    model: nn.Module
    progress: Progress

    @property
    def train_cfg(self) -> TrainConfig:
        return self.progress.train_cfg

    @property
    def model_cfg(self) -> ModelConfig:
        return self.progress.model_cfg


def member_name(seed: int, lr: float | None = None) -> str:
    """`seed{S}`, or `seed{S}_lr{lr}` when several learning rates are trained."""
    return f"seed{seed}" if lr is None else f"seed{seed}_lr{lr:g}"


def seed_list(seeds: int | Sequence[int], base: int = 0) -> list[int]:
    """`seeds` as a list: N gives base..base+N-1; a sequence is checked (integers, distinct)."""
    if _v.is_int(seeds):
        n = _v.positive_int(seeds, "seeds (the number of models)")
        out = [base + i for i in range(n)]
    elif isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence) or not seeds:
        raise ConfigError(f"seeds must be a positive integer or a non-empty list of seeds, got {seeds!r}")
    else:
        out = list(seeds)
    for s in out:
        _v.seed(s, "seed")
    if len(set(out)) != len(out):
        raise ConfigError(f"seeds must be distinct, got {out}")
    return [int(s) for s in out]


def lr_list(lrs: Sequence[float] | None) -> list[float] | None:
    """The learning rates, checked like `TrainConfig.lr` and distinct; None keeps the config's."""
    if lrs is None:
        return None
    if isinstance(lrs, str | bytes) or not isinstance(lrs, Sequence) or not lrs:
        raise ConfigError(f"lrs must be a non-empty list of learning rates, got {lrs!r}")
    out = []
    for lr in lrs:
        if not 0 < _v.finite_float(lr, "learning rate") < 10:
            raise ConfigError(f"learning rate must be in (0, 10), got {lr}")
        out.append(float(lr))
    names = [member_name(0, lr) for lr in out]
    if len(set(names)) != len(names):  # checkpoints are named by the rate's 6 significant digits
        raise ConfigError(f"learning rates must be distinct to 6 significant digits, got {out}")
    return out


def train_seeds(
    task: Task,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None = None,
    *,
    seeds: int | Sequence[int],
    lrs: Sequence[float] | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[Run]:
    """Train one model per seed (x learning rate) of `model_cfg`'s architecture; the `Run`s in
    order (seed-major, then learning rate).

    `seeds=N` trains seeds `train_cfg.seed`..`+N-1`; a member with seed S takes S as both its
    model seed and its data seed (as `fsm-probe train --seed S` does), so it is the run
    `train()` makes with those configs. With `out_dir`, member `seed{S}` (`seed{S}_lr{lr}` with
    several `lrs`) is written to `out_dir/seed{S}` as an ordinary checkpoint, staged and swapped
    in as `train()` does when that member stops. `run.log["seconds"]` is the wall time of the
    whole batch until the member stopped. RNN, GRU and LSTM nets are batched; other architectures train
    one after the other.
    """
    train_cfg = train_cfg or TrainConfig()
    rates = lr_list(lrs)
    members = []
    for seed in seed_list(seeds, train_cfg.seed):
        for lr in rates or [train_cfg.lr]:
            name = member_name(seed, lr if rates is not None and len(rates) > 1 else None)
            members.append((name, replace(model_cfg, seed=seed), replace(train_cfg, seed=seed, lr=lr)))
    if model_cfg.arch not in CELL_ARCHS:  # no torch cell to stack (Transformers, the second-order RNN)
        runs = []
        for name, mc, tc in members:
            out = None if out_dir is None else Path(out_dir) / name
            runs.append(train(task, mc, tc, out_dir=out, progress=progress))
        return runs
    with contextlib.ExitStack() as stack:
        stages = {}
        if out_dir is not None:
            for name, _, _ in members:
                inner = stack.enter_context(contextlib.ExitStack())
                stages[name] = (inner, inner.enter_context(checkpoint_stage(Path(out_dir) / name)))
        return _BatchedTraining(task, members, stages, out_dir, progress).run()


class _BatchedTraining:
    """The loop of `train()`, over a stack of members."""

    def __init__(self, task: Task, members: list[tuple[str, ModelConfig, TrainConfig]],
                 stages: dict[str, tuple[contextlib.ExitStack, Path]], out_dir: Any, progress: bool) -> None:
        self.task, self.stages, self.out_dir, self.progress = task, stages, out_dir, progress
        self.members: list[_Member] = []
        for name, mc, tc in members:
            tc = tc.resolved(mc.arch, task)
            self.members.append(self._member(name, mc, tc))
        first = self.members[0]
        self.arch, self.n_layers = first.model_cfg.arch, first.model_cfg.n_layers
        self.cfg = first.train_cfg  # every member shares it but for seed and lr
        self.runs: dict[str, Run] = {}

    def _member(self, name: str, mc: ModelConfig, tc: TrainConfig) -> _Member:
        log = self.stages[name][1] / LOG if name in self.stages else None
        state = Progress(self.task, mc, tc, log, time.perf_counter())
        check_training_memory(mc, tc)
        return _Member(name, build_model(mc), state)

    def run(self) -> list[Run]:
        cfg = self.cfg
        active = list(self.members)
        weights = [m.model.state_dict() for m in active]
        params = {k: torch.stack([w[k].detach() for w in weights]).requires_grad_() for k in weights[0]}
        moments = {k: (torch.zeros_like(p), torch.zeros_like(p)) for k, p in params.items()}
        n_models = len(active)
        check_memory(active[0].model_cfg, cfg.batch_size * n_models, cfg.train_lengths[1], training=True,
                     lower="the number of seeds, --batch-size or --train-lengths")
        bar = tqdm(total=cfg.max_steps, disable=not self.progress,
                   desc=f"{self.arch} {self.task.spec} x{n_models}")
        self.start = time.perf_counter()
        for m in self.members:
            m.progress.start = self.start  # a member's seconds count from the start of the batch
        step = 0
        for step in range(1, cfg.max_steps + 1):
            batches = [next(m.progress.batches) for m in active]
            losses = _losses(params, self.arch, self.n_layers, batches, cfg.final_weight)
            for p in params.values():
                p.grad = None
            losses.sum().backward()
            _clip(params, cfg.grad_clip)
            base = [m.train_cfg.lr for m in active]
            _adamw(params, moments, step, [lr * lr_schedule(step - 1, cfg.max_steps, cfg.warmup_steps) for lr in base],
                   cfg.weight_decay)
            bar.update(1)
            done = []
            for i, (m, loss) in enumerate(zip(active, losses.tolist(), strict=True)):
                if self._after_step(m, step, i, params, loss):
                    done.append(i)
            if done:
                for i in done:
                    self._finish(active[i], step, params, i, stopped_early=True)
                keep = [i for i in range(len(active)) if i not in done]
                active = [active[i] for i in keep]
                if not active:
                    break
                index = torch.tensor(keep)
                params = {k: p.detach().index_select(0, index).requires_grad_() for k, p in params.items()}
                moments = {k: (a.index_select(0, index), b.index_select(0, index)) for k, (a, b) in moments.items()}
            validated = [m.progress.history[-1]["val_accuracy"] for m in self.members if m.progress.history]
            if validated and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                bar.set_postfix_str(f"{len(active)} training, best val={max(validated):.4f}")
        for i, m in enumerate(active):
            self._finish(m, step, params, i, stopped_early=False)
        n_learned = sum(bool(r.learned) for r in self.runs.values())
        if self.progress:
            bar.set_description_str(f"{self.arch} {self.task.spec}: {n_learned} of {n_models} learned")
        bar.close()
        return [self.runs[m.name] for m in self.members]

    def _after_step(self, m: _Member, step: int, i: int, params: dict[str, Tensor], loss: float) -> bool:
        """`train()`'s bookkeeping after an optimizer step; True when `m` stops early."""
        return m.progress.after_step(step, loss, m.model, sync=lambda: _unstack(m.model, params, i))

    def _finish(self, m: _Member, step: int, params: dict[str, Tensor], i: int, *, stopped_early: bool) -> None:
        """The member's `Run` (as `train()` records it), written and swapped in when it has a directory."""
        _unstack(m.model, params, i)
        run = m.progress.finish(m.model, step, stopped_early)
        if m.name in self.stages:
            inner, stage = self.stages[m.name]
            write_checkpoint(run, stage)
            inner.close()  # swaps the staged checkpoint in now
            run.directory = Path(self.out_dir) / m.name
        self.runs[m.name] = run


def _unstack(model: nn.Module, params: dict[str, Tensor], i: int) -> None:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(params[k][i])


def _clip(params: dict[str, Tensor], max_norm: float) -> None:
    """`clip_grad_norm_` per member: each model's gradients scaled to a total norm <= max_norm."""
    grads = [p.grad for p in params.values()]
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads])  # [params, models]
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))


def _adamw(params: dict[str, Tensor], moments: dict[str, tuple[Tensor, Tensor]], step: int,
           lrs: list[float], weight_decay: float) -> None:
    """torch's single-tensor AdamW update, with a learning rate per member."""
    b1, b2 = BETAS
    bc1, bc2_sqrt = 1 - b1 ** step, math.sqrt(1 - b2 ** step)
    lr = torch.tensor(lrs)
    step_size = lr / bc1
    with torch.no_grad():
        for k, p in params.items():
            shape = (-1, *[1] * (p.dim() - 1))
            g, (avg, sq) = p.grad, moments[k]
            if weight_decay:
                p.mul_((1 - lr * weight_decay).view(shape))
            avg.lerp_(g, 1 - b1)
            sq.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (sq.sqrt() / bc2_sqrt).add_(EPS)
            p.sub_(avg / denom * step_size.view(shape))


def _cell(arch: str, gi: Tensor, gh: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One step of torch's RNN / GRU / LSTM cell from the input and hidden projections."""
    if arch == "rnn":
        return torch.tanh(gi + gh), None
    if arch == "gru":
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + h_n * r)
        return (h - n) * z + n, None
    i, f, g, o = (gi + gh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _losses(params: dict[str, Tensor], arch: str, n_layers: int, batches: list[Any], final_weight: float) -> Tensor:
    """Each member's training loss `[models]` on its own batch (`_loss` in the trainer)."""
    n = len(batches)
    order = sorted(range(n), key=lambda j: -batches[j].tokens.shape[1])
    lengths = [batches[j].tokens.shape[1] for j in order]
    B, T = batches[0].tokens.shape[0], lengths[0]
    tok = np.zeros((n, B, T), dtype=np.int64)
    lab = np.full((n, B, T), IGNORE_INDEX, dtype=np.int64)
    for row, j in enumerate(order):
        tok[row, :, : lengths[row]] = batches[j].tokens
        lab[row, :, : lengths[row]] = batches[j].labels
    tokens, labels = torch.from_numpy(tok), torch.from_numpy(lab)
    perm = torch.tensor(order)
    q = params if order == list(range(n)) else {k: v.index_select(0, perm) for k, v in params.items()}
    cells = [f"layers.{i}.cell." for i in range(n_layers)]
    w = [(q[c + "weight_ih_l0"].transpose(1, 2), q[c + "weight_hh_l0"].transpose(1, 2),
          q[c + "bias_ih_l0"].unsqueeze(1), q[c + "bias_hh_l0"].unsqueeze(1)) for c in cells]
    # layer 0's input projection is a table per symbol: embed @ W_ih^T + b_ih, looked up per token
    table = torch.baddbmm(w[0][2], q["embed.weight"], w[0][0])  # [models, vocab, gates * d]
    vocab = table.shape[1]
    offsets = (torch.arange(n) * vocab).view(n, 1, 1)
    gi0 = F.embedding(tokens.transpose(1, 2) + offsets, table.flatten(0, 1))  # [models, pos, batch, gates * d]
    rows = [sum(length > t for length in lengths) for t in range(T)]  # members still reading at t
    row_model = torch.cat([torch.arange(k) for k in rows])
    row_time = torch.cat([torch.full((k,), t) for t, k in enumerate(rows)])
    if arch == "gru":
        x = gi0
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(w):
            if i:
                x = torch.baddbmm(b_ih, x.flatten(1, 2), w_ih).view(n, T, B, -1)  # [models, pos, batch, 3d]
            x = _StackedGRU.apply(x, w_hh, b_hh, tuple(rows))
        hidden = x[row_model, row_time]
    else:
        hidden = _recurrence(arch, gi0.transpose(0, 1).unbind(0), w, rows)
    w_out, b_out = q["unembed.weight"][row_model], q["unembed.bias"][row_model]
    logits = torch.baddbmm(b_out.unsqueeze(1), hidden, w_out.transpose(1, 2))
    target = labels[row_model, :, row_time]
    loss = _mean_ce(logits, target, row_model, n)
    if final_weight:
        starts = np.concatenate([[0], np.cumsum(rows)])
        last = torch.tensor([starts[lengths[j] - 1] + j for j in range(n)])
        loss = loss + final_weight * _mean_ce(logits[last], target[last], torch.arange(n), n)
    return loss[torch.argsort(perm)]


def _recurrence(arch: str, gi0: Sequence[Tensor], w: list[tuple[Tensor, ...]], rows: list[int]) -> Tensor:
    """The last layer's states `[rows, batch, d]`, (member, position) pairs in time order, through autograd."""
    n, B, d = gi0[0].shape[0], gi0[0].shape[1], w[0][1].shape[1]
    h = [gi0[0].new_zeros(n, B, d) for _ in w]
    c = [gi0[0].new_zeros(n, B, d) if arch == "lstm" else None for _ in w]
    outs = []
    for t, k in enumerate(rows):
        x = gi0[t][:k]  # split per position, so that each step's gradient stays its own size
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(w):
            if i:
                x = torch.baddbmm(b_ih[:k], x, w_ih[:k])
            gh = torch.baddbmm(b_hh[:k], h[i][:k], w_hh[:k])
            h[i], c[i] = _cell(arch, x, gh, h[i][:k], None if c[i] is None else c[i][:k])
            x = h[i]
        outs.append(x)
    return torch.cat(outs)


class _StackedGRU(torch.autograd.Function):
    """A GRU layer over stacked members: input projections `[models, pos, batch, 3d]` -> states
    `[models, pos, batch, d]` (`rows[t]` members, sorted by length, read position t; a member's
    states past its batch's end are zero). The backward pass is written out so that the
    recurrent weights' gradient is one matmul over all steps instead of one per step; the
    member-major layout makes that matmul's operands views, not copies."""

    @staticmethod
    def forward(ctx: Any, gi: Tensor, w_hh: Tensor, b_hh: Tensor, rows: tuple[int, ...]) -> Tensor:
        n, T, B, G = gi.shape
        d = G // 3
        H, R, Z, N, HN = (gi.new_empty(n, T, B, d) for _ in range(5))  # R, Z, N, HN read only where written
        h = gi.new_zeros(n, B, d)
        for t, k in enumerate(rows):
            gh = torch.baddbmm(b_hh[:k], h[:k], w_hh[:k])
            g = gi[:k, t]
            rz = torch.sigmoid(g[..., : 2 * d] + gh[..., : 2 * d])
            r, z, hn = rz[..., :d], rz[..., d:], gh[..., 2 * d:]
            nn_ = torch.tanh(g[..., 2 * d:] + hn * r)
            h = (h[:k] - nn_) * z + nn_
            H[:k, t], R[:k, t], Z[:k, t], N[:k, t], HN[:k, t] = h, r, z, nn_, hn
        for t, k in enumerate(rows):  # past a member's end: zeros (the next layer and the weight gradient read them)
            if k < n:
                H[k:, t] = 0
        ctx.save_for_backward(w_hh, H, R, Z, N, HN)
        ctx.rows = rows
        return H

    @staticmethod
    def backward(ctx: Any, dH: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        w_hh, H, R, Z, N, HN = ctx.saved_tensors
        n, T, B, d = H.shape
        rows = ctx.rows
        dGH = H.new_empty(n, T, B, 3 * d)  # the recurrent projections' gradient
        dAN = H.new_empty(n, T, B, d)  # the input projection's n-gate part (dGH's is dAN * r)
        dh = H.new_zeros(n, B, d)  # members past their end keep a zero gradient
        w_t = w_hh.transpose(1, 2)
        for t in range(T - 1, -1, -1):
            k = rows[t]
            cur = dh[:k] + dH[:k, t]
            r, z, nn_, hn = R[:k, t], Z[:k, t], N[:k, t], HN[:k, t]
            dan = cur * (1 - z) * (1 - nn_ * nn_)
            dar = dan * hn * r * (1 - r)
            daz = (cur * (H[:k, t - 1] - nn_) if t else cur * -nn_) * z * (1 - z)
            g = torch.cat([dar, daz, dan * r], dim=-1)
            dGH[:k, t], dAN[:k, t] = g, dan
            torch.baddbmm(cur * z, g, w_t[:k], out=dh[:k])
        for t, k in enumerate(rows):  # unwritten ends: no gradient
            if k < n:
                dGH[k:, t] = 0
                dAN[k:, t] = 0
        dw = torch.bmm(H[:, : T - 1].reshape(n, (T - 1) * B, d).transpose(1, 2), dGH[:, 1:].reshape(n, (T - 1) * B, 3 * d))
        db = dGH.view(n, T * B, 3 * d).sum(1, keepdim=True)
        dGH[..., 2 * d:] = dAN  # now the input projections' gradient
        return dGH, dw, db, None


def _mean_ce(logits: Tensor, target: Tensor, owner: Tensor, n: int) -> Tensor:
    """Cross-entropy averaged over each member's labelled positions (`ignore_index` skipped)."""
    ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    ce = ce.view(target.shape).sum(1)
    count = (target != IGNORE_INDEX).sum(1).to(ce.dtype)
    return ce.new_zeros(n).index_add(0, owner, ce) / count.new_zeros(n).index_add(0, owner, count)

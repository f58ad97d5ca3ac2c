"""Attribution estimators of head and MLP patching effects that survive saturation (AtP*).

Plain attribution patching (`patching.attribution_patching`) linearises the whole model around
the base run. Where a nonlinearity is saturated the linearisation is blind: a hard attention
softmax (a key whose score rises past the winner's, a query that moves to another key) or a
lookup MLP gives a zero or wrong gradient. Two estimators recompute the saturated part exactly
and linearise only after it (Kramar et al. 2024, "AtP*", arXiv 2403.00745):

- `attribution_mlp_exact`: the MLP of the patched layer is recomputed exactly;
- `atp_star`: that, plus AtP*'s QK fix (every later head's softmax recomputed exactly with the
  queries and keys the patch changes, per key position, in closed form) and optionally
  GradDrop (the estimate averaged in magnitude over runs that each drop the gradient through
  one layer's residual contribution, against cancelling paths).

Both estimate denoising (corrupted run, clean cells patched in) of `head_out` and `mlp_out`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens.utilities.activation_functions import apply_softcap

from .._validate import positive_int
from ..errors import InputError
from ..models import as_tokens, model_config
from . import patching
from . import sites as S
from .engine import EvalMode, Metric, TransformerEngine, metric_value

_AXES = {"head_out": ("layer", "pos", "head"), "mlp_out": ("layer", "pos")}


def _result(values: list[Tensor], site: str, base: float, clean_v: float, method: str) -> patching.PatchingResult:
    return patching.PatchingResult(torch.stack(values) + base, _AXES[site], site, "denoise", clean_v, base, method)


def _engine(model: nn.Module, who: str, sites: Sequence[str]) -> tuple[TransformerEngine, list[str]]:
    if S.family(model_config(model)) != S.TRANSFORMER:
        raise InputError(f"{who} needs a Transformer")
    engine = TransformerEngine(model)
    bad = [s for s in sites if s not in _AXES]
    if bad:
        raise InputError(f"{who} estimates head_out and mlp_out only, got {bad}")
    return engine, [s for s in sites if not (engine.attn_only and s == "mlp_out")]


def attribution_mlp_exact(
    model: nn.Module, clean: Any, corrupted: Any, metric: Metric, sites: Sequence[str] = ("head_out", "mlp_out")
) -> dict[str, patching.PatchingResult]:
    """Attribution patching (denoising) in which the MLP of the patched layer is recomputed
    exactly: a head cell (l, p, h) is estimated as grad(resid_post l, p) . (its attn_out change +
    the exact change of MLP l at p), an MLP cell as grad(resid_post l, p) . its change. The idea
    of AtP*'s fix for saturated attention (recompute the saturated nonlinearity, linearise only
    after it) applied to the MLP that reads a head: plain attribution, linearised through a
    saturated MLP (e.g. a staircase), gives the head feeding it zero."""
    cfg = model_config(model)
    clean_t, corr_t = as_tokens(model, clean), as_tokens(model, corrupted)
    with EvalMode(model):
        engine, sites = _engine(model, "attribution_mlp_exact", sites)
        with torch.no_grad():
            src = engine.full(TransformerEngine.resid0(model, clean_t))
        with torch.enable_grad():
            run = engine.full(TransformerEngine.resid0(model, corr_t), grad=True)
            value = metric(run["logits"])
            grads = torch.autograd.grad(value, run["resid_post"], allow_unused=True)
        clean_v = metric_value(metric, src["logits"])
        base = float(value.detach())
        out: dict[str, list[Tensor]] = {s: [] for s in sites}
        with torch.no_grad():
            for li in range(cfg.n_layers):
                g = torch.zeros_like(run["resid_post"][li]) if grads[li] is None else grads[li]
                changes = _changes(engine, li, src, _detached(run, li), sites)
                for s, d in changes.items():
                    out[s].append((d * (g[:, :, None] if s == "head_out" else g)).sum(-1).sum(0))
    return {s: _result(v, s, base, clean_v, "attribution_mlp_exact") for s, v in out.items()}


def _detached(run: dict[str, Any], li: int) -> dict[str, Tensor]:
    return {k: run[k][li].detach() for k in ("resid_mid", "mlp_out", "head_out") if run[k]}


def _changes(
    engine: TransformerEngine, li: int, src: dict[str, Any], base: dict[str, Tensor], sites: Sequence[str]
) -> dict[str, Tensor]:
    """Change each cell of layer `li` makes to the residual stream after the layer: head cells
    `[B, P, H, d]` (its attn_out change and the exact change of MLP `li`), MLP cells `[B, P, d]`."""
    out = {}
    if "mlp_out" in sites:
        out["mlp_out"] = src["mlp_out"][li] - base["mlp_out"]
    if "head_out" in sites:
        dz = src["head_out"][li] - base["head_out"]  # [B, P, H, dh]
        attn = engine.layers[li].attn
        w_o = engine.o[li].weight.view(engine.o[li].weight.shape[0], attn.n_heads, -1)
        d_attn = torch.einsum("bphd,mhd->bphm", dz, w_o)
        if engine.attn_only:
            out["head_out"] = d_attn
        else:
            mid = base["resid_mid"][:, :, None] + d_attn
            out["head_out"] = d_attn + engine.mlp[li](engine.ln2[li](mid)) - base["mlp_out"][:, :, None]
    return out


# ----- AtP* -----


def _scores(engine: TransformerEngine, li: int, q: Tensor, k: Tensor) -> Tensor:
    """Attention scores `[..., H, query, key]` as the engine's `attend` computes them, masked."""
    attn = engine.layers[li].attn
    s = apply_softcap(torch.matmul(q, k.transpose(-2, -1)) / attn.scale, attn.attn_scores_soft_cap)
    if attn.causal:
        n = s.shape[-1]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return s


def _repeat_kv(engine: TransformerEngine, li: int, t: Tensor, dim: int) -> Tensor:
    reps = engine.layers[li].attn.kv_repeats
    return t.repeat_interleave(reps, dim=dim) if reps > 1 else t


def _grad_run(engine: TransformerEngine, resid0: Tensor, n_copies: int) -> tuple[dict[str, list[Tensor]], Tensor]:
    """The base run, stacked `n_copies` times along the batch, with the gradient stopped at every
    head's queries and keys (the QK fix accounts for them exactly) and every pattern a leaf;
    copy j >= 1 also stops the gradient through layer j-1's output into the residual stream
    (GradDrop). Returns the run and the stacked logits."""
    pos = torch.arange(resid0.shape[1], device=resid0.device)
    batch = resid0.shape[0]
    x = resid0.repeat(n_copies, 1, 1)
    copy = torch.arange(n_copies, device=resid0.device).repeat_interleave(batch)[:, None, None]
    run: dict[str, list[Tensor]] = {k: [] for k in ("resid_pre", "q", "k", "pattern", "resid_post",
                                                      "head_out", "resid_mid", "mlp_out")}
    for li in range(engine.n_layers):
        run["resid_pre"].append(x[:batch].detach())
        q, k, v = engine.qkv(li, engine.ln1[li](x), pos)
        q, k = q.detach(), k.detach()
        k_all = _repeat_kv(engine, li, k, 1)
        pattern = torch.softmax(_scores(engine, li, q, k_all), dim=-1).requires_grad_(True)
        z = torch.matmul(pattern, _repeat_kv(engine, li, v, 1)).transpose(1, 2)
        a = engine.o_proj(li, z)
        mid = x + a
        out = a
        if not engine.attn_only:
            m = engine.mlp[li](engine.ln2[li](mid))
            out = a + m
            run["mlp_out"].append(m[:batch].detach())
        if n_copies > 1:
            out = torch.where(copy == li + 1, out.detach(), out)
        x = x + out
        run["q"].append(q[:batch])
        run["k"].append(k[:batch])
        run["pattern"].append(pattern)
        run["head_out"].append(z[:batch].detach())
        run["resid_mid"].append(mid[:batch].detach())
        run["resid_post"].append(x)
    return run, engine.unembed(x)


def _lse_without(s: Tensor) -> Tensor:
    """`out[..., t, p]` = logsumexp over keys s != p of `s[..., t, s]` (prefix and suffix sums)."""
    pad = s.new_full((*s.shape[:-1], 1), float("-inf"))
    before = torch.cat([pad, torch.logcumsumexp(s, -1)[..., :-1]], -1)
    after = torch.cat([torch.logcumsumexp(s.flip(-1), -1).flip(-1)[..., 1:], pad], -1)
    return torch.logaddexp(before, after)


def _qk_term(
    engine: TransformerEngine, lj: int, run: dict[str, list[Tensor]], d: Tensor, grad_a: Tensor
) -> Tensor | None:
    """AtP*'s QK fix at layer `lj` for cells whose residual changes are `d` `[B, P, N, dm]`
    (cell n at position p moves the residual at p by d[:, p, n]): per copy `[C, P, N]`,
    sum over queries and keys of dMetric/dA (`grad_a` `[C, B, H, T, T]`) times the exact change
    of each head's pattern when the query and the key at p are those of the moved residual.
    None when no cell moves a score of this layer (e.g. positional attention), or no query's
    pattern reaches the metric. Only the queries whose pattern has a gradient are computed (at
    the last layer, those the metric reads)."""
    batch, n_pos, n_cells, dm = d.shape
    rows = torch.nonzero(grad_a.ne(0).flatten(0, 2).any(0).any(-1)).flatten()  # queries that matter
    if rows.numel() == 0:
        return None
    moved = (run["resid_pre"][lj][:, :, None] + d).permute(0, 2, 1, 3).reshape(batch * n_cells, n_pos, dm)
    pos = torch.arange(n_pos, device=d.device)
    q2, k2, _ = engine.qkv(lj, engine.ln1[lj](moved), pos)
    shape = (batch, n_cells, q2.shape[1], n_pos, q2.shape[-1])
    q2 = q2.reshape(shape)
    k2 = _repeat_kv(engine, lj, k2, 1).reshape(shape)
    q, k = run["q"][lj], _repeat_kv(engine, lj, run["k"][lj], 1)  # [B, H, T, dh]
    attn = engine.layers[lj].attn
    scale, cap = attn.scale, attn.attn_scores_soft_cap
    # A score moves by at most |dq| |k| + |q| |dk| + |dq| |dk| (before the softcap, which shrinks it).
    dq, dk = (q2 - q[:, None]).norm(dim=-1).max(), (k2 - k[:, None]).norm(dim=-1).max()
    if float(dq * k.norm(dim=-1).max() + q.norm(dim=-1).max() * dk + dq * dk) / scale < 1e-6:
        return None
    s = _scores(engine, lj, q, k)[:, :, rows]  # [B, H, R, T]
    pattern = torch.softmax(s, -1)
    seen = torch.isfinite(s)
    lse = torch.logsumexp(s, -1)  # [B, H, R]
    self_col = rows[:, None] == pos[None, :]  # [R, T]: the query's own position
    # key moved at p, queries t != p: only column p of row t changes
    new_col = apply_softcap(torch.einsum("bhtd,bnhpd->bnhtp", q[:, :, rows], k2) / scale, cap)
    lse_new = torch.logaddexp(_lse_without(s)[:, None], new_col)  # [B, N, H, R, P]
    visible = seen[:, None] & ~self_col
    shrink = torch.expm1(lse[:, None, :, :, None] - lse_new)
    grown = torch.exp(new_col - lse_new) - pattern[:, None]
    # query moved at t: its row recomputed, with the moved key on its own position
    row = apply_softcap(torch.einsum("bnhtd,bhsd->bnhts", q2[:, :, :, rows], k) / scale, cap)
    diag = apply_softcap((q2[:, :, :, rows] * k2[:, :, :, rows]).sum(-1) / scale, cap)
    row = torch.where(self_col, diag[..., None], row).masked_fill(~seen[:, None], float("-inf"))
    d_row = torch.softmax(row, -1) - pattern[:, None]  # [B, N, H, R, T]
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    out = []
    for g in grad_a[:, :, :, rows]:
        gp = g * pattern
        key = (gp.sum(-1)[:, None, :, :, None] - gp[:, None]) * shrink + g[:, None] * grown
        key = torch.where(visible, key, zero).sum((0, 2, 3))  # [N, P]
        query = (g[:, None] * d_row).sum(-1).sum((0, 2))  # [N, R]
        out.append((key.index_add(1, rows, query)).T)  # [P, N]
    return torch.stack(out)


def atp_star(
    model: nn.Module,
    clean: Any,
    corrupted: Any,
    metric: Metric,
    sites: Sequence[str] = ("head_out", "mlp_out"),
    *,
    grad_drop: bool = False,
    ig_steps: int = 1,
) -> dict[str, patching.PatchingResult]:
    """AtP* estimate of denoising every head_out and mlp_out cell (Kramar et al. 2024).

    A cell at (layer l, position p) moves the residual stream at p by its exact change after
    layer l (`attribution_mlp_exact`: its attn_out change and MLP l recomputed). The estimate is
    grad(resid_post l, p) . that move, with the gradient stopped at every later head's queries
    and keys, plus the QK fix: for every later layer and head, the softmax recomputed exactly
    with the query and the key at p that the moved residual gives (every query's row for the
    key, in closed form from leave-one-out log-sum-exps; the row of p for the query), times
    dMetric/dpattern. One forward and one backward (with `grad_drop`, one per layer more, as
    one stacked batch); where the only nonlinearity after the cell is one softmax, it is exact.

    `grad_drop`: AtP*'s GradDrop, sum over layers l' of |estimate with the gradient through
    layer l''s output dropped| / (n_layers - 1), signed as the plain estimate.

    `ig_steps` > 1: the gradients averaged over the runs of the inputs at
    corrupted + (j / ig_steps) (clean - corrupted), j = 0..ig_steps-1, one stacked batch (the
    integrated-gradients path of EAP-IG, Hanna et al. 2024, arXiv 2403.17806): a cell whose
    effect passes a lookup that is off in the corrupted run (zero gradient there) gets the
    gradient of the runs where it has switched on. Not combined with `grad_drop`.
    """
    cfg = model_config(model)
    clean_t, corr_t = as_tokens(model, clean), as_tokens(model, corrupted)
    positive_int(ig_steps, "ig_steps", error=InputError)
    if grad_drop and ig_steps > 1:
        raise InputError("atp_star: grad_drop and ig_steps > 1 do not combine; choose one")
    with EvalMode(model):
        engine, sites = _engine(model, "atp_star", sites)
        n_copies = 1 + (cfg.n_layers if grad_drop and cfg.n_layers > 1 else 0)
        batch = corr_t.shape[0]
        with torch.no_grad():
            src = engine.full(TransformerEngine.resid0(model, clean_t))
        r_corr = TransformerEngine.resid0(model, corr_t)
        # the interpolated inputs, j = 0 (the corrupted run itself) first
        r0 = torch.cat([r_corr + (j / ig_steps) * (src["resid_pre"][0] - r_corr) for j in range(ig_steps)])
        with torch.enable_grad():
            run, logits = _grad_run(engine, r0, n_copies)
            parts = [metric(logits[c * batch : (c + 1) * batch]) for c in range(n_copies * ig_steps)]
            grads = torch.autograd.grad(torch.stack(parts).sum(), run["resid_post"] + run["pattern"], allow_unused=True)
        g_post = [torch.zeros_like(t) if g is None else g for t, g in zip(run["resid_post"], grads[: cfg.n_layers], strict=True)]
        g_att = [torch.zeros_like(t) if g is None else g for t, g in zip(run["pattern"], grads[cfg.n_layers :], strict=True)]
        if ig_steps > 1:
            g_post = [g.view(ig_steps, batch, *g.shape[1:]).mean(0) for g in g_post]
            g_att = [g.view(ig_steps, batch, *g.shape[1:]).mean(0) for g in g_att]
            run = {k: [t[:batch] for t in v] for k, v in run.items()}
        clean_v, base = metric_value(metric, src["logits"]), float(parts[0].detach())
        out: dict[str, list[Tensor]] = {s: [] for s in sites}
        with torch.no_grad():
            for li in range(cfg.n_layers):
                changes = _changes(engine, li, src, {k: run[k][li] for k in ("resid_mid", "mlp_out", "head_out") if run[k]}, sites)
                parts_d = ([changes["head_out"]] if "head_out" in sites else []) + (
                    [changes["mlp_out"][:, :, None]] if "mlp_out" in sites else [])
                d = torch.cat(parts_d, 2)  # [B, P, N, dm]
                g = g_post[li].view(n_copies, batch, *g_post[li].shape[1:])
                est = torch.einsum("bpnm,cbpm->cpn", d, g)
                for lj in range(li + 1, cfg.n_layers):
                    shape = (n_copies, batch, *g_att[lj].shape[1:])
                    qk = _qk_term(engine, lj, run, d, g_att[lj].view(shape))
                    est = est if qk is None else est + qk
                if n_copies > 1:
                    est = torch.sign(est[0]) * est[1:].abs().sum(0) / (cfg.n_layers - 1)
                else:
                    est = est[0]
                if "head_out" in sites:
                    out["head_out"].append(est[:, : d.shape[2] - ("mlp_out" in sites)])
                if "mlp_out" in sites:
                    out["mlp_out"].append(est[:, -1])
    name = "atp_star" if ig_steps == 1 else f"atp_star_ig{ig_steps}"
    return {s: _result(v, s, base, clean_v, name) for s, v in out.items()}

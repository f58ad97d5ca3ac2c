"""`fsm-probe explain`: does the model implement the automaton? One verdict with its evidence.

The verdict combines what the toolkit measures, in distribution first:

- `not_learned`: below 99% final-position accuracy at the longest training length; nothing else
  is claimed about such a model.
- `shortcut`: right in distribution, wrong beyond; `breaks_at_length` is the first tested
  length below 99%, with the mechanism where one is measured (accuracy inside vs beyond the
  trained positions for learned positional embeddings; attention dilution of the most uniform
  head).
- `implements`: right at every tested length and causally verified: the extracted automaton is
  equivalent to the task, or the state's interchange intervention accuracy (IIA, see
  `causal_abstraction`) is >= 0.99 in distribution and beyond.
- `unverified`: right at every tested length, but neither check confirms that the automaton's
  state is what the model uses (e.g. no state to intervene on, as in the scratchpad or a
  one-block Transformer, or a Transformer that still combines positions in its last block).

A compiled Transformer (a `CompiledTransformer`, or a checkpoint with its `circuit.json`) is
tested where its construction says the state is (`CompiledCircuit.state_cells`: a scan's
`blocks.j.hook_resid_pre` at t < 2^j), at exactly those cells, not at a searched site; a
shortcut construction has no such cell. With `das=True`, a trained model whose best site falls
short of 0.99 with the whole vector also gets distributed alignment search there (`circuits.das`).

The state site is judged on IIA over the outputs from the intervened position on for models that
carry a state (RNN, RMT), and on the output at the intervened position for Transformers, which
recompute their answer from the whole prefix at every position (only at sites where that is not
a tautology, see `causal_abstraction`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .circuits.causal_abstraction import interchange_intervention_accuracy, state_sites
from .errors import FsmProbeError
from .models import CompiledCircuit, model_config
from .models.protocol import is_stateful, state_segment_length
from .tasks import Task
from .training.evaluation import evaluate, position_accuracy
from .training.run import Run, as_run
from .training.verdict import THRESHOLD, length_verdict

VERDICTS = ("implements", "shortcut", "not_learned", "unverified")
UNIFORM_HEAD = 0.3  # distance from uniform averaging below which dilution is reported


@dataclass
class Explanation:
    """The verdict and its evidence; `to_dict()` is `fsm-probe explain --json`."""

    verdict: str
    task: str
    arch: str
    train_max: int
    accuracy: dict[int, float]
    length: dict[str, Any]
    breaks_at_length: int | None
    state_site: dict[str, Any] | None
    mechanism: list[dict[str, Any]] = field(default_factory=list)
    extraction: dict[str, Any] | None = None
    components: list[str] | None = None
    trained: bool = True
    evidence: list[str] = field(default_factory=list)
    sampled: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy"] = {str(k): v for k, v in self.accuracy.items()}
        return d

    def text(self) -> str:
        """One screen of plain text."""
        acc = ", ".join(f"{k}: {v:.3f}" for k, v in self.accuracy.items())
        record = (f"trained up to {self.train_max}" if self.trained else
                  f"no training record, so {self.train_max} stands for the training length")
        lines = [f"{self.arch} on {self.task}: {self.verdict}",
                 f"  length: {self.length['text']} (final-position accuracy {acc}; {record})"]
        s = self.state_site
        if s is not None and s["iia"] is not None:
            beyond = (f", {s['iia_beyond']:.3f} at length {s['length_beyond']}"
                      if s.get("iia_beyond") is not None else "")
            where = s["site"] if s["site"] != "construction" else "the construction's cells " + ", ".join(
                f"{h}@{ts[0]}" + (f"-{ts[-1]}" if len(ts) > 1 else "") for h, ts in s["cells"].items())
            lines.append(f"  state: {where}, IIA {'min ' if 'cells' in s else ''}{s['iia']:.3f} at length "
                         f"{s['length']}{beyond} ({s['scored']})")
            d = s.get("das")
            if d is not None:
                iia = "n/a" if d["iia"] is None else f"{d['iia']:.3f}"
                lines.append(f"  DAS at {s['site']}: IIA {iia} with a {d['k']}-dimensional subspace"
                             f" (dimension: {d['dimension'] if d['dimension'] is not None else 'none of ' + str(d['ks'])})")
        for line in self.evidence:
            lines.append(f"  evidence: {line}")
        for m in self.mechanism:
            lines.append(f"  mechanism: {m['text']}")
        if self.components is not None:
            lines.append(f"  circuit (exact patching): {', '.join(self.components) or 'no component alone'}")
        e = self.extraction
        if e is not None:
            lines.append(f"  extracted automaton: {e['n_states']} states, equivalent to the task: "
                         f"{e['equivalent_to_task']}, fidelity {e['fidelity']:.3f}")
        lines.append(f"  sampled: {self.sampled}; {self.seconds:.1f} s")
        return "\n".join(lines)


def iia_settings(run: Run) -> tuple[bool, int]:
    """Which positions IIA scores (the run's own `final_only`, else the task's) and its
    in-distribution length: the longest training length, and on a segment memory model at least
    two whole segments (the memory one writes and the next one reads)."""
    final_only = run.record.get("final_only")
    final_only = run.task.final_only if final_only is None else bool(final_only)
    train_max = train_max_length(run)
    segment = state_segment_length(run.model)
    return final_only, max(train_max, 2 * segment) if segment else train_max


def train_max_length(run: Run) -> int:
    """The longest training length; without a training record (compiled models), 40 or the context."""
    trained = run.trained_length
    if trained is not None:
        return trained
    cfg = run.model_config
    return min(40, cfg.max_length or 40)


def test_lengths(model: nn.Module, train_max: int) -> list[int]:
    """The training length and 2x, 4x, 10x beyond (within the context of a Transformer or memory
    model)."""
    cfg = model_config(model)
    cap = cfg.max_length
    lengths = [train_max, 2 * train_max, 4 * train_max, 10 * train_max]
    return sorted({x for x in lengths if cap is None or x <= cap})


def explain(
    model: nn.Module | Run,
    task: Task | None = None,
    *,
    n: int = 128,
    iia_n: int = 64,
    extraction: bool = True,
    circuit: bool = True,
    lengths: Sequence[int] | None = None,
    das: bool = False,
    seed: int = 0,
) -> Explanation:
    """Verdict and evidence for `model` (a `Run`, or a model with its `task`).

    `extraction` (RNNs, RMTs) and `circuit` (Transformers: exact patching of every head and MLP,
    `circuit_discovery`) add that evidence for a model that learned; `das` a learned subspace at
    the best state site when the whole vector's IIA there is below 0.99 (trained models).

    `lengths` (default `test_lengths`) must include the longest training length."""
    started = time.perf_counter()
    run = as_run(model, task)
    model, task, cfg = run.model, run.task, run.model_config
    train_max = train_max_length(run)
    lengths = sorted({int(x) for x in lengths}) if lengths is not None else test_lengths(model, train_max)
    report = evaluate(model, task, lengths, n=n, seed=12345 + seed)
    lv = length_verdict(report, train_max)
    accuracy = {k: v["final_accuracy"] for k, v in report.items()}
    out = Explanation(
        verdict="not_learned", task=task.spec, arch=cfg.arch, train_max=train_max,
        accuracy=accuracy, length=lv.to_dict(), breaks_at_length=lv.breaks_at_length,
        state_site=None, trained=run.trained_length is not None,
        sampled=f"{n} sequences per length {lengths} for accuracy",
    )
    if not lv.learned:
        out.seconds = round(time.perf_counter() - started, 3)
        return out

    carries = is_stateful(model)  # a hidden state or a memory carried from step to step
    try:
        has_sites = bool(state_sites(model))
    except FsmProbeError:
        has_sites = False
    final_only, iia_in_length = iia_settings(run)
    beyond = [x for x in lengths if x > iia_in_length]
    compiled = run.circuit if isinstance(run.circuit, CompiledCircuit) else None
    if compiled is not None and compiled.state_cells:
        out.state_site = _construction_site(model, task, compiled.state_cells, iia_in_length,
                                            beyond[0] if beyond else None, n=iia_n,
                                            final_only=final_only, seed=seed)
        s = out.state_site
        out.evidence.append(
            f"state sites from the construction ({compiled.construction}, circuit.state_cells), not "
            f"searched: IIA at exactly its {sum(map(len, s['cells'].values()))} state cells, min "
            + ("n/a" if s["iia"] is None else f"{s['iia']:.3f}")
            + ("" if s["iia_beyond"] is None else f" ({s['iia_beyond']:.3f} at length {s['length_beyond']})"))
        out.sampled += f"; IIA on {iia_n} base/source pairs at length {s['length']}" + (
            f" and {s['length_beyond']}" if s["length_beyond"] else "")
    elif compiled is not None:
        out.evidence.append(f"the construction ({compiled.construction}: {compiled.kind}) has no "
                            "intermediate state site: it computes the label from the whole prefix in "
                            "its one block, so the state exists only in that block's output")
    elif has_sites:
        res = interchange_intervention_accuracy(model, task, iia_in_length, n=iia_n,
                                                final_only=final_only, seed=seed)
        site, value = res.best(local=not carries)
        state = {"site": site, "iia": value, "length": res.length,
                 "unit": res.unit, "iia_beyond": None, "length_beyond": None,
                 "scored": ("outputs from the intervened position on" if carries else
                            "the output at the intervened position") + f", {iia_n} pairs"}
        if beyond and value is not None:
            far = interchange_intervention_accuracy(model, task, beyond[0], n=iia_n, sites=[site],
                                                    final_only=final_only, seed=seed)
            far_value = far.site_mean(local=not carries)[site]
            state["iia_beyond"] = None if far_value != far_value else far_value
            state["length_beyond"] = far.length
        out.state_site = state
        out.sampled += f"; IIA on {iia_n} base/source pairs at length {res.length}" + (
            f" and {state['length_beyond']}" if state["length_beyond"] else "")
        if das and value is not None and value < THRESHOLD:
            state["das"] = _das(model, task, site, res.length, n=iia_n, local=not carries,
                                final_only=final_only, seed=seed)
            out.sampled += f"; DAS on {state['das']['n_train']} training pairs"

    if circuit and cfg.arch == "transformer":
        from .circuits.discovery import discover_circuit

        found = discover_circuit(run, method="exact", seed=seed)
        out.components = found.circuit()
        out.sampled += f"; circuit from {found.n_pairs} corruption pairs at length {found.length}"

    if extraction and carries:
        from .extraction import check_extraction, extract

        ext = extract(model, task, seed=seed)
        held_out = min(2 * train_max, cfg.max_length or 2 * train_max)
        check = check_extraction(model, ext, task, lengths=(held_out,), n=min(n, 256))
        out.extraction = {k: check.get(k) for k in
                          ("n_states", "equivalent_to_task", "fidelity", "interchange_accuracy")}

    if lv.status == "fails_beyond":
        out.verdict = "shortcut"
        out.mechanism = _mechanisms(model, task, train_max, lv.breaks_at_length, n, seed)
    else:
        s = out.state_site
        iia_ok = (s is not None and s["iia"] is not None and s["iia"] >= THRESHOLD
                  and (s["iia_beyond"] is None or s["iia_beyond"] >= THRESHOLD))
        equivalent = bool(out.extraction and out.extraction.get("equivalent_to_task"))
        out.verdict = "implements" if (iia_ok or equivalent) else "unverified"
    out.seconds = round(time.perf_counter() - started, 3)
    return out


def _mechanisms(model: nn.Module, task: Task, train_max: int, breaks: int, n: int, seed: int) -> list[dict[str, Any]]:
    """Measured reasons for a failure beyond the training lengths (Transformers)."""
    cfg = model_config(model)
    found: list[dict[str, Any]] = []
    if cfg.arch != "transformer":
        return found
    if cfg.positional == "learned" and breaks > train_max:
        acc = position_accuracy(model, task, breaks, n=n, seed=seed + 7)
        inside, outside = float(acc[:train_max].mean()), float(acc[train_max:].mean())
        if inside - outside > 0.02:
            found.append({
                "kind": "positions_beyond_training", "length": breaks, "inside": inside, "beyond": outside,
                "text": (f"at length {breaks}, per-position accuracy {inside:.3f} at positions "
                         f"0-{train_max - 1} and {outside:.3f} beyond: learned positional embeddings "
                         f"past {train_max} were never trained"),
            })
    from .circuits.attention import attention_dilution, head_stats

    lengths = sorted({x for x in (max(2, train_max // 4), train_max, breaks, min(cfg.n_ctx, 4 * breaks)) if x >= 2})
    stats = head_stats(model, task, length=train_max, n=min(n, 64), seed=seed)
    layer, head = stats.most_uniform()
    distance = float(stats.uniform_distance[layer, head])
    if len(lengths) >= 2 and distance < UNIFORM_HEAD:
        dil = attention_dilution(model, task, lengths, n=min(n, 32), seed=seed)
        exponent = float(dil.exponent[layer, head])
        found.append({
            "kind": "attention_dilution", "head": f"L{layer}H{head}", "exponent": exponent,
            "uniform_distance": distance,
            "text": (f"head L{layer}H{head} averages its prefix almost uniformly (distance "
                     f"{distance:.2f}); its largest weight on one token falls with length with "
                     f"log-log slope {exponent:.2f} (-1 = 1/T dilution)"),
        })
    return found


def _construction_site(model: nn.Module, task: Task, cells: dict[str, list[int]], length: int,
                       beyond: int | None, *, n: int, final_only: bool, seed: int) -> dict[str, Any]:
    """IIA on the output at the intervened position (a Transformer's form) at exactly the cells
    where the construction holds the state, at `length` and `beyond`; `iia` is the min over cells."""
    state: dict[str, Any] = {
        "site": "construction", "cells": {}, "iia_cells": {}, "iia": None, "length": length,
        "unit": "position", "iia_beyond": None, "length_beyond": None,
        "scored": f"the output at the intervened position, at the construction's state cells, {n} pairs",
    }
    for key, at in (("", length), ("_beyond", beyond)):
        wanted = {h: [t for t in ts if t < at] for h, ts in cells.items()} if at is not None else {}
        wanted = {h: ts for h, ts in wanted.items() if ts}
        if not wanted:
            continue
        res = interchange_intervention_accuracy(model, task, at, n=n, sites=list(wanted), max_positions=at,
                                                final_only=final_only, seed=seed)
        values = {h: [_cell(res, h, t) for t in ts] for h, ts in wanted.items()}
        scored = [v for vs in values.values() for v in vs if v is not None]
        state["iia" + key] = min(scored) if scored else None
        if key:
            state["length_beyond"] = res.length
        else:
            state["cells"], state["iia_cells"], state["length"] = wanted, values, res.length
    return state


def _cell(res: Any, site: str, position: int) -> float | None:
    """Local IIA of one (site, position) cell; None where it was not scored."""
    if position not in res.positions:
        return None
    value = float(res.iia_local[res.sites.index(site), res.positions.index(position)])
    return None if value != value else value


def _das(model: nn.Module, task: Task, site: str, length: int, *, n: int, local: bool,
         final_only: bool, seed: int) -> dict[str, Any]:
    """Distributed alignment search at `site`: the smallest subspace dimension with IIA >= 0.99
    (None: no tested one) and the best IIA over the tested dimensions."""
    from .circuits.das import das as run_das

    found = run_das(model, task, site=site, length=length, n_test=n, local=local, final_only=final_only,
                    seed=seed)
    scores = found.score()
    k = found.dimension if found.dimension is not None else max(
        scores, key=lambda x: -1.0 if scores[x] is None else scores[x])
    return {"dimension": found.dimension, "k": k, "iia": scores[k], "ks": found.ks,
            "score": {str(x): v for x, v in scores.items()}, "length": found.length,
            "n_train": found.n_train, "seconds": found.seconds}

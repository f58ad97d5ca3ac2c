"""The circuit stage's one site vocabulary: site names, hook names, axes, stage order, the defaults
per model family, and validation.

A *site* is a named kind of activation, spelled as TransformerLens spells activation names:
Transformer `resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out`, `head_out` (the
per-head `z`) and `pattern`; RNN `hidden` and `cell` (LSTM); RMT `memory` (all memory vectors a
segment writes) and `memory_slot` (one of them), the `memory` of the Compressive Transformer and
HMT (their whole state a segment leaves: both memories, or the cache); `embed` (the token embedding). A *hook name* is
the module path of one hook point, and `hook_name` is the one function that builds it
(`blocks.0.attn.hook_z`, `layers.0.hook_h`, `hook_memory`), like TransformerLens's
`get_act_name`. Analyses ask this module which sites a model has (`patch_sites`,
`component_sites`, `stream_points`, `state_sites`) instead of testing its architecture.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import InputError
from ..models import model_config, protocol
from ..models.compressive import COMPRESSED_HOOK
from ..models.config import RNN_ARCHS
from ..models.native import STAGES  # noqa: F401  (re-exported: the order a block computes its sites)
from ..models.rmt import MEMORY_HOOK

RNN, TRANSFORMER, RMT, SCRATCHPAD = "rnn", "transformer", "rmt", "scratchpad"
COMPRESSIVE, HMT = "compressive", "hmt"
SEGMENT_MEMORY = (COMPRESSIVE, HMT)  # memory models patched and traced through their state only
FAMILIES = (RNN, TRANSFORMER, RMT, SCRATCHPAD, *SEGMENT_MEMORY)

TRANSFORMER_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out")
RNN_SITES = ("hidden", "cell")
RMT_SITES = ("memory", "memory_slot")
SITES = {RNN: RNN_SITES, TRANSFORMER: TRANSFORMER_SITES, RMT: RMT_SITES, SCRATCHPAD: (),
         COMPRESSIVE: ("memory",), HMT: ("memory",)}

# The order in which a Transformer block computes its sites (the patching engine's stages).
# Rank of a site within its layer: the heads and their sum share one; state sites come first.
_STAGE_RANK = {"resid_pre": 0, "head_out": 1, "attn_out": 1, "resid_mid": 2, "mlp_out": 3, "resid_post": 4,
               "hidden": 0, "cell": 0, "memory": 0, "memory_slot": 0}

_AXES = {"head_out": ("layer", "pos", "head"), "memory": ("segment",), "memory_slot": ("segment", "slot")}

_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "head_out": "blocks.{layer}.attn.hook_z",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "hidden": "layers.{layer}.hook_h",
    "cell": "layers.{layer}.hook_c",
    "memory": MEMORY_HOOK,
    "memory_slot": MEMORY_HOOK,
    "embed": "hook_embed",
}

# What a ranked component of each site is called in the circuit graph (`circuits.graph`).
COMPONENT_KIND = {
    "resid_pre": "resid", "resid_mid": "resid_mid", "resid_post": "resid_post", "head_out": "head",
    "attn_out": "attn", "mlp_out": "mlp", "hidden": "state", "cell": "cell", "memory": "memory",
    "memory_slot": "memory",
}

# `causal_tracing`'s kinds: the state of the stream (per family), or a sublayer's output.
TRACE_KINDS = ("resid", "mlp", "attn")
_STATE_SITE = {RNN: "hidden", TRANSFORMER: "resid_pre", RMT: "memory", COMPRESSIVE: "memory", HMT: "memory"}


def family(cfg: Any) -> str:
    """The model family of config `cfg`: `rnn` (RNN, GRU, LSTM, second-order), `transformer`, `rmt`,
    `scratchpad`, `compressive` or `hmt`. (A model-protocol question: it belongs in `fsm_probe.models`.)"""
    return RNN if cfg.is_rnn else cfg.arch


def has_cell(cfg: Any) -> bool:
    """Whether the model keeps a cell state besides its hidden state (an LSTM)."""
    return cfg.arch == "lstm"


def require(cfg: Any, what: str, families: Iterable[str]) -> str:
    """The family of `cfg`, or an `InputError` saying that `what` supports only `families`."""
    fam, allowed = family(cfg), tuple(families)
    if fam not in allowed:
        names = [n for f in allowed for n in (RNN_ARCHS if f == RNN else (f,))]
        listed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise InputError(f"{what}: supported on {listed}, not {cfg.arch!r}")
    return fam


def hook_name(site: str, layer: int | None = None) -> str:
    """The hook point of `site` in `layer`: `hook_name("head_out", 0) == "blocks.0.attn.hook_z"`,
    `hook_name("hidden", 1) == "layers.1.hook_h"`, `hook_name("memory") == "hook_memory"`."""
    if site not in _HOOKS:
        raise InputError(f"unknown site {site!r}; sites are {', '.join(_HOOKS)}")
    template = _HOOKS[site]
    if "{layer}" in template and layer is None:
        raise InputError(f"site {site!r} needs a layer to name its hook")
    return template.format(layer=layer)


def axes(site: str) -> tuple[str, ...]:
    """The axes of a patching map at `site`: `(layer, pos)`, `(layer, pos, head)` for `head_out`,
    `(segment,)` for `memory` and `(segment, slot)` for `memory_slot`."""
    return _AXES.get(site, ("layer", "pos"))


def stage(site: str) -> int:
    """Where `site` sits within its layer (for ordering components input to output)."""
    return _STAGE_RANK[site]


def patch_sites(cfg: Any) -> list[str]:
    """The sites the report and `fsm-probe patch` sweep by default: Transformer resid_pre,
    attn_out, mlp_out (with MLPs), head_out; RNN hidden, and cell on an LSTM; RMT memory, and
    memory_slot with more than one memory vector; Compressive Transformer and HMT memory."""
    fam = family(cfg)
    if fam in SEGMENT_MEMORY:
        return ["memory"]
    if fam == RMT:
        return ["memory"] + (["memory_slot"] if cfg.n_memory > 1 else [])
    if fam == RNN:
        return ["hidden"] + (["cell"] if has_cell(cfg) else [])
    return ["resid_pre", "attn_out"] + (["mlp_out"] if cfg.d_mlp != 0 else []) + ["head_out"]


def component_sites(cfg: Any) -> list[str]:
    """The sites whose cells circuit discovery ranks: every head and MLP, or every RNN state."""
    fam = require(cfg, "circuit discovery", (RNN, TRANSFORMER))
    if fam == RNN:
        return ["hidden"] + (["cell"] if has_cell(cfg) else [])
    return ["head_out"] + (["mlp_out"] if cfg.d_mlp != 0 else [])


def trace_site(cfg: Any, kind: str) -> str:
    """The site `causal_tracing` restores for `kind`: the state (`resid`: the Transformer's
    resid_pre, the RNN's hidden state, the RMT's memory) or a Transformer sublayer's output."""
    if kind not in TRACE_KINDS:
        raise InputError(f"kind must be one of {', '.join(TRACE_KINDS)}, got {kind!r}")
    fam = family(cfg)
    if kind != "resid" and fam in (RNN, RMT, *SEGMENT_MEMORY):
        what = "hidden state" if fam == RNN else "memory"
        raise InputError(
            f"kind={kind!r} needs a Transformer: a {cfg.arch} has no {kind} sublayer; "
            f"kind='resid' restores its {what}"
        )
    site = {"resid": _STATE_SITE.get(fam, "resid_pre"), "mlp": "mlp_out", "attn": "attn_out"}[kind]
    if site == "mlp_out" and cfg.d_mlp == 0:
        raise InputError("kind='mlp' needs a Transformer with MLPs; this one is attention-only")
    return site


def input_hook(cfg: Any) -> str:
    """The hook that holds the input to the first layer, where noise is added: the Transformer's
    `blocks.0.hook_resid_pre` (embedding + position), else `hook_embed`."""
    return hook_name("resid_pre", 0) if family(cfg) == TRANSFORMER else hook_name("embed")


def check_site(cfg: Any, site: str) -> None:
    """Raise `InputError`, naming the bad site and the valid ones, unless `site` can be patched
    in a model of config `cfg`."""
    fam = family(cfg)
    if fam == SCRATCHPAD:
        raise InputError(
            f"patching and tracing support the recurrent nets, transformer and rmt, not {cfg.arch!r}: its "
            "working memory is generated tokens, with no hook_memory to patch"
        )
    if fam == RMT:
        if site not in RMT_SITES:
            raise InputError(
                "RMT patching sites are 'memory' (the memory each segment writes, hook_memory) and "
                f"'memory_slot' (one of its n_memory vectors at a time), got {site!r}"
            )
    elif fam in SEGMENT_MEMORY:
        if site != "memory":
            raise InputError(
                f"{cfg.arch} patching has one site, 'memory' (the whole state a segment leaves: "
                f"{'memory and compressed memory' if fam == COMPRESSIVE else 'the memory cache'}), got {site!r}"
            )
    elif fam == RNN:
        if site not in RNN_SITES:
            raise InputError(f"RNN patching sites are {', '.join(RNN_SITES)}, got {site!r}")
        if site == "cell" and not has_cell(cfg):
            raise InputError(f"site 'cell' needs an LSTM, this model is {cfg.arch!r}")
    elif site not in TRANSFORMER_SITES:
        raise InputError(f"Transformer patching sites are {', '.join(TRANSFORMER_SITES)}, got {site!r}")
    elif site in ("resid_mid", "mlp_out") and cfg.d_mlp == 0:
        raise InputError(f"site {site!r} does not exist in an attention-only Transformer")


@dataclass(frozen=True)
class StreamPoint:
    """A point of the residual stream (or an RNN layer's state) read by the lens and the probes:
    display label, hook name and layer (-1 for the embedding)."""

    label: str
    hook: str
    layer: int


def stream_points(
    cfg: Any, *, incl_mid: bool = True, incl_cell: bool = False, incl_memory: bool = False
) -> list[StreamPoint]:
    """The residual-stream points of a model of config `cfg`, input to output.

    Transformer and RMT (inner hook names): `embed` (= `blocks.0.hook_resid_pre`), then `L{l}.mid`
    (after attention, when the block has an MLP) and `L{l}.post`; with `incl_memory`, an RMT's
    `memory` (`hook_memory`) last. RNN: `embed`, then `L{l}.h` (and `L{l}.c` for an LSTM with
    `incl_cell`).
    """
    fam = require(cfg, "the lens and probes", (RNN, TRANSFORMER, RMT))
    if fam == RNN:
        points = [StreamPoint("embed", hook_name("embed"), -1)]
        for layer in range(cfg.n_layers):
            points.append(StreamPoint(f"L{layer}.h", hook_name("hidden", layer), layer))
            if incl_cell and has_cell(cfg):
                points.append(StreamPoint(f"L{layer}.c", hook_name("cell", layer), layer))
        return points
    points = [StreamPoint("embed", hook_name("resid_pre", 0), -1)]
    for layer in range(cfg.n_layers):
        if incl_mid and cfg.d_mlp != 0:
            points.append(StreamPoint(f"L{layer}.mid", hook_name("resid_mid", layer), layer))
        points.append(StreamPoint(f"L{layer}.post", hook_name("resid_post", layer), layer))
    if incl_memory and fam == RMT:
        points.append(StreamPoint("memory", hook_name("memory"), cfg.n_layers))
    return points


def state_sites(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The sites an interchange intervention swaps: name -> the hook names swapped together.

    RNN: each layer's state (`layers.{i}`: h, and c on an LSTM) and, with several layers, all of
    them (`layers`); segment memory models (RMT, Compressive, HMT): `hook_memory`, with the
    compressed memory on a Compressive Transformer; Transformer: `resid_mid` of every block but the last
    and `resid_pre` of blocks 1.. (see `fsm_probe.circuits.causal_abstraction`)."""
    cfg = model_config(model)
    fam = family(cfg)
    if fam == RNN:
        sites = {f"layers.{i}": tuple(n for n in model.state_names if n.startswith(f"layers.{i}."))
                 for i in range(cfg.n_layers)}
        if cfg.n_layers > 1:
            sites["layers"] = tuple(model.state_names)
        return sites
    if fam == RMT or fam in SEGMENT_MEMORY:
        return {MEMORY_HOOK: tuple(protocol.state_sites(model))}
    if fam == TRANSFORMER:
        names = []
        for i in range(cfg.n_layers - 1):
            names += [hook_name("resid_mid", i), hook_name("resid_pre", i + 1)]
        return {n: (n,) for n in names}
    raise InputError(f"no state sites on a {cfg.arch}: it carries no state between steps "
                     "(its memory is its own label outputs)")


def layer_hooks(cfg: Any, site: str) -> list[str]:
    """The hook names of `site`, one per layer (an RMT's memory: its one `hook_memory`)."""
    if site in RMT_SITES and family(cfg) == COMPRESSIVE:
        return [MEMORY_HOOK, COMPRESSED_HOOK]
    if site in RMT_SITES:
        return [hook_name(site)]
    return [hook_name(site, layer) for layer in range(cfg.n_layers)]


def max_length(cfg: Any) -> int | None:
    """The longest input the model reads (`ModelConfig.max_length`)."""
    return cfg.max_length


def trace_kind(cfg: Any, site: str) -> str:
    """The `causal_tracing` kind that restores `site` (the inverse of `trace_site`): `resid`
    for the model's state site, `mlp` for `mlp_out`, `attn` for `attn_out`."""
    valid = {k: trace_site(cfg, k) for k in TRACE_KINDS if _traceable(cfg, k)}
    for kind, name in valid.items():
        if name == site:
            return kind
    raise InputError(f"site {site!r} cannot be traced in this {cfg.arch}: its tracing sites are "
                     f"{', '.join(valid.values())}")


def _traceable(cfg: Any, kind: str) -> bool:
    try:
        trace_site(cfg, kind)
    except InputError:
        return False
    return True

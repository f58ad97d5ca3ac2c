"""`ModelConfig`: the architecture of any fsm_probe model, as stored in `config.json`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from .. import _validate as _v
from ..errors import ConfigError

RNN_ARCHS = ("rnn", "gru", "lstm", "second_order")
CELL_ARCHS = ("rnn", "gru", "lstm")  # first-order recurrent nets: a torch nn.RNN / GRU / LSTM cell per layer
TRANSFORMER_ARCHS = ("transformer",)
MEMORY_ARCHS = ("rmt", "scratchpad", "compressive", "hmt")  # Transformers with a working memory (models/rmt.py, ...)
SEGMENT_ARCHS = ("rmt", "compressive", "hmt")  # memory written once per segment of segment_length tokens
POSITIONAL = ("learned", "rotary", "none")
NORMALIZATIONS = ("LN", "LNPre", "RMS", "RMSPre", None)


@dataclass
class ModelConfig:
    """Architecture hyperparameters shared by every model family.

    `d_hidden` is the RNN state size or the Transformer's `d_model`. `d_mlp=None` means
    `4 * d_hidden`; `d_mlp=0` builds an attention-only Transformer.

    Memory Transformers: `rmt` cuts the input into segments of `segment_length` tokens and
    carries `n_memory` memory vectors between them, back-propagating through `bptt_segments`
    segments (0 = all); for `rmt` and `scratchpad`, `n_ctx` is the longest input accepted.
    `compressive` keeps `n_memory` FIFO memory slots and `n_compressed` compressed slots, made
    from evicted slots at `compression_rate` (which must divide `segment_length`); `hmt` keeps a
    cache of `n_memory` memory embeddings. Both also take `segment_length` and `bptt_segments`.
    """

    arch: str
    d_vocab: int
    d_out: int
    n_layers: int = 1
    d_hidden: int = 32
    n_heads: int = 4
    d_mlp: int | None = None
    normalization: str | None = "LN"
    positional: str = "learned"
    n_ctx: int = 512
    attention_dir: str = "causal"
    seed: int = 0
    segment_length: int = 2
    n_memory: int = 1
    bptt_segments: int = 0
    n_compressed: int = 2
    compression_rate: int = 2

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        known = RNN_ARCHS + TRANSFORMER_ARCHS + MEMORY_ARCHS
        if not isinstance(self.arch, str) or self.arch not in known:
            raise ConfigError(f"unknown architecture {self.arch!r}; expected one of {', '.join(known)}")
        positive = ("d_vocab", "d_out", "n_layers", "d_hidden", "n_heads", "n_ctx", "segment_length", "n_memory",
                    "n_compressed", "compression_rate")
        for name in positive:
            _v.positive_int(getattr(self, name), name)
        _v.seed(self.seed, "seed")
        for name in ("positional", "attention_dir"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.normalization is not None and not isinstance(self.normalization, str):
            raise ConfigError(f"normalization must be a string or None, got {self.normalization!r}")
        if self.d_mlp is not None and (not isinstance(self.d_mlp, int) or isinstance(self.d_mlp, bool) or self.d_mlp < 0):
            raise ConfigError(f"d_mlp must be a non-negative integer or None, got {self.d_mlp!r}")
        if not isinstance(self.bptt_segments, int) or isinstance(self.bptt_segments, bool) or self.bptt_segments < 0:
            raise ConfigError(f"bptt_segments must be a non-negative integer (0 = all), got {self.bptt_segments!r}")
        if self.arch == "compressive" and self.segment_length % self.compression_rate:
            raise ConfigError(
                f"compression_rate={self.compression_rate} must divide segment_length={self.segment_length} "
                "(each segment evicts segment_length memory slots, compressed in groups of compression_rate)"
            )
        if self.arch == "scratchpad" and self.attention_dir != "causal":
            raise ConfigError("scratchpad needs attention_dir='causal' (it reads its own earlier outputs)")
        if self.arch in TRANSFORMER_ARCHS + MEMORY_ARCHS:
            if self.d_hidden % self.n_heads:
                raise ConfigError(
                    f"d_hidden={self.d_hidden} is not divisible by n_heads={self.n_heads}"
                )
            if self.positional not in POSITIONAL:
                raise ConfigError(
                    f"unknown positional encoding {self.positional!r}; expected one of {', '.join(POSITIONAL)}"
                )
            if self.normalization not in NORMALIZATIONS:
                raise ConfigError(f"unknown normalization {self.normalization!r}")
            if self.attention_dir not in ("causal", "bidirectional"):
                raise ConfigError(f"attention_dir must be causal or bidirectional, got {self.attention_dir!r}")

    @property
    def is_rnn(self) -> bool:
        return self.arch in RNN_ARCHS

    @property
    def max_length(self) -> int | None:
        """The longest input the model accepts: `n_ctx`, or None for a recurrent net (any length)."""
        return None if self.is_rnn else self.n_ctx

    def n_segments(self, length: int) -> int:
        """Segments of `segment_length` tokens a segment model (`rmt`, `compressive`, `hmt`)
        cuts `length` tokens into (the last may be shorter)."""
        return -(-length // self.segment_length)

    def relevant_fields(self) -> dict[str, Any]:
        """The fields this architecture reads (an RNN ignores heads and positions, a plain
        Transformer the memory settings), for model cards."""
        d = asdict(self)
        if self.is_rnn:
            keep = ("arch", "d_vocab", "d_out", "n_layers", "d_hidden", "seed")
        else:
            memory = ("segment_length", "n_memory", "bptt_segments", "n_compressed", "compression_rate")
            keep = tuple(k for k in d if k not in memory)
            if self.arch in SEGMENT_ARCHS:
                keep += memory[:3]
            if self.arch == "compressive":
                keep += memory[3:]
        return {k: d[k] for k in keep}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"an architecture must be a mapping of fields, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown architecture fields: {', '.join(sorted(map(str, unknown)))}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in data]
        if missing:
            raise ConfigError(f"missing architecture fields: {', '.join(missing)}")
        return cls(**data)


def estimate_bytes(cfg: ModelConfig, batch: int = 1, length: int = 1, training: bool = False) -> float:
    """Rough upper estimate of the memory to build `cfg` and run `batch` sequences of `length`
    tokens (with gradients and AdamW state when `training`)."""
    d, L, layers = cfg.d_hidden, length, cfg.n_layers
    if cfg.arch == "second_order":  # one d x d matrix per input coordinate; the outer product x h per step
        v = cfg.d_vocab
        params = (v + 1) * d * d + (layers - 1) * (d + 1) * d * d + d * cfg.d_out
        buffers = v * v
        acts = batch * L * ((v + 3) * d + (layers - 1) * (d + 3) * d + 2 * cfg.d_out)
    elif cfg.is_rnn:
        gates = {"rnn": 1, "gru": 3, "lstm": 4}[cfg.arch]
        params = layers * gates * (2 * d * d + 2 * d) + cfg.d_vocab * d + d * cfg.d_out
        buffers = 0
        acts = batch * L * (layers * (gates + 2) * d + 2 * cfg.d_out)
    else:
        d_mlp = 4 * d if cfg.d_mlp is None else cfg.d_mlp
        ctx = {"rmt": cfg.segment_length + 2 * cfg.n_memory, "hmt": cfg.segment_length + 2,
               "compressive": cfg.segment_length + cfg.n_memory + cfg.n_compressed}.get(cfg.arch, cfg.n_ctx)
        params = layers * (4 * d * d + 2 * d * d_mlp) + (2 * cfg.d_vocab + ctx + cfg.d_out) * d
        # TransformerLens keeps a boolean ctx x ctx causal mask per layer (built through a
        # temporary twice its size) and rotary tables
        buffers = layers * ctx * ctx / 2 + 2 * ctx * d
        acts = batch * L * (layers * (12 * d + 2 * d_mlp + 3 * cfg.n_heads * L) + 2 * cfg.d_out)
        if cfg.arch == "scratchpad":
            acts *= 2
    per_value = 4
    total = params * per_value * (4 if training else 1) + buffers * per_value
    return total + acts * per_value * (3 if training else 1)


def check_memory(cfg: ModelConfig, batch: int = 1, length: int = 1, training: bool = False,
                 lower: str | None = None) -> None:
    """Raise `ResourceError` when `estimate_bytes` exceeds the memory limit."""
    from .._validate import check_bytes

    what = f"{cfg.arch} with d_hidden={cfg.d_hidden}" + ("" if cfg.is_rnn else f", n_ctx={cfg.n_ctx}")
    if batch > 1 or length > 1:
        what += f" on {batch} sequences of length {length}"
    default = "d_hidden" + ("" if cfg.is_rnn else " / n_ctx") + (" / the batch size or lengths" if batch > 1 else "")
    check_bytes(estimate_bytes(cfg, batch, length, training), what, lower or default)


def check_eval_memory(cfg: ModelConfig, n: int, length: int, chunk: int = 256, lower: str = "--n or --lengths") -> None:
    """Refuse evaluating `n` sequences of `length` (run in chunks of `chunk`) when the estimate
    (the model's forward plus the int64 tokens, labels and predictions) exceeds the limit."""
    from .._validate import check_bytes

    total = estimate_bytes(cfg, min(n, chunk), length) + 24.0 * n * length
    check_bytes(total, f"{cfg.arch} on {n} sequences of length {length}", lower)

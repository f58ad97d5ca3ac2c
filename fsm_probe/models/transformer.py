"""Small Transformers built natively by TransformerLens 4.x (`TransformerBridge.boot_native`).

The model is a plain `TransformerBridge`: every TransformerLens tool (hooks, `run_with_cache`,
`transformer_lens.patching`) works on it, and a checkpoint loads in TransformerLens alone from
the `tl_config` kept in `config.json`. Positional encodings: `learned` (TL "standard"),
`rotary`, and `none` (NoPE: a learned table frozen at zero, so plain TL computes the same thing).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import transformer_lens.model_bridge.sources.native  # noqa: F401  (registers boot_native)
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from .config import ModelConfig

# The ModelConfig each Transformer was built from. A bridge's own `cfg` is TransformerLens's
# config, and nothing is attached to the model; a bridge that was not built here (or a copy)
# gets its config read back from the bridge (`transformer_config`).
_CONFIGS: weakref.WeakKeyDictionary[TransformerBridge, ModelConfig] = weakref.WeakKeyDictionary()


def transformer_config(model: TransformerBridge) -> ModelConfig:
    """The `ModelConfig` of a Transformer: as built by `build_transformer`, else read from the
    bridge's TransformerLens config (ReLU MLPs, learned / rotary / frozen-zero positions)."""
    if model in _CONFIGS:
        return _CONFIGS[model]
    tl = model.cfg
    if tl.positional_embedding_type == "rotary":
        positional = "rotary"
    else:
        pos = model.original_model.pos.weight
        positional = "none" if not pos.requires_grad and not bool(pos.detach().any()) else "learned"
    return ModelConfig(
        arch="transformer", d_vocab=tl.d_vocab, d_out=tl.d_vocab_out, n_layers=tl.n_layers,
        d_hidden=tl.d_model, n_heads=tl.n_heads,
        d_mlp=0 if tl.attn_only else (None if tl.d_mlp == 4 * tl.d_model else tl.d_mlp),
        normalization=tl.normalization_type, positional=positional, n_ctx=tl.n_ctx,
        attention_dir=tl.attention_dir, seed=tl.seed or 0,
    )


def tl_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The `TransformerBridgeConfig` fields for `cfg`, JSON-serialisable (dtype left at float32)."""
    d_head = cfg.d_hidden // cfg.n_heads
    attn_only = cfg.d_mlp == 0
    tl = TransformerBridgeConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_hidden,
        d_head=d_head,
        n_heads=cfg.n_heads,
        d_mlp=None if attn_only else (cfg.d_mlp or 4 * cfg.d_hidden),
        attn_only=attn_only,
        n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab,
        d_vocab_out=cfg.d_out,
        act_fn="relu",
        normalization_type=cfg.normalization,
        positional_embedding_type="rotary" if cfg.positional == "rotary" else "standard",
        rotary_dim=d_head if cfg.positional == "rotary" else None,
        attention_dir=cfg.attention_dir,
        seed=cfg.seed,
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
    ).to_dict()
    tl.pop("dtype", None)
    return tl


def build_transformer(cfg: ModelConfig) -> TransformerBridge:
    """A freshly initialised (seeded) Transformer for `cfg` (registered for `transformer_config`)."""
    model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(tl_config_dict(cfg)))
    if cfg.positional == "none":
        pos = model.original_model.pos.weight
        with torch.no_grad():
            pos.zero_()
        pos.requires_grad_(False)
    _CONFIGS[model] = cfg
    return model

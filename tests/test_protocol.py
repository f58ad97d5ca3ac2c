"""The recurrent-state protocol (`fsm_probe.models.protocol`) and the native Transformer path
(`fsm_probe.models.native`): one spelling for every stateful model, one reader of the bridge."""

import pytest
import torch

from fsm_probe.errors import InputError
from fsm_probe.models import ModelConfig, build_model
from fsm_probe.models import protocol as P
from fsm_probe.models.native import NativeTransformer

CONFIGS = {
    "gru": ModelConfig("gru", 3, 2, n_layers=2, d_hidden=8),
    "lstm": ModelConfig("lstm", 3, 2, n_layers=1, d_hidden=8),
    "second_order": ModelConfig("second_order", 3, 2, n_layers=1, d_hidden=8),
    "rmt": ModelConfig("rmt", 3, 2, n_layers=1, d_hidden=16, n_heads=2, segment_length=2, n_memory=2, n_ctx=64),
    "transformer": ModelConfig("transformer", 3, 2, n_layers=1, d_hidden=16, n_heads=2, n_ctx=32),
    "scratchpad": ModelConfig("scratchpad", 3, 2, n_layers=1, d_hidden=16, n_heads=2, n_ctx=32,
                              positional="none"),
}


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_predicates_describe_each_family(arch):
    model = build_model(CONFIGS[arch]).eval()
    recurrent = arch in ("gru", "lstm", "second_order")
    stateful = recurrent or arch == "rmt"
    assert P.is_stateful(model) is stateful
    assert P.steps_per_token(model) is recurrent
    assert P.has_initial_readout(model) is recurrent
    assert P.has_attention(model) is not recurrent
    assert P.feeds_back_outputs(model) is (arch == "scratchpad")
    assert P.state_segment_length(model) == (2 if arch == "rmt" else None)
    assert P.context_limit(model) == (None if recurrent else CONFIGS[arch].n_ctx)
    if not stateful:
        assert P.state_sites(model) == ()
        with pytest.raises(InputError):
            P.initial_state(model, 2)
        return
    init = P.initial_state(model, 3)
    assert tuple(init) == P.state_sites(model)
    # one spelling: run a prefix, return its state, continue from it
    x = torch.randint(0, 3, (3, 8))
    full, final = model(x, return_state=True)
    assert tuple(final) == P.state_sites(model)
    _, middle = model(x[:, :4], return_state=True)
    rest, end = model(x[:, 4:], state=middle, return_state=True)
    torch.testing.assert_close(rest, full[:, 4:], atol=1e-5, rtol=0)
    for name in final:
        torch.testing.assert_close(end[name], final[name], atol=1e-5, rtol=0)
    # names left out start from the initial state
    assert torch.equal(model(x, state={}), model(x))


def test_native_step_matches_the_full_forward():
    model = build_model(CONFIGS["transformer"]).eval()
    net = NativeTransformer(model)
    x = torch.randint(0, 3, (4, 10))
    with torch.no_grad():
        ref = model(x)
        cache = net.new_cache(4, 10, x.device)
        steps = torch.stack([net.step(x[:, t], t, cache) for t in range(10)], dim=1)
        full = net.full(NativeTransformer.resid0(model, x))["logits"]
    torch.testing.assert_close(steps, ref, atol=1e-5, rtol=0)
    assert torch.equal(full, ref)


def test_scratchpad_generation_fires_no_hook():
    model = build_model(CONFIGS["scratchpad"]).eval()
    seen = []
    for name in ("blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_pattern", "hook_embed"):
        model.add_hook(name, lambda act, hook: seen.append(hook.name))
    x = torch.randint(0, 3, (2, 6))
    logits, labels = model.generate(x)
    assert seen == []
    hooked = model(x)  # one hooked pass over the generated feedback
    assert len(set(seen)) == 3  # each hook point fired (under its canonical name)
    torch.testing.assert_close(hooked, logits, atol=1e-5, rtol=0)
    model.reset_hooks()

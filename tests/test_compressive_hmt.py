"""The Compressive Transformer and HMT memory models (fsm_probe/models/compressive.py, hmt.py):
shapes, memory hooks, the recurrent-state protocol, causality, the memory updates against their
definitions, checkpoints, the CLI, sites and patching, and a short training on parity."""

import json

import numpy as np
import pytest
import torch

from fsm_probe.circuits import sites as S
from fsm_probe.circuits.patching import activation_patching, logit_diff
from fsm_probe.cli import main
from fsm_probe.errors import ConfigError, InputError
from fsm_probe.models import ModelConfig, build_model, model_config, predict_logits
from fsm_probe.models.protocol import initial_state, is_stateful, state_segment_length, state_sites
from fsm_probe.tasks import get_task
from fsm_probe.training import TrainConfig, train
from fsm_probe.training.checkpoint import load, save
from fsm_probe.training.evaluation import evaluate

ARCHS = ("compressive", "hmt")
STATE = {"compressive": ("hook_memory", "hook_compressed_memory"), "hmt": ("hook_memory",)}
EXTRA = {"compressive": ("hook_compressed_memory",), "hmt": ("hook_recall", "hook_recall_pattern")}


def memory_model(arch: str, **kw):
    base = dict(arch=arch, d_vocab=2, d_out=2, n_layers=2, d_hidden=16, n_heads=2, segment_length=2,
                n_memory=3, seed=1)
    base.update(kw)
    return build_model(ModelConfig(**base)).eval()


def tokens(n=3, length=9, seed=0):
    return torch.randint(0, 2, (n, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- shapes, hooks, protocol


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_memory_hooks_stacked_per_segment(arch):
    m = memory_model(arch)
    t = tokens(length=9)  # 5 segments of 2, the last one ragged
    logits, state = m(t, return_state=True)
    assert logits.shape == (3, 9, 2)
    assert is_stateful(m) and state_sites(m) == STATE[arch] and state_segment_length(m) == 2
    assert set(state) == set(STATE[arch]) and state["hook_memory"].shape == (3, 3, 16)
    _, cache = m.run_with_cache(t)
    for name in ("hook_memory", *EXTRA[arch]):
        assert name in cache and cache[name].shape[:2] == (3, 5)
    assert cache["hook_memory"].shape == (3, 5, 3, 16)
    n_inner = {"compressive": 2 + 3 + 2, "hmt": 2 + 2}[arch]
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 5, 2, n_inner, n_inner)
    for name in STATE[arch]:  # the state returned is the last one the hook saw
        torch.testing.assert_close(cache[name][:, -1], state[name], rtol=0, atol=0)
    assert torch.equal(m(t[:, :0]), torch.zeros(3, 0, 2))


@pytest.mark.parametrize("arch", ARCHS)
def test_two_halves_with_state_equal_one_run(arch):
    m = memory_model(arch)
    t = tokens(length=11)
    whole, last = m(t, return_state=True)
    first, mid = m(t[:, :6], return_state=True)
    second, end = m(t[:, 6:], state=mid, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-6)
    for name in STATE[arch]:
        torch.testing.assert_close(end[name], last[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(m(t, state=initial_state(m, 3)), whole, rtol=0, atol=0)
    one = {k: v[0] for k, v in initial_state(m, 1).items()}  # a [n, d] state is broadcast
    torch.testing.assert_close(m(t, state=one), whole, rtol=0, atol=0)
    with pytest.raises(InputError, match="unknown state"):
        m(t, state={**mid, "hook_x": mid["hook_memory"]})
    with pytest.raises(InputError, match="shape"):
        m(t, state={k: v[:, :1] for k, v in mid.items()})
    if arch == "compressive":
        with pytest.raises(InputError, match="lacks"):
            m(t, state={"hook_memory": mid["hook_memory"]})


@pytest.mark.parametrize("arch", ARCHS)
def test_a_later_token_does_not_change_earlier_logits(arch):
    m = memory_model(arch)
    t = tokens(n=8, length=10)
    base = m(t)
    for p in (0, 3, 4, 9):  # segment starts, middles and ends
        flipped = t.clone()
        flipped[:, p] = 1 - flipped[:, p]
        out = m(flipped)
        torch.testing.assert_close(out[:, :p], base[:, :p], rtol=0, atol=0)
        assert not torch.allclose(out[:, p:], base[:, p:])  # the flip is read where it may be


def test_compressive_memory_is_a_fifo_with_conv_compression():
    """The memories each segment leaves, recomputed from their definition: the FIFO keeps the
    M newest outputs, the S evicted ones become S / c slots of the strided convolution."""
    m = memory_model("compressive", n_memory=3, n_compressed=2, segment_length=2, compression_rate=2)
    t = tokens(length=8)
    _, cache = m.run_with_cache(t)
    out = cache["ln_final.hook_out"][:, :, 5:]  # [compressed (2) | memory (3) | tokens (2)]
    W, b = m.compress_weight.detach(), m.compress_bias.detach()
    mem, cmem = m.memory_init.detach().expand(3, 3, 16), m.compressed_init.detach().expand(3, 2, 16)
    for s in range(4):
        slots = torch.cat([mem, out[:, s]], 1)
        evicted, mem = slots[:, :2], slots[:, 2:]
        conv = torch.einsum("oik,bki->bo", W, evicted) + b  # kernel 2, stride 2: one slot
        cmem = torch.cat([cmem[:, 1:], conv[:, None]], 1)
        torch.testing.assert_close(cache["hook_memory"][:, s], mem, rtol=0, atol=1e-5)
        torch.testing.assert_close(cache["hook_compressed_memory"][:, s], cmem, rtol=0, atol=1e-5)
    # the segment reads them: its inner stream starts with [compressed | memory] (+ positions)
    resid = cache["blocks.0.hook_resid_pre"][:, 1, :5]
    pos = m.transformer.pos_embed.weight.detach()
    first = torch.cat([cache["hook_compressed_memory"][:, 0], cache["hook_memory"][:, 0]], 1)
    torch.testing.assert_close(resid, first + pos[:5], rtol=0, atol=1e-5)


def test_hmt_recall_and_cache_follow_their_definition():
    m = memory_model("hmt", n_memory=4)
    t = tokens(length=8)
    _, cache = m.run_with_cache(t)
    prev = m.memory_init.detach().expand(3, 4, 16)
    d = 16
    for s in range(4):
        q = prev[:, -1] @ m.W_Q.detach()
        ages = m.age_embed.detach()[torch.arange(3, -1, -1)]  # entry i is 3 - i segments old
        k = (prev + ages) @ m.W_K.detach()
        w = torch.softmax(torch.einsum("bd,bnd->bn", q, k) / d**0.5, -1)
        torch.testing.assert_close(cache["hook_recall_pattern"][:, s], w, rtol=0, atol=1e-5)
        torch.testing.assert_close(cache["hook_recall"][:, s, 0], torch.einsum("bn,bnd->bd", w, prev), rtol=0, atol=1e-5)
        new = cache["ln_final.hook_out"][:, s, -1]  # the memory token's output
        prev = torch.cat([prev[:, 1:], new[:, None]], 1)
        torch.testing.assert_close(cache["hook_memory"][:, s], prev, rtol=0, atol=1e-5)


def test_config_validation_and_fields():
    with pytest.raises(ConfigError, match="compression_rate=3 must divide segment_length=4"):
        ModelConfig("compressive", 2, 2, segment_length=4, compression_rate=3)
    with pytest.raises(ConfigError, match="n_compressed"):
        ModelConfig("compressive", 2, 2, n_compressed=0)
    with pytest.raises(ConfigError, match="compression_rate"):
        ModelConfig("hmt", 2, 2, compression_rate=-1)
    ModelConfig("hmt", 2, 2, segment_length=3, compression_rate=2)  # hmt does not compress
    assert "n_compressed" in ModelConfig("compressive", 2, 2).relevant_fields()
    assert "n_compressed" not in ModelConfig("hmt", 2, 2).relevant_fields()
    assert "n_memory" in ModelConfig("hmt", 2, 2).relevant_fields()
    assert ModelConfig.from_dict(ModelConfig("compressive", 2, 2, n_compressed=5).to_dict()).n_compressed == 5


# ---------------------------------------------------------------- checkpoints and CLI


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_gives_identical_logits(tmp_path, arch):
    task = get_task("parity")
    m = memory_model(arch)
    with torch.no_grad():  # move every parameter off its initial value
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    save(m, tmp_path / "run", task=task)
    run = load(tmp_path / "run")
    assert run.model_config == model_config(m) and type(run.model) is type(m)
    own = {"compressive": ["compress_weight", "compress_bias", "compressed_init"], "hmt": ["W_Q", "W_K", "age_embed"]}
    for name in own[arch]:
        torch.testing.assert_close(run.model.state_dict()[name], m.state_dict()[name], rtol=0, atol=0)
    t = tokens(n=4, length=13).numpy()
    torch.testing.assert_close(predict_logits(run.model, t), predict_logits(m, t), rtol=0, atol=0)


def _cli(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    captured = capsys.readouterr()
    assert exc.value.code == 0, captured.err
    return captured.out


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_train_save_load_evaluate(tmp_path, capsys, arch):
    run_dir = tmp_path / arch
    extra = ["--compressed", "3", "--compression-rate", "2"] if arch == "compressive" else []
    out = _cli(capsys, "train", "--task", "parity", "--arch", arch, "--hidden", "8", "--layers", "1",
               "--max-steps", "3", "--train-lengths", "1:6", "--memory", "2", *extra, "--quiet",
               "--out", str(run_dir))
    assert f"trained {arch} on parity: 3 steps" in out
    config = json.loads((run_dir / "config.json").read_text())["model"]
    assert config["arch"] == arch and config["n_memory"] == 2 and config["d_hidden"] == 8
    if arch == "compressive":
        assert config["n_compressed"] == 3 and config["compression_rate"] == 2
    report = json.loads(_cli(capsys, "eval", str(run_dir), "--lengths", "7,20", "--n", "16", "--json"))
    assert set(report["lengths"]) == {"6", "7", "20"}
    run = load(run_dir)
    again = evaluate(run.model, run.task, [20], n=16, seed=12345)
    assert again[20]["final_accuracy"] == pytest.approx(report["lengths"]["20"]["final_accuracy"])
    assert "hook_memory" in run.model.run_with_cache(np.zeros((1, 5), dtype=np.int64))[1]


def test_cli_refuses_a_bad_compression_rate(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "parity", "--arch", "compressive", "--segment-length", "3",
              "--compression-rate", "2", "--max-steps", "1", "--quiet", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "compression_rate=2 must divide segment_length=3" in capsys.readouterr().err


# ---------------------------------------------------------------- sites and patching


@pytest.mark.parametrize("arch", ARCHS)
def test_sites_and_memory_patching_restart_from_the_source_state(arch):
    m = memory_model(arch)
    cfg = model_config(m)
    assert S.family(cfg) == arch and S.patch_sites(cfg) == ["memory"]
    assert S.trace_site(cfg, "resid") == "memory"
    for bad in ("memory_slot", "resid_pre"):
        with pytest.raises(InputError, match="one site, 'memory'"):
            S.check_site(cfg, bad)
    with pytest.raises(InputError, match="the lens and probes"):
        S.stream_points(cfg)
    assert S.state_sites(m) == {"hook_memory": tuple(STATE[arch])}  # IIA swaps the whole state
    clean = tokens(n=4, length=9, seed=3)
    corrupted = clean.clone()
    corrupted[:, 1] = 1 - corrupted[:, 1]
    metric = logit_diff(torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0]))
    res = activation_patching(m, clean, corrupted, metric, site="memory", direction="denoise")
    assert res.axes == ("segment",) and res.values.shape == (5,)
    with torch.no_grad():
        _, cache = m.run_with_cache(clean, names_filter=list(STATE[arch]))
        base = m(corrupted)
    for s in range(5):
        suffix = corrupted[:, (s + 1) * 2 :]
        with torch.no_grad():
            rest = m(suffix, state={n: cache[n][:, s] for n in STATE[arch]}) if suffix.shape[1] else base[:, :0]
        restarted = torch.cat([base[:, : (s + 1) * 2], rest], 1)
        assert float(res.values[s]) == pytest.approx(float(metric(restarted)), abs=1e-5)
    assert float(res.values[-1]) == pytest.approx(res.baseline, abs=1e-6)  # the last state is never read


# ---------------------------------------------------------------- learning


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_learns_parity_at_small_length(arch):
    """Lengths 1-10 to 0.99 final-position accuracy in at most 400 steps (the HMT needs 2 layers:
    with one, 0.48 after 400 steps)."""
    task = get_task("parity")
    cfg = ModelConfig(arch, 2, 2, n_layers={"compressive": 1, "hmt": 2}[arch], d_hidden=16, n_heads=2, segment_length=2, n_memory=2, n_ctx=512)
    run = train(task, cfg, TrainConfig(train_lengths=(1, 10), max_steps=400, eval_every=50, lr=1e-2,
                                       val_size=128, val_lengths=(10,)), progress=False)
    report = evaluate(run.model, task, [10], n=256, seed=7)
    assert report[10]["final_accuracy"] >= 0.99, (run.log["steps"], report)

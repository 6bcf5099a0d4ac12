import math

import pytest
import torch

from recruit.errors import RecruitError
from recruit.models import BDH, PRESETS, bdh_config, build_model, load_model
from recruit.models.bdh import BDHConfig
from recruit.train import Trainer, make_config

CONFIGS = {
    "nano": dict(),
    "odd": dict(n_layer=3, d_model=24, n_head=3, n_neurons=40),  # odd head count, N not a power of two
}


def nano(**overrides) -> BDH:
    return BDH(bdh_config("bdh-nano", **{"dropout": 0.0, **overrides})).eval()


def reference_forward(model: BDH, idx: torch.Tensor) -> torch.Tensor:
    """Slow, literal oracle of the parallel form written from DESIGN.md: (B, T) -> (B, T, V); eval, fp32, CPU.

    Loops over layers, sequences, heads and token pairs; RoPE is an explicit block-diagonal rotation matrix.
    """
    cfg = model.config
    (B, T), N = idx.shape, cfg.n_neurons

    def layer_norm(z: torch.Tensor) -> torch.Tensor:
        mu = z.mean(-1, keepdim=True)
        return (z - mu) / torch.sqrt(((z - mu) ** 2).mean(-1, keepdim=True) + 1e-5)

    rot = [torch.zeros(N, N) for _ in range(T)]  # rot[t]: block-diagonal rotation of the neurons at position t
    for t in range(T):
        for k in range(0, N, 2):  # pair (k, k+1) turns by f = theta^(-k/N)/2π cycles per token, in fp32
            f = torch.tensor(1.0) / cfg.rope_theta ** torch.tensor(k / N) / (2 * math.pi)
            ang = (torch.tensor(float(t)) * f) % 1 * (2 * math.pi)
            c, s = torch.cos(ang), torch.sin(ang)
            rot[t][k : k + 2, k : k + 2] = torch.stack([c, -s, s, c]).view(2, 2)  # [[c, -s], [s, c]]
    v = layer_norm(model.embed.weight[idx])  # (B, T, d)
    for _ in range(cfg.n_layer):
        new_v = torch.empty_like(v)
        for b in range(B):
            heads = []
            for j in range(cfg.n_head):
                x = torch.relu(v[b] @ model.encoder[j])  # (T, N)
                xr = [rot[t] @ x[t] for t in range(T)]  # RoPE_t(x_t), each (N,)
                a = torch.stack(
                    [sum((xr[t] @ xr[s] * v[b, s] for s in range(t)), torch.zeros(cfg.d_model)) for t in range(T)]
                )
                heads.append(x * torch.relu(layer_norm(a) @ model.encoder_v[j]))  # x ⊙ y, (T, N)
            xy = torch.cat(heads, dim=-1)  # (T, h*N), head-major like concat_heads
            new_v[b] = layer_norm(v[b] + layer_norm(xy @ model.decoder))
        v = new_v
    return v @ model.lm_head


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parallel_forms_equal_oracle(seed, impl):
    torch.manual_seed(seed)
    model = nano(impl=impl)
    x = torch.randint(0, 288, (2, 11))
    torch.testing.assert_close(model(x), reference_forward(model, x))


def _twins(**overrides) -> tuple[BDH, BDH]:
    """The same weights with the fast and the reference parallel form."""
    fast = BDH(bdh_config("bdh-nano", **{"dropout": 0.0, **overrides}))
    ref = BDH(bdh_config("bdh-nano", **{"dropout": 0.0, **overrides, "impl": "reference"}))
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_form_equals_reference_in_values_and_gradients(name):
    torch.manual_seed(3)
    fast, ref = _twins(**CONFIGS[name])
    x = torch.randint(0, 288, (3, 29))
    out_f, out_r = fast(x), ref(x)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(out_f)
    (out_f * w).sum().backward()
    (out_r * w).sum().backward()
    for (name_f, p_f), (_, p_r) in zip(fast.named_parameters(), ref.named_parameters(), strict=True):
        scale = p_r.grad.abs().max().item()
        assert (p_f.grad - p_r.grad).abs().max().item() <= 1e-5 * scale, name_f


def test_fast_form_under_bf16_autocast_tracks_reference():
    torch.manual_seed(4)
    fast, ref = _twins(n_neurons=256)
    x = torch.randint(0, 288, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, out_r = fast(x).float(), ref(x).float()
    exact = ref(x)
    err_f, err_r = (out_f - exact).abs().max().item(), (out_r - exact).abs().max().item()
    assert err_f <= 2 * err_r + 1e-3  # bf16 rounding of the same size as the reference form's


def test_scores_are_strictly_causal():
    """The first token attends to nothing, so its logits do not depend on any later token."""
    model = nano()
    x = torch.randint(0, 288, (1, 9))
    y = x.clone()
    y[0, 1:] = (y[0, 1:] + 1) % 288
    out_x, out_y = model(x), model(y)
    torch.testing.assert_close(out_x[:, 0], out_y[:, 0], rtol=0, atol=0)
    assert not torch.allclose(out_x[:, 1], out_y[:, 1])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_recurrent_steps_equal_parallel(name):
    model = nano(**CONFIGS[name])
    x = torch.randint(0, 288, (3, 41))
    full = model(x)  # (B, T, V)
    state = model.new_state(3)
    steps = torch.stack([model.step(x[:, t], state) for t in range(x.shape[1])], dim=1)  # (B, T, V)
    assert (steps - full).abs().max().item() <= 1e-4
    assert state.pos == 41 and all(s.dtype == torch.float32 for s in state.synapses)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_prefill_equals_parallel(chunk):
    model = nano(**CONFIGS["odd"])
    x = torch.randint(0, 288, (2, 30))
    full = model(x)
    state = model.new_state(2)
    last = model.prefill(x[:, :29], state, chunk=chunk)
    torch.testing.assert_close(last, full[:, 28], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.step(x[:, 29], state), full[:, 29], rtol=1e-5, atol=1e-5)


def test_state_bytes_do_not_grow_with_context():
    model = nano()
    short, long = model.new_state(1), model.new_state(1)
    model.prefill(torch.randint(0, 288, (1, 10)), short)
    model.prefill(torch.randint(0, 288, (1, 200)), long, chunk=16)
    cfg = model.config
    assert short.nbytes() == long.nbytes() == cfg.n_layer * cfg.n_head * cfg.n_neurons * cfg.d_model * 4


def test_recurrent_form_runs_past_max_seq_len():
    model = nano(max_seq_len=8)
    x = torch.randint(0, 288, (1, 12))
    with pytest.raises(RecruitError, match="max_seq_len"):
        model(x)
    assert model.generate(x, 3, greedy=True).shape == (1, 15)


def test_generate_greedy_equals_repeated_parallel_argmax():
    model = nano()
    seq = torch.randint(0, 288, (2, 5))
    out = model.generate(seq, max_new_tokens=8, greedy=True, chunk=2)
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_generate_sampling_is_seeded_and_top_k_1_is_greedy():
    model = nano()
    x = torch.randint(0, 288, (2, 4))
    a = model.generate(x, 6, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(1))
    b = model.generate(x, 6, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(model.generate(x, 6, top_k=1), model.generate(x, 6, greedy=True))
    with pytest.raises(RecruitError, match="temperature"):
        model.generate(x, 2, temperature=0.0)
    for bad in (x[0], x[:0]):  # 1-D ids, an empty batch
        with pytest.raises(RecruitError, match="a non-empty prompt of token ids"):
            model.generate(bad, 2)


def test_state_must_match_the_batch():
    model = nano()
    with pytest.raises(RecruitError, match="sequences"):
        model.step(torch.zeros(3, dtype=torch.long), model.new_state(2))


def test_one_set_of_weights_is_shared_by_all_layers():
    counts = {n: nano(n_layer=n).num_params() for n in (1, 2, 7)}
    assert len(set(counts.values())) == 1
    names = {n for n, _ in nano().named_parameters()}
    assert names == {"encoder", "encoder_v", "decoder", "embed.weight", "lm_head"}


def test_parameter_counts():
    cfg = BDHConfig(vocab_size=256)  # the paper's defaults
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_neurons, cfg.dropout) == (6, 256, 4, 8192, 0.1)
    expected = 3 * 4 * 8192 * 256 + 2 * 256 * 256
    assert expected == 25_296_896  # "25.3M"
    assert build_model("bdh-ref", {"vocab_size": 256}).num_params() == expected
    tiny, gpt_tiny = build_model("bdh-tiny").num_params(), build_model("gpt-tiny").num_params()
    assert tiny == 823_296 and abs(tiny / gpt_tiny - 1) < 0.1
    assert build_model("bdh-nano").num_params() == 30_720
    assert {"bdh-nano", "bdh-tiny", "bdh-ref"} <= set(PRESETS)


def test_init_follows_the_reference():
    torch.manual_seed(0)
    model = build_model("bdh-tiny")
    for _, p in model.named_parameters():
        assert abs(p.std().item() - 0.02) < 2e-3 and abs(p.mean().item()) < 2e-3
    assert model.decoder.shape == (4 * 1024, 64) and model.encoder.shape == model.encoder_v.shape == (4, 64, 1024)
    assert model.lm_head.shape == (64, 288) and model.embed.weight.shape == (288, 64)


def test_save_load_round_trip(tmp_path):
    model = nano(**CONFIGS["odd"])
    model.save_pretrained(tmp_path / "m")
    x = torch.randint(0, 288, (2, 9))
    for again in (BDH.from_pretrained(tmp_path / "m"), load_model(tmp_path / "m")):
        assert isinstance(again, BDH) and again.config == model.config
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_neurons": 63}, "even"),
        ({"n_head": 0}, "n_head"),
        ({"dropout": 1.0}, "dropout"),
        ({"rope_theta": 0.5}, "rope_theta"),
        ({"d_model": 3, "n_head": 5, "n_neurons": 0}, "divisible"),
        ({"max_seq_len": -1}, "max_seq_len"),
        ({"n_neuron": 8}, "valid keys"),
    ],
)
def test_invalid_configs_are_clear_errors(overrides, message):
    with pytest.raises(RecruitError, match=message):
        build_model("bdh-nano", overrides)


def test_stats_and_hidden_states():
    model = nano()
    x = torch.randint(0, 288, (2, 7))
    logits, stats = model.forward_with_stats(x)
    torch.testing.assert_close(logits, model(x))
    assert set(stats) == {"x", "y", "xy"} and all(len(v) == 2 for v in stats.values())
    assert all(0.0 < f < 1.0 for f in stats["x"] + stats["y"])  # ReLU: sparse and positive
    assert all(xy <= min(a, b) for xy, a, b in zip(stats["xy"], stats["x"], stats["y"], strict=True))
    out, hidden = model(x, return_hidden=True)
    assert len(hidden) == 3 and all(h.shape == (2, 7, 32) for h in hidden)


def test_fp16_autocast_does_not_overflow_the_scores():
    model = nano(n_neurons=512)
    with torch.no_grad():
        model.encoder.mul_(150)  # large x: scores ~1e5, past fp16's 65504
    x = torch.randint(0, 288, (1, 16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        v = torch.nn.functional.layer_norm(model.embed.weight[x], (32,))  # (1, T, d)
        xr = torch.relu(v @ model.encoder[0]).float()  # (1, T, N), the first layer's x
        assert (xr @ xr.mT).max() > 65504
        out = model(x)
        state = model.new_state(1)
        model.prefill(x, state, chunk=5)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), model(x), rtol=1e-2, atol=1e-2)
    assert all(s.dtype == torch.float32 and torch.isfinite(s).all() for s in state.synapses)


def test_trainer_lowers_the_loss(tmp_path, tokens):
    over = {
        "model": "bdh-nano",
        "model.dropout": 0.0,
        "out_dir": str(tmp_path / "run"),
        "seq_len": 32,
        "batch_size": 4,
        "max_steps": 20,
        "warmup_steps": 2,
        "lr": 1e-2,
        "eval_every": 20,
        "eval_windows": 4,
        "ckpt_every": 20,
        "log_every": 5,
    }
    cfg = make_config(None, overrides=over)
    tr = Trainer(cfg, tokens, tokens[:2000], progress=False)
    before = tr.evaluate()
    model = tr.fit()
    assert isinstance(model, BDH)
    assert tr.history[-1]["val_loss"] < before - 0.5
    assert isinstance(load_model(tmp_path / "run/final"), BDH)
    dens = {k: tr.history[-1][k] for k in ("density_x", "density_y", "density_xy")}  # logged at each evaluation
    assert all(0 < v <= 1 for v in dens.values()) and dens["density_xy"] <= min(dens["density_x"], dens["density_y"])
    assert "density_x" in (tmp_path / "run/log.csv").read_text().splitlines()[0]


def test_activity_penalty_is_the_mean_activity_in_both_forms():
    idx = torch.randint(0, 288, (2, 12))
    fast = nano(activity_l1=0.5).train()
    ref = nano(activity_l1=0.5, impl="reference").train()
    ref.load_state_dict(fast.state_dict())
    xs, ys = [], []
    ref.eval()
    ref(idx, observe=lambda i, x, y: (xs.append(x.mean()), ys.append(y.mean())))
    expect = 0.5 * (torch.stack(xs) + torch.stack(ys)).mean()
    for model in (fast, ref.train()):
        model(idx)
        torch.testing.assert_close(model.activity_loss(), expect)
        model.generate(idx, 3, greedy=True)  # the recurrent form between a training forward and its loss ...
        torch.testing.assert_close(model.activity_loss(), expect)  # ... adds nothing to the penalty
        model.train()
    with torch.no_grad():
        fast.eval()(idx)
    with pytest.raises(RecruitError, match="activity_loss needs"):
        fast.activity_loss()  # an eval forward collects nothing
    assert nano().loss_terms() == [] and [t.name for t in fast.loss_terms()] == ["bdh_activity"]
    with pytest.raises(ValueError, match="activity_l1"):
        BDHConfig(activity_l1=-1.0)
    ramped = nano(activity_l1=0.5, activity_warmup=0.5).train()
    ramped.load_state_dict(fast.state_dict())
    term = ramped.loss_terms()[0]
    ramped(idx)
    for progress, scale in ((0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (0.9, 1.0)):
        term.set_progress(progress)
        torch.testing.assert_close(term(ramped, idx, idx, None), scale * expect)
    fast.train()(idx)
    term = fast.loss_terms()[0]
    term.set_progress(0.0)  # no warm-up: the full weight from the first step
    torch.testing.assert_close(term(fast, idx, idx, None), expect)
    with pytest.raises(ValueError, match="activity_warmup"):
        BDHConfig(activity_warmup=1.5)


def test_activity_penalty_trains_sparser(tmp_path, tokens):
    """Same steps and seed, with and without the penalty: the penalised run ends with fewer active neurons."""
    dens = {}
    for w in (0.0, 1.0):
        over = {"model": "bdh-nano", "model.dropout": 0.0, "model.activity_l1": w, "out_dir": str(tmp_path / f"r{w}"),
                "max_steps": 30, "batch_size": 4, "seq_len": 32, "warmup_steps": 2, "lr": 1e-2, "eval_every": 30,
                "eval_windows": 4, "ckpt_every": 30, "log_every": 5}  # fmt: skip
        tr = Trainer(make_config(None, overrides=over), tokens, tokens[:2000], progress=False)
        tr.fit()
        dens[w] = tr.history[-1]["density_x"]
        assert ("bdh_activity" in tr.history[-2]) == (w > 0)
    assert dens[1.0] < dens[0.0]

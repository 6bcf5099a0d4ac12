import copy
import math
import sys
import types

import pytest
import torch
from torch import nn

from recruit.errors import RecruitError
from recruit.fff import (
    FastFeedForward,
    FFFConfig,
    HardeningLoss,
    ZeroFF,
    drop_mlps,
    from_dense,
    record_mlp_inputs,
    replace_mlps,
)
from recruit.models import GPT, gpt_config
from recruit.train import Trainer, make_config


def visited_rows(fff: FastFeedForward, x: torch.Tensor) -> set[int]:
    """Rows of w_in on some token's path, by a literal walk independent of the module's routing code."""
    c, rows = fff.config, set()
    w_in, b_in = fff.w_in.detach(), fff.b_in.detach()
    for t in x.reshape(-1, c.dim_in):
        for k in range(c.n_trees):
            n = 0
            for _ in range(c.depth + 1):
                row = k * c.n_nodes + n
                rows.add(row)
                n = 2 * n + 2 if float(t @ w_in[row] + b_in[row]) > 0 else 2 * n + 1
    return rows


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(mode="medium"), "hard, soft"),
        (dict(depth=-1), "0..30"),
        (dict(dim_in=0), "dim_in"),
        (dict(n_trees=0), "n_trees"),
        (dict(hardening=-1.0), "hardening"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        FFFConfig(**{**dict(dim_in=4, dim_out=4, depth=2), **kw})
    with pytest.raises(ValueError, match="auto, torch, reference"):
        FastFeedForward(4, 4, 2).backend = "cuda"


def test_param_shapes_init_and_usage():
    fff = FastFeedForward(64, 32, depth=3, n_trees=2)
    nodes = 15
    assert fff.w_in.shape == (2 * nodes, 64) and fff.b_in.shape == (2 * nodes,) and fff.w_out.shape == (32, 2 * nodes)
    assert dict(fff.named_parameters()).keys() == {"w_in", "b_in", "w_out"}
    for p, bound in ((fff.w_in, 1 / 8), (fff.b_in, 1 / 8), (fff.w_out, 1 / math.sqrt(4 * 2))):
        assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound
    assert fff.neurons_used_per_token() == 8 and fff.fraction_used == pytest.approx(8 / 30)
    assert FastFeedForward(768, 768, depth=11).fraction_used == pytest.approx(12 / 4095)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_trees", [1, 3])
@pytest.mark.parametrize("depth", range(6))
def test_hard_training_forward_equals_reference(depth, n_trees, dtype):
    fff = FastFeedForward(12, 10, depth, n_trees).to(dtype).train()
    for shape in [(3, 5, 12), (7, 12), (1, 12)]:  # odd token counts, with and without a batch dim
        x = torch.randn(shape, dtype=dtype)
        out = fff(x)
        assert out.shape == (*shape[:-1], 10) and out.dtype == dtype
        torch.testing.assert_close(out, fff.reference_forward(x))


@pytest.mark.parametrize("n_trees", [1, 2])
@pytest.mark.parametrize("depth", range(9))
def test_eval_gather_equals_reference(depth, n_trees):
    fff = FastFeedForward(16, 8, depth, n_trees).eval()
    fff.backend = "torch"
    x = torch.randn(9, 16)
    ref = fff.reference_forward(x)
    torch.testing.assert_close(fff(x), ref)  # autograd-capable gather (weights require grad)
    with torch.no_grad():
        torch.testing.assert_close(fff(x), ref)  # cached contiguous weights
        torch.testing.assert_close(fff.forward_hard_inference(x.double()), ref.double())
    fff.backend = "reference"
    torch.testing.assert_close(fff(x), ref)


def test_eval_kernel_path_promotes_reshapes_and_copies_only_where_needed():
    fff = FastFeedForward(12, 10, depth=5, n_trees=2).eval()
    x = torch.randn(2, 7, 12)
    with torch.no_grad():
        ref = fff.reference_forward(x)
        out = fff(x)
        assert out.shape == (2, 7, 10) and out.dtype == torch.float32
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(fff(x.double()), fff.reference_forward(x.double()))  # promoted to float64
        assert fff(x.double()).dtype == torch.float64
        half = fff(x.bfloat16())  # computed in float32 (the weights' dtype), returned in bfloat16
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half, fff.reference_forward(x.bfloat16().float()).bfloat16())
        strided = torch.randn(12, 5).t()  # (5, 12), not contiguous
        torch.testing.assert_close(fff(strided), fff.reference_forward(strided))


def test_layer_copies_and_pickles_after_an_eval_forward(tmp_path):
    fff = FastFeedForward(16, 8, depth=3, n_trees=2).eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        y = fff(x)  # fills the inference caches (on the CPU a prepared C++ kernel holding raw pointers)
        twin = copy.deepcopy(fff)
        assert twin._prepared is None and torch.equal(twin(x), y)
        twin.w_out.mul_(2.0)  # the copy owns its weights
        assert torch.equal(fff(x), y) and not torch.equal(twin(x), y)
        torch.save(fff, tmp_path / "fff.pt")
        assert torch.equal(torch.load(tmp_path / "fff.pt", weights_only=False)(x), y)


def test_hard_gradients_only_on_visited_nodes():
    fff = FastFeedForward(8, 6, depth=4, n_trees=2).train()
    x = torch.randn(3, 8)
    (fff(x) * torch.randn(3, 6)).sum().backward()
    visited = visited_rows(fff, x)
    assert set(fff.route(x).flatten().tolist()) == visited
    assert len(visited) < fff.config.width  # the check below is not vacuous
    assert set(fff.w_in.grad.abs().sum(1).nonzero().flatten().tolist()) == visited
    assert set(fff.b_in.grad.nonzero().flatten().tolist()) == visited
    assert set(fff.w_out.grad.abs().sum(0).nonzero().flatten().tolist()) == visited


@pytest.mark.parametrize("n_trees", [1, 2])
@pytest.mark.parametrize("depth", range(4))
def test_soft_forward_equals_path_mixture(depth, n_trees):
    fff = FastFeedForward(6, 5, depth, n_trees, mode="soft").double().train()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(fff(x), fff.reference_soft_forward(x))


def test_soft_probabilities_and_hardening_loss_reduce_entropy():
    fff = FastFeedForward(8, 8, depth=3, mode="soft", hardening=0.5).train()
    x = torch.randn(32, 8)
    fff(x)
    p = torch.sigmoid(fff._last_logits)
    assert p.shape == (32, 1, 7) and bool(((p > 0) & (p < 1)).all())
    term = HardeningLoss()
    torch.testing.assert_close(term(nn.Sequential(fff), x, x, x), 0.5 * fff.branch_entropy())
    opt = torch.optim.Adam(fff.parameters(), lr=0.05)
    entropies = []
    for _ in range(10):
        fff(x)
        loss = fff.hardening_loss()
        entropies.append(fff.branch_entropy().item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert entropies[-1] < 0.8 * entropies[0]
    fff.eval()
    fff(x)
    assert fff.hardening_loss().item() == 0.0  # no stash outside soft training
    hard = FastFeedForward(8, 8, depth=3).train()
    hard(x)
    assert term(hard, x, x, x).item() == 0.0


def test_soft_forward_with_saturated_sigmoids_approaches_hard():
    fff = FastFeedForward(8, 6, depth=4, n_trees=2, mode="soft").double()
    x = torch.randn(64, 8, dtype=torch.float64)
    errors = []
    with torch.no_grad():
        for scale in (1.0, 1e2, 1e4):
            f = FastFeedForward(8, 6, depth=4, n_trees=2, mode="soft").double()
            f.load_state_dict(fff.state_dict())
            f.w_in.mul_(scale)
            f.b_in.mul_(scale)
            soft, hard = f.forward_soft(x), f.reference_forward(x)
            errors.append(((soft - hard).norm() / hard.norm()).item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6


def test_fused_kernel_hook(monkeypatch):
    fff = FastFeedForward(8, 6, depth=3, n_trees=2).eval()
    x = torch.randn(5, 8)
    ref = fff.reference_forward(x)
    prepared, calls = [], []

    def fff_prepare(w_in, b_in, w_out_t, depth, n_trees):
        prepared.append(w_out_t)
        assert (depth, n_trees) == (3, 2) and w_in.stride(1) == w_out_t.stride(1) == 1
        # on the CPU the two are views of one buffer, each node's input row followed by its output row
        assert w_in.stride(0) == w_out_t.stride(0) == 14 and w_out_t.data_ptr() == w_in.data_ptr() + 8 * 4
        assert torch.equal(w_out_t, fff.w_out.t()) and torch.equal(w_in, fff.w_in) and torch.equal(b_in, fff.b_in)

        def kernel(x2d):
            calls.append(x2d)
            assert x2d.shape == (5, 8)
            return fff.reference_forward(x2d) + 1.0  # marked, to see that the kernel's result is returned

        return kernel

    monkeypatch.setitem(sys.modules, "recruit.fff.kernels", types.SimpleNamespace(fff_prepare=fff_prepare))
    with torch.no_grad():
        torch.testing.assert_close(fff(x), ref + 1.0)
        fff(x)
        assert len(prepared) == 1 and len(calls) == 2  # prepared once, then reused
        fff.w_out.mul_(2.0)
        torch.testing.assert_close(fff(x), fff.reference_forward(x) + 1.0)
        assert len(prepared) == 2 and prepared[1] is not prepared[0]  # an in-place update prepares it again
        fff.backend = "torch"
        torch.testing.assert_close(fff(x), fff.reference_forward(x))
        fff.backend = "auto"
    assert len(calls) == 3
    fff(x)  # grad needed: the kernel is skipped
    assert len(calls) == 3
    declining = FastFeedForward(8, 6, depth=3, n_trees=2).eval()
    monkeypatch.setitem(
        sys.modules, "recruit.fff.kernels", types.SimpleNamespace(fff_prepare=lambda *a: lambda x: None)
    )
    with torch.no_grad():
        torch.testing.assert_close(declining(x), declining.reference_forward(x))  # kernel declines: gather
    failing = FastFeedForward(8, 6, depth=3, n_trees=2).eval()
    monkeypatch.setitem(sys.modules, "recruit.fff.kernels", None)  # import fails
    with torch.no_grad():
        torch.testing.assert_close(failing(x), failing.reference_forward(x))


def nano(**kw) -> GPT:
    return GPT(gpt_config("gpt-nano", **kw)).eval()


def test_replace_mlps_keeps_shape_and_changes_logits():
    model = nano()
    idx = torch.randint(0, 288, (2, 9))
    before = model(idx)
    replace_mlps(model, depth=3, n_trees=2).eval()
    ffs = [b.mlp for b in model.blocks]
    assert all(isinstance(f, FastFeedForward) and f.config.dim_in == 32 for f in ffs)
    after = model(idx)
    assert after.shape == before.shape and not torch.allclose(after, before)
    for f in ffs:
        f.backend = "reference"
    torch.testing.assert_close(model(idx), after)  # the eval path inside the model equals the oracle


def test_drop_mlps_removes_the_mlp_contribution():
    model, zeroed = nano(), nano()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for b in zeroed.blocks:
            b.mlp.fc_out.weight.zero_()  # no biases in gpt-nano: the MLP outputs exact zeros
    idx = torch.randint(0, 288, (2, 7))
    drop_mlps(model)
    assert all(isinstance(b.mlp, ZeroFF) for b in model.blocks)
    torch.testing.assert_close(model(idx), zeroed(idx))


def test_record_inputs_and_from_dense_reduces_mse():
    model = nano()
    idx = torch.randint(0, 288, (2, 11))
    seen = record_mlp_inputs(model, idx, layer=1)
    assert seen.shape == (22, 32) and not model.blocks[1].mlp._forward_pre_hooks
    _, hidden = model(idx, return_hidden=True)
    block = model.blocks[1]
    h = hidden[1] + block.attn(block.norm1(hidden[1]), torch.arange(11))
    torch.testing.assert_close(seen, block.norm2(h).reshape(-1, 32))

    mlp = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))
    inputs = torch.randn(2000, 16)
    fff, report = from_dense(mlp, depth=3, inputs=inputs, steps=150, lr=1e-2, batch=128)
    assert isinstance(fff, FastFeedForward) and not fff.training
    assert report.final_mse < 0.5 * report.initial_mse and report.final_rel_error < report.initial_rel_error
    assert report.final_mse < 0.7 * report.dense_mse_to_zero  # better than no FF at all
    assert report.n_train + report.n_eval == 2000 and report.steps == 150


def test_from_dense_says_when_the_inputs_do_not_fit_the_mlp():
    mlp = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))
    with pytest.raises(RecruitError, match=r"does not run on the recorded inputs \(100, 12\)"):
        from_dense(mlp, depth=3, inputs=torch.randn(100, 12), steps=1)
    with pytest.raises(RecruitError, match=r"maps inputs \(100, 16\) to \(100, 2, 8\)"):
        from_dense(nn.Unflatten(1, (2, 8)), depth=3, inputs=torch.randn(100, 16), steps=1)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_gpt_with_fff_trains_with_the_trainer(tmp_path, tokens, mode):
    model = replace_mlps(nano(), depth=3, mode=mode, hardening=0.1)
    for b in model.blocks:
        b.mlp.backend = "torch"  # evaluation independent of the fused kernels' build
    over = dict(model="gpt-nano", out_dir=str(tmp_path), seq_len=32, batch_size=4, max_steps=30, eval_every=30)
    cfg = make_config(None, overrides={**over, "eval_windows": 2, "warmup_steps": 2, "log_every": 5, "lr": 3e-3})
    losses = []
    tr = Trainer(cfg, tokens, tokens[:2000], model=model, extra_losses=[HardeningLoss()], progress=False)
    tr.fit(on_step=lambda step, m: losses.append(m))
    assert len(losses) == 30 and math.isfinite(losses[-1]["val_loss"])
    assert sum(m["loss"] for m in losses[-5:]) / 5 < losses[0]["loss"] - 0.5
    assert (losses[0]["fff_hardening"] > 0) == (mode == "soft")


@pytest.mark.parametrize("depth", [None, 0, 2])
def test_gpt_fff_depth_is_kept_as_given_and_saved(tmp_path, depth):
    """fff_depth None picks the deepest tree that fits d_ff; any given depth, 0 included, is the one built and saved."""
    from recruit.models import load_model

    model = GPT(gpt_config("gpt-nano", mlp="fff", fff_depth=depth))  # d_ff 128: 127 nodes, depth 6
    want = 6 if depth is None else depth
    assert model.config.fff_depth == want and model.blocks[0].mlp.config.depth == want
    model.save_pretrained(tmp_path / "m")
    assert load_model(tmp_path / "m").config.fff_depth == want


@pytest.mark.parametrize("swap", ["fff", "soft", "none"])
def test_replaced_or_dropped_mlps_save_load_and_keep_the_models_mode(tmp_path, swap):
    """replace_mlps / drop_mlps write what they did into a GPT's config (it saves and loads as it is) and give the
    new blocks the mode of the ones they replace."""
    from recruit.models import load_model

    for training in (False, True):
        model = nano().train(training)
        if swap == "none":
            drop_mlps(model)
        else:
            replace_mlps(model, depth=2, n_trees=2, mode="soft" if swap == "soft" else "hard", hardening=0.1)
        assert all(b.mlp.training == training for b in model.blocks)
    model.eval().save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.mlp == ("none" if swap == "none" else "fff")
    if swap != "none":
        c = loaded.config
        assert (c.fff_depth, c.fff_trees, c.fff_mode) == (2, 2, "soft" if swap == "soft" else "hard")
        assert c.fff_hardening == (0.1 if swap == "soft" else 0.0)  # inert in hard mode, which the config refuses
    x = torch.randint(0, 288, (2, 9))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_inputs_of_another_width_are_refused_by_name():
    fff = FastFeedForward(16, 8, 2)
    for mode in (True, False):
        with pytest.raises(ValueError, match=r"expects inputs \(\.\.\., 16\), got \(3, 12\)"):
            fff.train(mode)(torch.randn(3, 12))

import csv

import numpy as np
import pytest
import torch

from recruit.errors import RecruitError
from recruit.models import load_model
from recruit.train import TrainConfig, Trainer, lr_at, make_config, train_steps


def nano(tmp_path, **kw):
    over = {"out_dir": str(tmp_path / "run"), "max_steps": 12, "ckpt_every": 4, "eval_every": 6, "log_every": 1}
    return make_config("gpt-nano", overrides={**over, **kw})


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_held_out_loss_falls(tmp_path, tokens):
    cfg = nano(tmp_path, max_steps=40, eval_every=20, lr=1e-2)
    tr = Trainer(cfg, tokens, tokens[:2000], progress=False)
    before = tr.evaluate()
    assert tr.model.training  # a fresh model trains; evaluate leaves the mode it found
    tr.fit()
    assert not tr.model.training and tr.evaluate() == tr.history[-1]["val_loss"] and not tr.model.training
    assert tr.history[-1]["val_loss"] < before - 0.5
    assert (tmp_path / "run/final/model.safetensors").exists()
    rows = list(csv.DictReader(open(tmp_path / "run/log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    load_model(tmp_path / "run/final")
    with pytest.raises(RecruitError, match=r"training run directory.*its model is .*run/final"):
        load_model(tmp_path / "run")  # the run directory a user may pass for its model


def test_unfinished_run_directory_is_named_as_such(tmp_path, tokens):
    Trainer(nano(tmp_path), tokens, tokens[:2000], progress=False).fit(stop_after=4)
    with pytest.raises(RecruitError, match="training run directory.*no finished model"):
        load_model(tmp_path / "run")


def test_resume_is_exact(tmp_path, tokens):
    """Stopping after a checkpoint and resuming ends on the same weights as an uninterrupted run (dropout on)."""
    straight = Trainer(nano(tmp_path / "a", **{"model.dropout": 0.1}), tokens, tokens[:2000], progress=False)
    straight.fit()
    first = Trainer(nano(tmp_path / "b", **{"model.dropout": 0.1}), tokens, tokens[:2000], progress=False)
    first.fit(stop_after=5)  # checkpoints at step 4 and at the stop (5)
    stale = tmp_path / "b/run/.ckpt.pt.x1y2.tmp"  # what kill -9 during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")
    resumed = Trainer(nano(tmp_path / "b", **{"model.dropout": 0.1}), tokens, tokens[:2000], progress=False)
    resumed.fit()
    assert resumed.step == 12 and not stale.exists()
    a, b = weights(straight.model), weights(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    rows = list(csv.DictReader(open(tmp_path / "b/run/log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))


def test_resume_refuses_a_different_config(tmp_path, tokens):
    Trainer(nano(tmp_path), tokens, tokens[:2000], progress=False).fit(stop_after=4)
    written = (tmp_path / "run/config.json").read_text()
    with pytest.raises(RecruitError, match="different config"):
        Trainer(nano(tmp_path, lr=0.5), tokens, tokens[:2000], progress=False).fit()
    assert (tmp_path / "run/config.json").read_text() == written  # the refused run's config not written over it
    with pytest.raises(RecruitError, match="already at step 4, past max_steps=3"):
        Trainer(nano(tmp_path, max_steps=3), tokens, tokens[:2000], progress=False).fit()
    assert (tmp_path / "run/config.json").read_text() == written
    # a run saved before a config field existed (here beta2) had its default: it resumes with it, not another
    state = torch.load(tmp_path / "run/ckpt.pt", weights_only=False)
    del state["config"]["beta2"]
    torch.save(state, tmp_path / "run/ckpt.pt")
    with pytest.raises(RecruitError, match=r"\(beta2 differ\)"):
        Trainer(nano(tmp_path, beta2=0.9), tokens, tokens[:2000], progress=False).fit()
    assert Trainer(nano(tmp_path), tokens, tokens[:2000], progress=False).try_resume()


def test_model_fields_resume_whether_given_as_strings_or_numbers(tmp_path, tokens):
    """The command line gives model.FIELD as text, a JSON file or Python as numbers: the same run either way."""
    Trainer(nano(tmp_path, **{"model.n_layer": "3", "model.dropout": "0.1"}), tokens, tokens[:2000],
            progress=False).fit(stop_after=4)  # fmt: skip
    resumed = Trainer(nano(tmp_path, **{"model.n_layer": 3, "model.dropout": 0.1}), tokens, tokens[:2000],
                      progress=False)  # fmt: skip
    assert resumed.try_resume() and resumed.step == 4 and resumed.cfg.model_args == {"n_layer": 3, "dropout": 0.1}


def test_resume_into_another_model_is_a_one_line_error(tmp_path, tokens):
    from recruit.models import GPT, gpt_config

    Trainer(nano(tmp_path), tokens, tokens[:2000], progress=False).fit(stop_after=4)
    other = GPT(gpt_config("gpt-nano", n_layer=3))  # the same run config, another model passed in
    with pytest.raises(RecruitError, match="the checkpoint holds another model than this one"):
        Trainer(nano(tmp_path), tokens, tokens[:2000], model=other, progress=False).fit()
    with pytest.raises(RecruitError, match="token id -1, outside the model's vocabulary 0..287"):
        Trainer(nano(tmp_path / "neg"), np.concatenate([tokens.astype(np.int64), [-1]]), tokens[:2000], progress=False)
    with pytest.raises(ValueError, match="need steps >= 1, lr > 0"):
        train_steps(other, lambda step: None, 0, 1e-3, lambda m, b: None)


def test_resume_refuses_other_data(tmp_path, tokens):
    """A run continues only on the data it started on: another corpus, or the same one rebuilt, is refused."""
    Trainer(nano(tmp_path), tokens, tokens[:2000], progress=False).fit(stop_after=4)
    other = tokens.copy()
    other[-1] = (int(other[-1]) + 1) % 256  # one token of the training split differs
    with pytest.raises(RecruitError, match="other data"):
        Trainer(nano(tmp_path), other, tokens[:2000], progress=False).fit()
    with pytest.raises(RecruitError, match="other data"):
        Trainer(nano(tmp_path), tokens, tokens[:1999], progress=False).fit()
    state = torch.load(tmp_path / "run/ckpt.pt", weights_only=False)
    del state["data"]  # a checkpoint from before the data key: resumed as it was
    torch.save(state, tmp_path / "run/ckpt.pt")
    assert Trainer(nano(tmp_path), other, tokens[:2000], progress=False).try_resume()


def test_truncated_training_checkpoint_is_a_clear_error(tmp_path, tokens):
    Trainer(nano(tmp_path), tokens, tokens[:2000], progress=False).fit(stop_after=4)
    ckpt = tmp_path / "run/ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(RecruitError, match="corrupt or truncated"):
        Trainer(nano(tmp_path), tokens, tokens[:2000], progress=False).fit()


def test_extra_loss_terms_are_added_and_logged(tmp_path, tokens):
    class L2:
        name = "l2"
        entered = exited = 0

        def __enter__(self):
            L2.entered += 1

        def __exit__(self, *exc):
            L2.exited += 1

        def __call__(self, model, x, y, logits):
            return 1e-3 * sum((p**2).sum() for p in model.parameters())

    tr = Trainer(nano(tmp_path, max_steps=3), tokens, tokens[:2000], extra_losses=[L2()], progress=False)
    tr.fit()
    assert "l2" in tr.history[-1] and tr.history[-1]["l2"] > 0
    assert L2.entered == L2.exited == 1


def test_terms_with_a_schedule_hear_the_runs_progress_also_after_a_resume(tmp_path, tokens):
    class Ramp:
        name = "ramp"

        def __init__(self):
            self.heard = []

        def set_progress(self, fraction):
            self.heard.append(fraction)

        def __call__(self, model, x, y, logits):
            return logits.new_zeros(())

    first = Ramp()
    Trainer(nano(tmp_path, max_steps=4), tokens, tokens[:2000], extra_losses=[first], progress=False).fit(stop_after=2)
    second = Ramp()
    Trainer(nano(tmp_path, max_steps=4), tokens, tokens[:2000], extra_losses=[second], progress=False).fit()
    assert first.heard == [0.0, 0.25] and second.heard == [0.5, 0.75]


def test_model_asks_for_its_own_loss_terms(tmp_path, tokens):
    """A soft-mode FFF GPT with a hardening weight gets the hardening loss without the caller passing it."""
    soft = {"model.mlp": "fff", "model.fff_depth": 3, "model.fff_mode": "soft"}
    tr = Trainer(nano(tmp_path, max_steps=2, **soft, **{"model.fff_hardening": 0.5}), tokens, tokens[:2000],
                 progress=False)  # fmt: skip
    assert [t.name for t in tr.extra_losses] == ["fff_hardening"]
    tr.fit()
    assert tr.history[-1]["fff_hardening"] > 0
    plain = Trainer(nano(tmp_path / "b", max_steps=1, **soft), tokens, tokens[:2000], progress=False)
    assert plain.extra_losses == []
    with pytest.raises((ValueError, RecruitError), match="fff_hardening"):
        make_config("gpt-nano", overrides={**soft, "model.fff_mode": "hard", "model.fff_hardening": 0.5})


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False)) and lrs[-1] >= 0.1


@pytest.mark.parametrize(
    "over, match",
    [
        ({"lrr": "1"}, "valid keys"),
        ({"lr": "fast"}, "must be a number"),
        ({"max_steps": "1.5"}, "must be an int"),
        ({"precision": "fp8"}, "must be one of"),
        ({"model.n_layerz": "2"}, "valid keys"),
        ({"model.d_model": "33"}, "divisible"),
        ({"model": "gpt-huge"}, "model must be one of"),
        ({"probe_mix": "1.5"}, "probe_mix"),
    ],
)
def test_bad_config_values_are_clear_errors(over, match):
    with pytest.raises(RecruitError, match=match):
        make_config("gpt-nano", overrides=over)


def test_probe_mix_trains_on_key_retrieval_episodes(tmp_path, tokens):
    plain = Trainer(nano(tmp_path, seq_len=64), tokens, tokens[:2000], progress=False)
    mixed = Trainer(nano(tmp_path, seq_len=64, probe_mix=1.0), tokens, tokens[:2000], progress=False)
    assert type(plain.stream).__name__ == "TokenStream" and type(mixed.stream).__name__ == "ProbeMixStream"
    assert all(b"The secret key is " in bytes(row) for row in mixed.stream.batch(0)[0].tolist())


def test_seq_len_longer_than_context_is_refused(tmp_path, tokens):
    with pytest.raises(RecruitError, match="longer than the model's context"):
        Trainer(nano(tmp_path, seq_len=100), tokens, tokens[:2000], progress=False)


def _small_run(seed: int = 0):
    """A model with dropout (so the RNG state matters), batches that depend on the step alone, and a loss."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    return model, lambda step: data[(4 * step) % 64 :][:4], lambda m, x: m(x).pow(2).mean()


def test_train_steps_resumes_exactly_from_its_checkpoint(tmp_path):
    """Killed after its save at step 15, a rerun continues there and ends on the straight run's weights; once
    finished, a rerun trains nothing; a checkpoint of other settings or a corrupt one is refused."""
    straight, batch, loss_of = _small_run()
    train_steps(straight, batch, 30, 1e-2, loss_of, progress=False)
    ckpt, run = tmp_path / "run.pt", dict(progress=False, checkpoint=tmp_path / "run.pt", checkpoint_every=5)

    def killed_at_17(step):
        if step == 17:
            raise KeyboardInterrupt
        return batch(step)

    model, _, _ = _small_run()
    with pytest.raises(KeyboardInterrupt):
        train_steps(model, killed_at_17, 30, 1e-2, loss_of, meta={"arm": "a"}, **run)
    resumed, seen = _small_run(seed=5)[0], []  # other initial weights: the checkpoint's count
    train_steps(resumed, lambda step: seen.append(step) or batch(step), 30, 1e-2, loss_of, meta={"arm": "a"}, **run)
    assert seen == list(range(15, 30))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    again = _small_run(seed=6)[0]
    stale = tmp_path / ".run.pt.k9x1.tmp"  # a save that kill -9 cut short
    stale.write_bytes(b"half a checkpoint")
    train_steps(again, lambda step: pytest.fail("a finished run trained again"), 30, 1e-2, loss_of,
                meta={"arm": "a"}, **run)  # fmt: skip
    assert not stale.exists()
    assert torch.equal(again[0].weight, straight[0].weight)
    with pytest.raises(RecruitError, match="arm differ"):
        train_steps(again, batch, 30, 1e-2, loss_of, meta={"arm": "b"}, **run)
    with pytest.raises(RecruitError, match="steps differ"):
        train_steps(again, batch, 31, 1e-2, loss_of, meta={"arm": "a"}, **run)
    with pytest.raises(RecruitError, match="steps differ"):  # meta cannot stand in for the run's own steps
        train_steps(again, batch, 31, 1e-2, loss_of, meta={"arm": "a", "steps": 30}, **run)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(RecruitError, match="corrupt or truncated"):
        train_steps(again, batch, 30, 1e-2, loss_of, meta={"arm": "a"}, **run)

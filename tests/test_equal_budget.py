import dataclasses

import pytest

from recruit.benchmarks import BenchOptions, bdh_compare, bdh_memory, bdh_sparsity, fff_mlm, fff_quality


@pytest.fixture
def opts(corpus_dir):
    return BenchOptions(corpus=str(corpus_dir), device="cpu", progress=False)


def metric(recs, metric, **where):
    out = [r for r in recs if r.metric == metric and all(r.params.get(k) == v for k, v in where.items())]
    assert len(out) == 1, (metric, where, [r.case for r in out])
    return out[0].value


def test_bdh_compare_ratios_and_equal_flops(opts, tmp_path):
    cfg = dataclasses.replace(bdh_compare.QUICK, out_dir=str(tmp_path / "runs"), eval_bytes=512)
    recs = bdh_compare.run(opts, cfg)
    bdh = metric(recs, "bpb", model="bdh-nano", budget="equal-tokens", lang="de")
    gpt = metric(recs, "bpb", model="gpt-nano", budget="equal-tokens", lang="de")
    assert metric(recs, "bpb_ratio", budget="equal-tokens", lang="de") == pytest.approx(bdh / gpt)
    bdh_flops = metric(recs, "train_flops", model="bdh-nano")
    gpt_flops = metric(recs, "train_flops", model="gpt-nano", budget="equal-tokens")
    eq_flops = metric(recs, "train_flops", model="gpt-nano", budget="equal-flops")
    per_step = gpt_flops / (cfg.tokens // (cfg.seq_len * cfg.batch_size))
    assert abs(eq_flops - bdh_flops) <= per_step  # the equal-FLOPs run matches BDH's compute to one step
    assert bdh_flops > gpt_flops  # BDH does more work per token at equal parameters


def test_bdh_compare_hands_on_each_run_as_it_is_scored(opts, tmp_path, monkeypatch):
    """A run stopped in its equal-FLOPs training keeps both equal-token runs' records and their ratios."""
    cfg = dataclasses.replace(bdh_compare.QUICK, out_dir=str(tmp_path / "runs"), eval_bytes=512)
    train = bdh_compare.train_arm

    def stop_at_equal_flops(corpus, arm, *args, **kw):
        if arm.name.endswith("-eqflops"):
            raise KeyboardInterrupt
        return train(corpus, arm, *args, **kw)

    monkeypatch.setattr(bdh_compare, "train_arm", stop_at_equal_flops)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        bdh_compare.run(dataclasses.replace(opts, sink=seen.append), cfg)
    assert {(r.params["model"], r.params["budget"]) for r in seen if r.metric == "bpb"} == {
        ("bdh-nano", "equal-tokens"),
        ("gpt-nano", "equal-tokens"),
    }
    assert metric(seen, "bpb_ratio", budget="equal-tokens", lang="de") > 0


def test_bdh_compare_without_equal_flops_and_with_bdh_fields(opts, tmp_path):
    """The GPU configuration's switches: no equal-FLOPs run, BDH config fields in its run and record cases."""
    cfg = dataclasses.replace(bdh_compare.QUICK, out_dir=str(tmp_path / "runs"), eval_bytes=512, equal_flops=False,
                              bdh_args=(("impl", "fused"),))  # fmt: skip
    recs = bdh_compare.run(opts, cfg)
    assert not [r for r in recs if r.params.get("budget") == "equal-flops"]
    assert metric(recs, "bpb", model="bdh-nano", impl="fused", lang="de") > 0
    assert metric(recs, "bpb_ratio", budget="equal-tokens", lang="de") > 0
    assert list((tmp_path / "runs").glob("*/bdh-nano-lr0.003-implfused-*"))  # one run directory per corpus build
    assert bdh_compare.GPU.sizes == (("bdh-ref", "gpt-medium"),)


def test_fff_quality_three_arms(opts, tmp_path):
    cfg = dataclasses.replace(fff_quality.QUICK, out_dir=str(tmp_path / "runs"), eval_bytes=512)
    recs = fff_quality.run(opts, cfg)
    means = {ff: metric(recs, "bpb", ff=ff, lang="mean") for ff in ("dense", "fff", "none")}
    assert len(set(means.values())) == 3  # three different models were trained and scored
    assert metric(recs, "bpb_ratio", ff="fff_vs_dense", lang="mean") == pytest.approx(means["fff"] / means["dense"])
    assert metric(recs, "density", ff="fff") == pytest.approx(7 / 127)  # gpt-nano: depth 6, 127 nodes, 7 on a path
    forest = metric(recs, "bpb", ff="fff-d3k4", lang="mean")  # QUICK's forest: 4 trees of depth 3, 60 nodes
    assert forest not in means.values() and metric(recs, "density", ff="fff-d3k4") == pytest.approx(16 / 60)
    assert metric(recs, "bpb_ratio", ff="fff-d3k4_vs_dense", lang="mean") == pytest.approx(forest / means["dense"])
    with pytest.raises(ValueError, match="forests"):
        fff_quality.QualityConfig(forests=((0, 2),))
    params = {ff: metric(recs, "params", ff=ff) for ff in ("dense", "fff", "none")}
    assert params["none"] < params["dense"] and abs(params["fff"] - params["dense"]) / params["dense"] < 0.05
    flops = {ff: metric(recs, "train_flops", ff=ff) for ff in ("dense", "fff", "none")}
    assert flops["none"] < flops["fff"] < flops["dense"]  # FFF trains densely over its 127 nodes (dense: 128)
    assert (flops["dense"] - flops["fff"]) / (flops["dense"] - flops["none"]) == pytest.approx(1 / 128)


def test_bdh_sparsity_penalised_run_against_the_plain_one(opts, tmp_path):
    cfg = dataclasses.replace(bdh_sparsity.QUICK, out_dir=str(tmp_path / "runs"), eval_bytes=512, weights=(3.0,))
    recs = bdh_sparsity.run(opts, cfg)
    plain = metric(recs, "bpb", activity_l1="0", lang="mean")
    penalised = metric(recs, "bpb", activity_l1="3", lang="mean")
    assert plain != penalised  # two models were trained
    assert metric(recs, "bpb_ratio", activity_l1="3_vs_0", lang="mean") == pytest.approx(penalised / plain)
    x = [r for r in recs if r.metric == "density" and r.params["neurons"] == "x"]
    layers = [r for r in x if r.params["activity_l1"] == "0"]
    assert len(layers) == 2 + 1 and all(0 <= r.value <= 1 for r in layers)  # bdh-nano: 2 layers, and the mean
    ramped = metric(recs, "bpb", activity_l1="1", activity_warmup="0.5", lang="mean")  # QUICK's ramped run
    assert ramped not in (plain, penalised)
    ratio = metric(recs, "bpb_ratio", activity_l1="1_vs_0", activity_warmup="0.5", lang="mean")
    assert ratio == pytest.approx(ramped / plain)
    assert "activity_l1" in bdh_sparsity.section(recs) and "warm-up" in bdh_sparsity.section(recs)
    with pytest.raises(ValueError, match="weights"):
        bdh_sparsity.SparsityConfig(weights=(0.0,))
    with pytest.raises(ValueError, match="ramps"):
        bdh_sparsity.SparsityConfig(ramps=((0.5, 0.0),))


def test_bdh_memory_probes_each_model_where_it_can_read(opts, tmp_path):
    cfg = dataclasses.replace(bdh_memory.QUICK, out_dir=str(tmp_path / "runs"))
    recs = bdh_memory.run(opts, cfg)
    probes = {(r.params["model"], int(r.params["distance"])): r for r in recs if r.metric == "probe_char_acc"}
    # gpt-nano's context is 64 ids: the 4-byte probe fits (53 + 6 answer ids), the 100-byte one does not
    assert sorted(probes) == [("bdh-nano", 4), ("bdh-nano", 100), ("gpt-nano", 4)]
    assert probes["bdh-nano", 4].params["training_windows"] == "inside"
    assert probes["bdh-nano", 100].params["training_windows"] == "beyond"
    assert probes["bdh-nano", 100].params["mode"] == "recurrent" and probes["gpt-nano", 4].params["mode"] == "kv_cache"
    assert all(0 <= r.value <= 1 for r in probes.values())
    assert metric(recs, "bpb", model="bdh-nano", lang="mean") > 0
    page = bdh_memory.section(recs)
    assert "training windows" in page and "—" in page  # the GPT cannot answer at 100 bytes
    assert bdh_memory.prompt_tokens(4, 6) == 2 + 26 + 4 + 19
    with pytest.raises(ValueError, match="probe_mix"):
        bdh_memory.MemoryConfig(probe_mix=0.0)


def test_fff_mlm_three_encoders(opts, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from recruit.data.corpus import Corpus
    from recruit.data.stream import TokenStream

    cfg = dataclasses.replace(fff_mlm.QUICK, out_dir=str(tmp_path / "runs"))
    recs = fff_mlm.run(opts, cfg)
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir()) == ["dense", "fff", "none"]
    batches, batch = [], TokenStream.batch
    monkeypatch.setattr(TokenStream, "batch", lambda self, step: batches.append(step) or batch(self, step))
    again = fff_mlm.run(opts, cfg)  # every arm finished: nothing is trained again, the same figures come out
    assert not batches and [(r.case, r.metric, r.value) for r in again] == [(r.case, r.metric, r.value) for r in recs]
    monkeypatch.setattr(Corpus, "fingerprint", "another build")
    fff_mlm.run(opts, cfg)  # another corpus: trained anew, beside the first runs
    assert batches and len(list((tmp_path / "runs").iterdir())) == 6
    losses = {ff: metric(recs, "mlm_loss", ff=ff) for ff in fff_mlm.ARMS}
    assert len(set(losses.values())) == 3 and all(0 < v < 10 for v in losses.values())
    assert metric(recs, "mlm_loss_ratio", ff="fff_vs_dense") == pytest.approx(losses["fff"] / losses["dense"])
    params = {ff: metric(recs, "params", ff=ff) for ff in fff_mlm.ARMS}
    assert params["none"] < params["fff"] <= params["dense"]
    assert metric(recs, "density", ff="fff") == pytest.approx(6 / 63)  # width 64 -> depth 5: 6 of 63 nodes
    assert "fff-mlm" in fff_mlm.section(recs)


def test_mlm_masking_is_bert_like():
    import torch

    ids = torch.randint(0, 256, (64, 128))
    inputs, labels = fff_mlm.mask(ids, fff_mlm.MLMConfig(), torch.Generator().manual_seed(0))
    picked = labels != -100
    assert 0.13 < picked.float().mean() < 0.17 and (labels[picked] == ids[picked]).all()
    assert (inputs[~picked] == ids[~picked]).all()
    masked = (inputs == 256 + 4)[picked].float().mean()  # <mask> is the fifth special
    assert 0.75 < masked < 0.85


def test_run_root_keeps_runs_only_where_asked():
    """A benchmark's runs go to its out_dir, or with "" (the quick configs) to a fresh temporary directory."""
    import os

    from recruit.benchmarks.equal_budget import run_root

    assert run_root("runs/x") == "runs/x"
    a, b = run_root(""), run_root("")
    assert a != b and os.path.isdir(a) and not os.listdir(a)
    assert {q.out_dir for q in (bdh_compare.QUICK, bdh_memory.QUICK, bdh_sparsity.QUICK, fff_quality.QUICK)} == {""}

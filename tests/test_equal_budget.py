import dataclasses

import pytest

from recruit.benchmarks import BenchOptions, bdh_compare, bdh_sparsity, fff_quality


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


def test_fff_quality_three_arms(opts, tmp_path):
    cfg = dataclasses.replace(fff_quality.QUICK, out_dir=str(tmp_path / "runs"), eval_bytes=512)
    recs = fff_quality.run(opts, cfg)
    means = {ff: metric(recs, "bpb", ff=ff, lang="mean") for ff in ("dense", "fff", "none")}
    assert len(set(means.values())) == 3  # three different models were trained and scored
    assert metric(recs, "bpb_ratio", ff="fff_vs_dense", lang="mean") == pytest.approx(means["fff"] / means["dense"])
    assert metric(recs, "density", ff="fff") == pytest.approx(7 / 127)  # gpt-nano: depth 6, 127 nodes, 7 on a path
    params = {ff: metric(recs, "params", ff=ff) for ff in ("dense", "fff", "none")}
    assert params["none"] < params["dense"] and abs(params["fff"] - params["dense"]) / params["dense"] < 0.05


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
    assert "activity_l1" in bdh_sparsity.section(recs)
    with pytest.raises(ValueError, match="weights"):
        bdh_sparsity.SparsityConfig(weights=(0.0,))

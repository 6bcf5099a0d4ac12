import dataclasses

import pytest

from recruit.benchmarks import BenchOptions
from recruit.benchmarks.bdh_compare import QUICK, run
from recruit.data.corpus import prepare_corpus


def test_equal_budget_comparison_records(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    for i in range(6):
        (d / f"{i}.txt").write_text(f"Dokument {i}: der Hund läuft über die Straße. " * 30, encoding="utf-8")
    prepare_corpus(name="cmp", text=str(d), lang="de", progress=False)
    cfg = dataclasses.replace(QUICK, out_dir=str(tmp_path / "runs"), eval_bytes=512)
    recs = run(BenchOptions(corpus="cmp", device="cpu", progress=False), cfg)
    by = {(r.case, r.metric): r.value for r in recs}
    tokens = cfg.tokens
    bdh = by[(f"model=bdh-nano,budget=equal-tokens,train_tokens={tokens},split=test,lang=de", "bpb")]
    gpt = by[(f"model=gpt-nano,budget=equal-tokens,train_tokens={tokens},split=test,lang=de", "bpb")]
    assert by[("bdh-nano_vs_gpt-nano,budget=equal-tokens,split=test,lang=de", "bpb_ratio")] == pytest.approx(bdh / gpt)
    # the equal-FLOPs GPT run used (up to one step of rounding) the BDH run's training FLOPs
    eq = [r for r in recs if r.metric == "train_flops" and "equal-flops" in r.case][0].value
    bdh_flops = [r for r in recs if r.metric == "train_flops" and r.case.startswith("model=bdh")][0].value
    gpt_flops = [r for r in recs if r.metric == "train_flops" and r.case.startswith("model=gpt-nano,budget=equal-t")]
    per_step = gpt_flops[0].value / (tokens // (cfg.seq_len * cfg.batch_size))
    assert abs(eq - bdh_flops) <= per_step
    assert bdh_flops > gpt_flops[0].value  # BDH does more work per token at equal parameters

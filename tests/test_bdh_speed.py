import pytest
import torch

from recruit.benchmarks import BenchOptions, get
from recruit.benchmarks.bdh_speed import QUICK, run, section
from recruit.errors import RecruitError
from recruit.models import BDH, bdh_config
from recruit.records import Record


def test_speed_bench_records_are_consistent():
    recs = run(BenchOptions(device="cpu", quick=True, progress=False), QUICK)
    assert get("bdh-speed").run is run
    tps = {r.params["impl"]: r.value for r in recs if r.metric == "train_tokens_per_s"}
    assert set(tps) == {"reference", "fast"} and all(v > 0 for v in tps.values())
    (speedup,) = [r.value for r in recs if r.metric == "train_speedup"]
    assert speedup == pytest.approx(tps["fast"] / tps["reference"])
    for metric in ("first_step_loss", "last_step_loss"):  # same weights, batch and steps; other dropout masks
        loss = {r.params["impl"]: r.value for r in recs if r.metric == metric}
        assert loss["fast"] == pytest.approx(loss["reference"], abs=0.01)  # no gradient to the embedding: 0.06 off
    first, last = (
        {r.params["impl"]: r.value for r in recs if r.metric == m} for m in ("first_step_loss", "last_step_loss")
    )
    assert all(last[k] < first[k] for k in first)  # the steps learn the batch
    for c in QUICK.contexts:
        ms = {(r.params["method"], r.params["impl"]): r.value for r in recs
              if r.metric == "ms_per_token" and r.params["context"] == str(c)}  # fmt: skip
        assert set(ms) == {("rerun_prefix", "reference"), ("rerun_prefix", "fast"), ("recurrent", "eager")}
        (gen,) = [r.value for r in recs if r.metric == "generate_speedup" and r.params["context"] == str(c)]
        best = min(ms["rerun_prefix", "reference"], ms["rerun_prefix", "fast"])
        assert gen == pytest.approx(best / ms["recurrent", "eager"])
    states = {r.value for r in recs if r.metric == "state_bytes"}
    assert len(states) == 1  # the same state size at every context
    assert "Generation" in section(recs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_equals_eager_step():
    torch.manual_seed(0)
    model = BDH(bdh_config("bdh-nano", dropout=0.0, n_neurons=256)).cuda().eval()
    x = torch.randint(0, 288, (2, 24), device="cuda")
    eager, graphed_state = model.new_state(2), model.new_state(2)
    model.prefill(x[:, :10], eager)
    model.prefill(x[:, :10], graphed_state)
    graphed = model.cuda_graph_step(graphed_state)
    for t in range(10, 24):
        torch.testing.assert_close(graphed(x[:, t]), model.step(x[:, t], eager), rtol=1e-5, atol=1e-5)
    assert graphed_state.pos == eager.pos == 24
    for a, b in zip(graphed_state.synapses, eager.synapses, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    out = model.generate(x[:, :10], 5, greedy=True)  # CUDA graph by default on CUDA
    torch.testing.assert_close(out, model.generate(x[:, :10], 5, greedy=True, cuda_graph=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_form_equals_reference_on_cuda_in_bf16():
    torch.manual_seed(1)
    fast = BDH(bdh_config("bdh-nano", dropout=0.0, n_neurons=512)).cuda()
    ref = BDH(bdh_config("bdh-nano", dropout=0.0, n_neurons=512, impl="reference")).cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.randint(0, 288, (4, 64), device="cuda")
    exact = ref(x).float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_f, out_r = fast(x).float(), ref(x).float()
    assert (out_f - exact).abs().max() <= 2 * (out_r - exact).abs().max() + 1e-3


def test_a_failing_compiler_is_recorded_not_fatal(monkeypatch):
    import dataclasses

    from recruit.benchmarks import bdh_speed

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    recs = []
    cfg = dataclasses.replace(QUICK, compile=True)
    bdh_speed._training(cfg, torch.device("cpu"), lambda *a: recs.append(a), progress=False)
    failed = [case for case, metric, *_ in recs if metric == "failed"]
    assert len(failed) == 2 and all("compiled=1" in c for c in failed)
    assert sum(metric == "train_speedup" for _, metric, *_ in recs) == 1  # eager fast vs eager reference
    # the reference's variants first; a form's ratios come as soon as it is timed, before the next form is tried
    order = [(metric, Record("bdh-speed", case, metric, 0.0).params["impl"]) for case, metric, *_ in recs]
    first_other = next(i for i, (_, impl) in enumerate(order) if impl != "reference")
    assert first_other > 0 and all(impl != "reference" for _, impl in order[first_other:])
    assert order.index(("train_speedup", "fast")) < order.index(("failed", "fast"))


def test_a_failing_fused_form_is_recorded_not_fatal(monkeypatch):
    from recruit.benchmarks import bdh_speed

    def broken(self, v, c, s):
        raise RuntimeError("no GPU kernel here")

    monkeypatch.setattr(bdh_speed, "_impls", lambda cfg, device: ("reference", "fast", "fused"))
    monkeypatch.setattr(BDH, "_layer_fused", broken)
    recs = []
    bdh_speed._training(QUICK, torch.device("cpu"), lambda *a: recs.append(a), progress=False)
    assert [case for case, metric, *_ in recs if metric == "failed"] == [
        "model=bdh-nano,B=2,T=32,precision=fp32,impl=fused,compiled=0"
    ]
    assert sum(metric == "train_speedup" for _, metric, *_ in recs) == 1  # fast vs reference, still measured


def test_speed_bench_times_the_forms_asked_for_and_can_skip_generation():
    """``--set impls=reference,fast --set generation=false``: those forms' training, no generation records; every
    form is timed against the reference, so leaving it out is an error, as is an unknown form."""
    opts = BenchOptions(device="cpu", quick=True, progress=False, overrides={"impls": "reference", "generation": "0"})
    recs = run(opts)
    assert {r.params["impl"] for r in recs} == {"reference"}
    assert not [r for r in recs if r.metric in ("ms_per_token", "generate_speedup", "train_speedup")]
    for bad, why in (("fast", "must include 'reference'"), ("reference,turbo", "must be among")):
        with pytest.raises(RecruitError, match=why):
            run(BenchOptions(device="cpu", quick=True, progress=False, overrides={"impls": bad}))

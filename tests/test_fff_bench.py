import importlib.util
import logging

import pytest

from recruit.benchmarks import BenchOptions, get
from recruit.benchmarks.fff_speed import QUICK_CASES, run, section


def test_fff_speed_bench_records_are_consistent():
    recs = run(BenchOptions(device="cpu", quick=True, progress=False), QUICK_CASES)
    assert get("fff").run is run
    for case in QUICK_CASES:
        sel = [r for r in recs if r.params.get("B") == str(case.batch)]
        lat = {r.params["impl"]: r.value for r in sel if r.metric == "latency_ms"}
        peers = {"fastfeedforward"} if importlib.util.find_spec("fastfeedforward") and case.trees == 1 else set()
        assert set(lat) == {"dense", "cpp", "gather", "memory-floor"} | peers and all(v > 0 for v in lat.values())
        assert all(r.params["timing"] == "wall" for r in sel if r.metric in ("latency_ms", "speedup"))  # no CUDA
        (agree,) = [r for r in sel if r.metric == "tokens_agreeing_with_reference"]
        assert agree.params["impl"] == "cpp" and agree.value >= 31 / 32  # the kernel timed computes the oracle's FFF
        speed = {r.params["impl"]: r.value for r in sel if r.metric == "speedup"}
        assert speed["cpp"] == pytest.approx(lat["dense"] / lat["cpp"])
        ratio = [r.value for r in sel if r.metric == "flops_ratio"][0]
        assert ratio == pytest.approx((case.depth + 1) / 2 ** (case.depth + 1))
        shape = sel[0].params
        assert (shape["width"], shape["dense_width"]) == (str(case.nodes), str(case.dense_width))
        assert shape.get("trees", "1") == str(case.trees)
    assert any(case.trees > 1 for case in QUICK_CASES)  # a forest: 4 trees of depth 3, 60 nodes, against 64
    assert "speed-up" in section(recs)


def test_agree_counts_tokens_not_elements():
    import torch

    from recruit.benchmarks.fff_speed import _agree

    expect = torch.arange(40.0).reshape(10, 4)
    got = expect.clone()
    assert _agree(got, expect) == 1.0
    got[3, 1] += 1.0  # within 5% of the largest |output| (39): still the same function
    assert _agree(got, expect) == 1.0
    got[7] = -got[7]  # one token routed elsewhere
    assert _agree(got, expect) == pytest.approx(0.9)
    assert _agree(got[:0], expect[:0]) == 1.0


def test_cycled_graph_timing_touches_twice_the_l2(monkeypatch):
    import types

    import torch

    from recruit.benchmarks.fff_speed import SpeedCase, _calls_beyond_l2

    props = types.SimpleNamespace(L2_cache_size=50 * 2**20)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    row_pair = 2 * 4096 * 2  # a w_in and a w_out_t row in bf16
    calls = _calls_beyond_l2(SpeedCase(4096, 13, 1), torch.device("cuda"), torch.bfloat16)
    assert (calls - 1) * 14 * row_pair < 2 * props.L2_cache_size <= calls * 14 * row_pair  # the fewest that do
    assert _calls_beyond_l2(SpeedCase(4096, 13, 4096), torch.device("cuda"), torch.bfloat16) == 16  # at least 16
    assert _calls_beyond_l2(SpeedCase(64, 0, 1), torch.device("cuda"), torch.bfloat16) == 1024  # at most 1024


def test_fff_model_bench_times_three_decoders_that_differ_only_in_their_mlp():
    import torch

    from recruit.benchmarks import fff_model
    from recruit.fff.convert import ZeroFF
    from recruit.fff.fff import FastFeedForward
    from recruit.models.gpt import MLP

    shape = fff_model.QUICK_SHAPE
    models = fff_model.build_models(shape, torch.device("cpu"))
    kinds = {name: type(m.blocks[0].mlp) for name, m in models.items()}
    assert kinds == {"dense": MLP, "fff": FastFeedForward, "none": ZeroFF}
    assert models["dense"].blocks[0].mlp.fc_in.out_features == 2 ** (shape.depth + 1)
    assert models["fff"].blocks[0].mlp.config.depth == shape.depth
    dense, fff = models["dense"].state_dict(), models["fff"].state_dict()
    shared = [k for k in dense if ".mlp." not in k]
    assert shared and all(torch.equal(dense[k], fff[k]) for k in shared)  # same weights outside the MLP

    llama = fff_model.QUICK_SHAPES[1]  # a Hugging Face Llama, converted as a user converts theirs
    hf = fff_model.build_models(llama, torch.device("cpu"))
    kinds = {name: type(m.model.layers[0].mlp).__name__ for name, m in hf.items()}
    assert kinds == {"dense": "LlamaMLP", "fff": "FastFeedForward", "none": "ZeroFF"}
    assert hf["dense"].model.layers[0].mlp.up_proj.out_features == 2 ** (llama.depth + 1)
    dense, fff = hf["dense"].state_dict(), hf["fff"].state_dict()
    shared = [k for k in dense if ".mlp." not in k]
    assert shared and all(torch.equal(dense[k], fff[k]) for k in shared)
    prompt = torch.randint(0, 256, (1, 5))
    with torch.no_grad():  # the decode step rolls its token back: the cache holds the context again
        step = fff_model._decode_step(hf["fff"], prompt, prompt[:, :1])
        step()
        step()
        cached = hf["fff"](prompt[:, :1], past_key_values=step.cache, use_cache=True)
        full = hf["fff"](torch.cat([prompt, prompt[:, :1]], 1), use_cache=False)
    torch.testing.assert_close(cached.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-4)

    recs = fff_model.run(BenchOptions(device="cpu", quick=True, progress=False))
    assert get("fff-model").run is fff_model.run
    for label in (shape.label, llama.label):
        mine = [r for r in recs if r.params["model"] == label]
        for kind, metric in (("context", "decode_ms_per_token"), ("T", "prefill_ms")):
            ms = {r.params["mlp"]: r.value for r in mine if r.metric == metric and kind in r.params}
            assert set(ms) == set(fff_model.MLPS) and all(v > 0 for v in ms.values())
            speed = {r.params["mlp"]: r.value for r in mine if r.metric == "speedup" and kind in r.params}
            assert speed == pytest.approx({m: ms["dense"] / ms[m] for m in ("fff", "none")})
        assert sum(r.metric == "params" for r in mine) == 3
    html = fff_model.section(recs)
    assert html.count("<tr>") >= 7 and "fff" in html and llama.label in html
    with pytest.raises(ValueError, match="multiple of n_head"):
        fff_model.ModelShape(d_model=10, n_head=3)
    with pytest.raises(ValueError, match="positive"):
        fff_model.ModelShape(context=0)
    with pytest.raises(ValueError, match="family"):
        fff_model.ModelShape(family="bert")


def test_fff_distil_bench_scores_dense_distilled_and_dropped(corpus_dir, tmp_path, monkeypatch):
    import dataclasses

    from recruit.benchmarks import fff_distil
    from recruit.data.stream import TokenStream

    opts = BenchOptions(device="cpu", quick=True, progress=False, corpus=str(corpus_dir))
    cfg = dataclasses.replace(fff_distil.QUICK, out_dir=str(tmp_path / "runs"))
    recs = fff_distil.run(opts, cfg)
    assert get("fff-distil").run is fff_distil.run
    saved = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir())
    assert saved == ["dense", "dense+ft", "fff+ft", "fff-d3k4+ft"]
    batch = TokenStream.batch
    steps = []
    monkeypatch.setattr(TokenStream, "batch", lambda self, step: steps.append(step) or batch(self, step))
    again = fff_distil.run(opts, cfg)  # the training is done: only the recording for the distillations reads a batch
    assert steps == [0] and [(r.case, r.value) for r in again] == [(r.case, r.value) for r in recs]
    steps.clear()
    fff_distil.run(opts, dataclasses.replace(cfg, finetune_tokens=4 * 32 * 4))  # the same dense model, new fine-tunes
    assert steps.count(0) == 1 + 3 and len(list((tmp_path / "runs").iterdir())) == 7
    loss = {r.params["ff"]: r.value for r in recs if r.metric == "loss"}
    arms = {"dense", "fff", "none", "dense+ft", "fff+ft", "fff-d3k4", "fff-d3k4+ft"}  # QUICK's forest: 4 x depth 3
    assert set(loss) == arms and all(v > 0 for v in loss.values()) and len(set(loss.values())) == len(arms)
    ratio = {r.params["ff"]: r.value for r in recs if r.metric == "loss_ratio"}
    expect = {f"{arm}_vs_dense": loss[arm] / loss["dense"] for arm in ("fff", "none", "fff-d3k4")}
    expect |= {f"{arm}+ft_vs_dense+ft": loss[f"{arm}+ft"] / loss["dense+ft"] for arm in ("fff", "fff-d3k4")}
    assert ratio == pytest.approx(expect)
    for ff in ("fff", "fff-d3k4"):
        errors = {(r.params["layer"], r.params["stage"]): r.value for r in recs
                  if r.metric == "rel_error" and r.params["ff"] == ff}  # fmt: skip
        assert set(errors) == {("0", "before"), ("0", "after")} and errors[("0", "after")] < errors[("0", "before")]
    assert [r.params.get("trees") for r in recs if r.metric == "density"] == [None, "4"]
    assert "fff-distil" in fff_distil.section(recs)
    seen = []  # a run stopped in its fine-tuning has already handed on everything measured before it
    train = fff_distil.train_steps

    def stop_at_finetuning(*args, **kw):
        if args[-1].endswith("+ft"):
            raise KeyboardInterrupt
        return train(*args, **kw)

    monkeypatch.setattr(fff_distil, "train_steps", stop_at_finetuning)
    with pytest.raises(KeyboardInterrupt):
        fff_distil.run(dataclasses.replace(opts, sink=seen.append), cfg)
    before = [(r.case, r.value) for r in recs if "+ft" not in r.case]
    assert [(r.case, r.value) for r in seen] == before and len(before) == 13  # 3 + 5 per distilled shape
    with pytest.raises(ValueError, match="forests"):
        fff_distil.DistilConfig(forests=((2, 0),))


def test_tuned_records_are_the_picks_timed_again(monkeypatch):
    """``triton-tuned`` is the sweep's fastest launch timed again beside the dense FF: its latency and speed-up come
    from that second pass, not from the sweep's minimum (biased low by the pick), which stays a record of its own."""
    from recruit.benchmarks import fff_speed

    sweep = {"dense": 0.08, "fff": 0.0080, "triton:default": 0.0080, "triton:pairs1": 0.0070}
    result = fff_speed.CaseResult(
        {"wall": {"dense": 0.1, "fff": 0.05}, "cuda_graph": dict(sweep), "cuda_graph_cycled": dict(sweep)},
        1.0,
        {"cuda_graph": ("pairs1", 0.0075, 0.078), "cuda_graph_cycled": ("pairs1", 0.0078, 0.0741)},
    )
    monkeypatch.setattr(fff_speed, "measure_case", lambda *args, **kwargs: result)
    recs = run(BenchOptions(device="cpu", quick=True, progress=False), QUICK_CASES[:1])
    keys = ("timing", "impl", "launch", "pass")
    by_case = {(*(r.params.get(k) for k in keys), r.metric): r.value for r in recs if "impl" in r.params}
    for timing, (launch, tuned_ms, dense_ms) in result.tuned.items():
        assert by_case[(timing, "triton-tuned", launch, None, "latency_ms")] == tuned_ms
        assert by_case[(timing, "triton-tuned", launch, None, "speedup")] == pytest.approx(dense_ms / tuned_ms)
        assert by_case[(timing, "dense", None, "tuned", "latency_ms")] == dense_ms
        assert by_case[(timing, "triton", "pairs1", None, "latency_ms")] == 0.0070  # the sweep's own timing
    assert not any(impl == "triton-tuned" for timing, impl, *_ in by_case if timing == "wall")


def test_time_pick_times_the_fastest_launch_again_beside_dense():
    from recruit.benchmarks.fff_speed import _time_pick

    fns = {"dense": "D", "fff": "F", "triton:default": "A", "triton:pairs1": "B", "triton:spec1": "C"}
    seen = []

    def time(pair):  # a second pass that finds other times than the sweep's
        seen.append(pair)
        return {"dense": 0.09, "tuned": 0.0085}

    sweep = {"dense": 0.08, "fff": 0.0080, "triton:default": 0.0080, "triton:pairs1": 0.0070, "triton:spec1": 0.0072}
    assert _time_pick(sweep, fns, time) == ("pairs1", 0.0085, 0.09)
    assert seen == [{"dense": "D", "tuned": "B"}]
    assert _time_pick({"dense": 0.08, "fff": 0.008}, fns, time) is None and len(seen) == 1  # no sweep: no pass


@pytest.mark.gpu
@pytest.mark.parametrize("skip", [(), ("prefetch",)])
def test_sweep_times_its_pick_again_on_cuda(monkeypatch, skip):
    import torch

    from recruit.benchmarks import fff_speed

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    launches = [{}, dict(block_d=64), dict(blocked=4), dict(blocked=4, prefetch=1)]  # weights laid out for the last 2
    monkeypatch.setattr(fff_speed, "_launches", lambda small, depth: launches)
    case = fff_speed.SpeedCase(256, 7, 1)
    result = fff_speed.measure_case(case, torch.device("cuda"), torch.bfloat16, repeats=3, gather=False, tune=True,
                                    skip=skip)  # fmt: skip
    assert set(result.tuned) == {"cuda_graph", "cuda_graph_cycled"}
    for timing, (launch, tuned_ms, dense_ms) in result.tuned.items():
        sweep = {k.split(":", 1)[1]: v for k, v in result.ms[timing].items() if k.startswith("triton:")}
        labels = {"default", "block_d64", "blocked4", "blocked4-prefetch1"}  # each agreed with the default
        assert set(sweep) == {label for label in labels if not any(word in label for word in skip)}
        assert launch == min(sweep, key=sweep.get) and tuned_ms > 0 and dense_ms > 0


def test_sweep_skips_the_launches_named_on_the_command_line():
    """``--set skip=prefetch`` (a comma-separated list) leaves out the sweep's launches whose label holds a word."""
    from recruit.benchmarks import fff_speed
    from recruit.benchmarks.fff_speed import Selection, _label, _launches, _sweep

    select = fff_speed.configure(BenchOptions(overrides={"skip": "prefetch,split"}), Selection(), "fff")
    assert select.skip == ("prefetch", "split")
    every = [_label(launch) for launch in _launches(True, 13)]
    kept = [_label(launch) for launch in _sweep(True, 13, select.skip)]
    assert any("prefetch" in label for label in every) and any("split" in label for label in every)
    assert kept == [label for label in every if "prefetch" not in label and "split" not in label]
    assert _sweep(True, 13) == _launches(True, 13)


def test_a_bounded_sweep_starts_no_launch_past_its_budget(caplog):
    from recruit.benchmarks.fff_speed import Selection, _budgeted

    ticks = iter(range(0, 1000, 10))  # a clock that advances 10 s a reading
    launches = [{}, dict(blocked=4), dict(pairs=1), dict(spec=3), dict(split=3)]
    with caplog.at_level(logging.WARNING, logger="recruit"):
        tried = list(_budgeted(launches, 25.0, clock=lambda: next(ticks)))
    assert tried == launches[:2]  # started at 10 and 20 s; at 30 s the budget of 25 is spent
    assert "3 of 5 launches left untried" in caplog.text
    assert list(_budgeted(launches, 0.0, clock=lambda: next(ticks))) == launches  # 0: no limit
    with pytest.raises(ValueError, match="sweep_s must be at least 0"):
        Selection(sweep_s=-1.0)

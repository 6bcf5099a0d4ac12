import argparse
import json

import pytest
import torch

from recruit import benchmarks
from recruit.benchmarks import BenchOptions
from recruit.benchmarks.bdh import BDHBenchConfig, run, section
from recruit.cli_bdh import add_bdh_parser, bdh_train_config
from recruit.data.tokenizer import ByteTokenizer
from recruit.errors import RecruitError
from recruit.models import BDH, GPT, bdh_config, gpt_config, load_model


def nano(**kw) -> BDH:
    torch.manual_seed(0)
    return BDH(bdh_config("bdh-nano", dropout=0.0, **kw)).eval()


# ---- the benchmark --------------------------------------------------------------------------------
TINY = BDHBenchConfig(
    bdh_preset="bdh-nano",
    gpt_preset="gpt-nano",
    contexts=(64, 512),
    warmup=1,
    repeats=3,
    seq_len=48,
    density_windows=2,
    probe_distances=(8, 300),
    probes=2,
    bpb_max_bytes=600,
)


def test_bench_is_registered_and_measures_what_it_says(corpus_dir):
    assert benchmarks.get("bdh").in_report is False
    recs = run(BenchOptions(corpus=str(corpus_dir), progress=False), TINY)
    by = {(r.case, r.metric): r.value for r in recs}
    for model, mode in (("bdh-nano", "recurrent"), ("gpt-nano", "kv_cache")):
        for c in TINY.contexts:
            case = f"model={model},init=random,mode={mode},context={c},fill=random"
            assert by[(case, "decode_ms_per_token")] > 0
            assert (case, "latency_ratio_vs_64") in by
    state = [
        by[(f"model=bdh-nano,init=random,mode=recurrent,context={c},fill=random", "state_bytes")] for c in (64, 512)
    ]
    kv = [by[(f"model=gpt-nano,init=random,mode=kv_cache,context={c},fill=random", "kv_bytes")] for c in (64, 512)]
    assert state[0] == state[1] == 2 * 2 * 64 * 32 * 4  # L·h·N·d fp32, constant
    assert kv == [c * 2 * 2 * 2 * 16 * 4 for c in (64, 512)]  # tokens · K,V · L · Hkv · hd · fp32
    dens = [r for r in recs if r.metric.startswith("density_")]
    assert len(dens) == 3 * 3 and all(0 <= r.value <= 1 and "init=random" in r.case for r in dens)
    diffs = [r.value for r in recs if r.metric == "recurrent_max_abs_diff"]
    assert len(diffs) == 2 and max(diffs) <= 1e-4
    assert not any(r.metric in ("bpb", "probe_exact") for r in recs)  # no checkpoint: no quality figures
    page = section(recs)
    assert page.count("<img") == 3 and "recurrent_max_abs_diff" in page


def test_bench_with_a_checkpoint_scores_quality_and_recall(corpus_dir, tmp_path):
    nano().save_pretrained(tmp_path / "bdh")
    recs = run(BenchOptions(model=str(tmp_path / "bdh"), corpus=str(corpus_dir), progress=False), TINY)
    bpb = {r.params["lang"]: r.value for r in recs if r.metric == "bpb"}
    assert sorted(bpb) == ["de", "en", "fr"] and all(7 < v < 10 for v in bpb.values())  # untrained: ~log2(288)
    probes = [r for r in recs if r.metric == "probe_char_acc"]
    assert sorted(int(r.params["distance"]) for r in probes) == [8, 300] and all(0 <= r.value <= 1 for r in probes)
    assert all("init=checkpoint" in r.case for r in recs if r.metric.startswith("density"))
    GPT(gpt_config("gpt-nano")).save_pretrained(tmp_path / "gpt")
    with pytest.raises(RecruitError, match="holds a recruit-gpt model, not BDH"):
        run(BenchOptions(model=str(tmp_path / "gpt"), corpus=str(corpus_dir), progress=False), TINY)


# ---- the CLI --------------------------------------------------------------------------------------
def parse(*argv):
    parser = argparse.ArgumentParser(prog="recruit")
    add_bdh_parser(parser.add_subparsers(dest="command"))
    args, extra = parser.parse_known_args(["bdh", *argv])
    args.overrides = extra
    return args


@pytest.mark.parametrize("action", [[], ["train"], ["generate"], ["inspect"]], ids=str)
def test_every_action_has_help(action, capsys):
    with pytest.raises(SystemExit) as e:
        parse(*action, "--help")
    assert e.value.code == 0 and "usage: recruit bdh" in capsys.readouterr().out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    nano().save_pretrained(d / "bdh")
    GPT(gpt_config("gpt-nano")).save_pretrained(d / "gpt")
    (d / "bad.txt").write_bytes(b"caf\xe9 au lait")  # Latin-1, not UTF-8
    (d / "empty.txt").write_bytes(b"")
    return d


@pytest.mark.parametrize(
    "argv, message",
    [
        (["gpt", "--prompt", "hello"], "holds a recruit-gpt model, not BDH"),
        (["bdh", "--prompt", ""], "the prompt is empty"),
        (["bdh", "--prompt-file", "empty.txt"], "the prompt is empty"),
        (["bdh", "--prompt-file", "bad.txt"], r"not valid UTF-8 \(byte 0xe9 at offset 3\)"),
        (["bdh", "--prompt", "caf\udce9"], "not valid UTF-8"),
        (["bdh", "--prompt-file", "missing.txt"], "cannot read the prompt file"),
        (["nowhere", "--prompt", "hi"], "no checkpoint directory"),
    ],
)
def test_generate_rejects_bad_input(checkpoints, argv, message):
    first, *rest = argv
    rest = [str(checkpoints / a) if a.endswith(".txt") else a for a in rest]
    args = parse("generate", str(checkpoints / first), *rest)
    with pytest.raises(RecruitError, match=message):
        args.fn(args)


def test_a_damaged_training_log_adds_no_density_records(tmp_path, caplog):
    from recruit.benchmarks.bdh import density_over_training

    (tmp_path / "final").mkdir()
    log = tmp_path / "log.csv"
    found = []
    log.write_text("step,tokens,density_x,density_y,density_xy\n10,640,0.5,0.4,0.2\n20,1280,0.3,0.2,0.1\n")
    density_over_training(tmp_path / "final", lambda *rec: found.append(rec))
    assert [r[2] for r in found if r[1] == "train_density_x"] == [0.5, 0.3]
    found.clear()
    for damaged in (b"step,density_x\n10,0.5\n20,half\n", b"step,density_x\n10,\xff\n"):
        log.write_bytes(damaged)
        density_over_training(tmp_path / "final", lambda *rec: found.append(rec))
        assert not found and "not a readable training log" in caplog.text


def test_generate_options_are_checked_by_the_parser(checkpoints, capsys):
    for option, value in (("--max-new-tokens", "0"), ("--chunk", "0"), ("--top-k", "0"), ("--temperature", "nan")):
        with pytest.raises(SystemExit) as e:
            parse("generate", str(checkpoints / "bdh"), "--prompt", "hi", option, value)
        assert e.value.code == 2 and f"argument {option}: must be" in capsys.readouterr().err


def test_generate_continues_the_prompt_greedily(checkpoints, capsys):
    args = parse("generate", str(checkpoints / "bdh"), "--prompt", "Hello", "--greedy", "--max-new-tokens", "5")
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    model = load_model(checkpoints / "bdh")
    tok = ByteTokenizer()
    ids = torch.tensor([[tok.lang_id("en"), tok.kind_id("manual"), *b"Hello"]])
    assert out == tok.decode(model.generate(ids, 5, greedy=True)[0, 2:].tolist()) + "\n"


def test_inspect_prints_and_writes_records(checkpoints, corpus_dir, tmp_path, capsys):
    args = parse(
        "inspect",
        str(checkpoints / "bdh"),
        "--corpus",
        str(corpus_dir),
        "--out",
        str(tmp_path),
        "-q",
        "--seq-len",
        "32",
        "--max-windows",
        "2",
        "--chunks",
        "4",
        "--top",
        "2",
    )
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert "language neurons" in out and "neuron graph" in out and "currency concept" in out
    recs = [json.loads(line) for line in (tmp_path / "bdh_inspect.jsonl").read_text().splitlines()]
    metrics = {r["metric"] for r in recs}
    assert {"density_x", "density_y", "lang_neuron_effect", "graph_out_max", "graph_in_ccdf_slope"} <= metrics
    assert sum(r["metric"] == "concept_effect_heldout" for r in recs) == 2 * 2  # neurons and synapses, top 2
    ccdf = [r["value"] for r in recs if r["metric"] == "graph_ccdf" and "direction=out" in r["case"]]
    assert ccdf[0] <= 1 and ccdf == sorted(ccdf, reverse=True)  # a CCDF falls with the degree
    assert sum(r["metric"] == "lang_neuron_effect" for r in recs) == 3 * 2
    with pytest.raises(RecruitError, match="not BDH"):
        bad = parse("inspect", str(checkpoints / "gpt"), "--corpus", str(corpus_dir))
        bad.fn(bad)


def test_train_config_and_a_two_step_run(corpus_dir, tmp_path):
    cfg = bdh_train_config("bdh-tiny", None, {})
    assert (cfg.model, cfg.lr, cfg.out_dir) == ("bdh-tiny", 3e-3, "runs/bdh-tiny")  # measured better than 1e-3
    assert bdh_train_config("bdh-ref", None, {}).lr == 1e-3  # the paper's, where nothing was measured
    assert bdh_train_config("bdh-tiny", {"lr": 2e-3}, {"weight_decay": "0"}).lr == 2e-3  # a file's field wins
    with pytest.raises(RecruitError, match="not a BDH preset"):
        bdh_train_config("bdh-tiny", None, {"model": "gpt-tiny"})
    with pytest.raises(RecruitError, match="unknown BDH preset"):
        bdh_train_config("bdh-huge", None, {})
    out = tmp_path / "run"
    args = parse(
        "train",
        "--preset",
        "bdh-nano",
        "-q",
        "--corpus",
        str(corpus_dir),
        "--out_dir",
        str(out),
        "--max_steps",
        "2",
        "--batch_size",
        "2",
        "--seq_len",
        "32",
        "--eval_every",
        "2",
        "--eval_windows",
        "1",
        "--model.n_layer",
        "1",
    )
    assert args.fn(args) == 0
    model = load_model(out / "final")
    assert isinstance(model, BDH) and model.config.n_layer == 1


def test_density_over_training_comes_from_the_run_log(tmp_path):
    from recruit.benchmarks.bdh import density_over_training

    (tmp_path / "final").mkdir()
    (tmp_path / "log.csv").write_text(
        "step,loss,tokens,density_x,density_xy,density_y\n5,3.0,160,,,\n10,2.5,320,0.4,0.1,0.3\n20,2.0,640,0.3,0.05,0.2\n"
    )
    got = []
    density_over_training(tmp_path / "final", lambda case, metric, value, unit: got.append((case, metric, value)))
    assert ("split=val,step=10,tokens=320", "train_density_x", 0.4) in got
    assert len(got) == 6  # two evaluations x three densities; the row without an evaluation is skipped
    density_over_training(tmp_path / "elsewhere", lambda *a: got.append(a))  # no log: nothing
    assert len(got) == 6

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recruit.cli import build_parser, main
from recruit.records import Record, read_records, write_records

SUBCOMMANDS = [
    ["data"],
    ["data", "prepare"],
    ["data", "info"],
    ["train"],
    ["eval"],
    ["generate"],
    ["bench"],
    ["report"],
]
TEXT = {
    "a.txt": "Der schnelle braune Fuchs springt über den faulen Hund. " * 40,
    "b.txt": "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. " * 40,
    "c.md": "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg. " * 40,
    "d.txt": "Fix, Schwyz! quäkt Jürgen blöd vom Paß. " * 60,
}


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: recruit" in capsys.readouterr().out


def _parsers(parser, path=("recruit",)):
    """Every (sub)command's parser, with the words that name it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_is_explained_with_its_default():
    parsers = dict(_parsers(build_parser()))
    assert ("recruit", "bdh", "inspect") in parsers and ("recruit", "fff", "convert") in parsers
    for path, parser in parsers.items():
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                assert action.help, f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}: no help"
        text = parser.format_help()
        for markup in ("``", ":func:", ":class:", ":meth:"):
            assert markup not in text, f"{' '.join(path)} --help shows {markup!r}"
        indented = [line for line in (parser.description or "").splitlines() if line.startswith("    ")]
        assert not indented, f"{' '.join(path)} --help shows the docstring's indentation: {indented[0]!r}"
    generate = parsers[("recruit", "generate")].format_help()
    for default in ("200", "0.8", "0"):  # --max-new-tokens, --temperature, --seed
        assert f"(default: {default})" in generate
    assert "(default: None)" not in generate and "(default: False)" not in generate


def test_parser_lists_all_commands():
    text = build_parser().format_help()
    for name in ("data", "train", "eval", "generate", "bench", "report"):
        assert name in text


def test_train_help_lists_every_training_field(capsys):
    import dataclasses

    from recruit.train import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    listed = capsys.readouterr().out.split("Fields:")[1].split(".")[0].replace("\n", " ")
    assert sorted(f.strip() for f in listed.split(",")) == sorted(f.name for f in dataclasses.fields(TrainConfig))


@pytest.fixture
def text_corpus(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    for name, body in TEXT.items():
        (d / name).write_text(body, encoding="utf-8")
    assert main(["data", "prepare", "--text", str(d), "--lang", "de", "--name", "mini", "-q"]) == 0
    return "mini"


def run_cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "recruit", *args], capture_output=True, text=True, env=env, **kw)


def test_missing_corpus_is_one_line_error(tmp_path):
    r = run_cli("train", "--preset", "gpt-nano", "--corpus", "nothing-here", "--out_dir", str(tmp_path / "r"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: no corpus") and "Traceback" not in r.stderr


@pytest.mark.parametrize("bad", ["empty", "binary"])
def test_bad_text_is_one_line_error(tmp_path, bad):
    f = tmp_path / "in.txt"
    f.write_bytes(b"" if bad == "empty" else b"\x00\x01\x02\xff" * 100)
    r = run_cli("data", "prepare", "--text", str(f), "--name", "bad", "-q")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_unknown_config_key_is_one_line_error(text_corpus, tmp_path):
    r = run_cli("train", "--preset", "gpt-nano", "--corpus", text_corpus, "--lrate", "1")
    assert r.returncode == 2 and "valid keys" in r.stderr and "Traceback" not in r.stderr
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": "gpt-nano", "batch_size": "many"}))
    r = run_cli("train", "--config", str(cfg), "--corpus", text_corpus)
    assert r.returncode == 2 and "must be an int" in r.stderr


def test_sigkill_then_resume_ends_on_same_weights(text_corpus, tmp_path):
    args = [
        "train",
        "--preset",
        "gpt-nano",
        "--corpus",
        text_corpus,
        "--max_steps",
        "240",  # enough steps after the first checkpoint that the kill lands mid-run on a fast machine
        "--ckpt_every",
        "3",
        "--eval_every",
        "30",
        "--threads",
        "1",
        "-q",
    ]
    ok = run_cli(*args, "--out_dir", str(tmp_path / "straight"), timeout=300)
    assert ok.returncode == 0, ok.stderr

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recruit", *args, "--out_dir", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (out / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.1)  # a few steps on: likely mid-step or mid-checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    again = run_cli(*args, "--out_dir", str(out), timeout=300)
    assert again.returncode == 0, again.stderr

    a = load_file(str(tmp_path / "straight/final/model.safetensors"))
    b = load_file(str(out / "final/model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_train_eval_generate_bench_report(text_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            ["train", "--preset", "gpt-nano", "--corpus", text_corpus, "--out_dir", str(out), "-q", "--max_steps", "30"]
        )
        == 0
    )
    model = str(out / "final")
    capsys.readouterr()
    assert main(["eval", model, "--corpus", text_corpus, "--max-bytes", "2000"]) == 0
    scores = capsys.readouterr().out
    assert "de" in scores
    assert main(["eval", model, "--corpus", text_corpus, "--max-bytes", "2000", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == scores  # auto is the CPU here
    assert main(["generate", model, "--prompt", "Der", "--max-new-tokens", "10", "--lang", "de"]) == 0
    assert capsys.readouterr().out.startswith("Der")
    assert main(["generate", model, "--prompt", ""]) == 2
    capsys.readouterr()
    said = f"training run directory, not a model checkpoint: its model is {out / 'final'}"
    for cmd in (["eval", str(out)], ["fff", "convert", str(out), "--out", str(tmp_path / "c")]):  # the run, not final/
        assert main([*cmd, "--corpus", text_corpus]) == 2
        assert said in capsys.readouterr().err
    assert (
        main(
            [
                "bench",
                "baseline",
                "--model",
                model,
                "--corpus",
                text_corpus,
                "--out",
                str(tmp_path / "res"),
                "--quick",
                "-q",
            ]
        )
        == 0
    )
    recs = [json.loads(line) for line in (tmp_path / "res/baseline.jsonl").read_text().splitlines()]
    metrics = {r["metric"] for r in recs}
    assert {"bpb", "params", "flops_per_token", "prefill_ms", "decode_ms_per_token", "kv_bytes_per_token"} <= metrics
    assert all(set(r) == {"bench", "case", "metric", "value", "unit", "env"} for r in recs)


def test_report_on_shipped_checkpoint(text_corpus, tmp_path, capsys):
    pytest.importorskip("recruit.checkpoints")
    from recruit import checkpoints

    if not checkpoints.shipped():
        pytest.skip("no shipped checkpoint in this tree")
    out = tmp_path / "rep"
    assert main(["report", "--corpus", text_corpus, "--out", str(out), "--quick", "-q"]) == 0
    html = (out / "index.html").read_text()
    assert "<img" in html and "bits per byte" in html
    lines = (out / "results.jsonl").read_text().splitlines()
    assert any(json.loads(line)["metric"] == "bpb" for line in lines)
    curve = [r for r in map(json.loads, lines) if r["metric"] == "train_val_bits_per_token"]  # the shipped log's
    assert curve and all(r["unit"] == "bits/token" and 1 < r["value"] < 8 for r in curve)
    assert "bpb" in capsys.readouterr().out
    assert not list(Path(out).glob(".*.tmp"))


def test_fff_convert_cli(text_corpus, tmp_path, capsys):
    from recruit.models import GPT, gpt_config, load_model

    GPT(gpt_config("gpt-nano")).save_pretrained(tmp_path / "dense")
    args = ["fff", "convert", str(tmp_path / "dense"), "--out", str(tmp_path / "fff"), "--corpus", text_corpus,
            "--depth", "3", "--steps", "5", "--windows", "2", "--max-bytes", "500", "-q"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "layer 1: relative error" in out and "fff bpb" in out
    m = load_model(tmp_path / "fff")
    assert m.config.mlp == "fff" and m.config.fff_depth == 3
    assert main(["fff", "convert", str(tmp_path / "fff"), "--out", str(tmp_path / "x"), "--corpus", text_corpus]) == 2
    tuned = [*args[:4], str(tmp_path / "tuned"), *args[5:], "--finetune-tokens", "4096", "--finetune-lr", "1e-3"]
    assert main(tuned) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["lang"])
    assert lines[header].split() == ["lang", "dense", "bpb", "fff", "bpb", "fff+ft", "bpb"]
    assert lines[header + 1].split()[0] == "de" and len(lines[header + 1].split()) == 4
    assert load_model(tmp_path / "tuned").config.mlp == "fff"
    recs = read_records(tmp_path / "tuned" / "fff-convert.jsonl")
    assert {r.params["ff"] for r in recs} == {"dense", "fff", "fff+ft"} and all(r.metric == "bpb" for r in recs)
    assert {r.params["lang"] for r in recs} == {"de"} and recs[0].params["finetune_tokens"] == "4096"
    with pytest.raises(SystemExit) as refused:  # by argparse, before any work
        main([*args[:4], str(tmp_path / "y"), *args[5:], "--finetune-lr", "0"])
    assert refused.value.code == 2 and not (tmp_path / "y").exists()
    assert "--finetune-lr: must be positive" in capsys.readouterr().err
    assert not (tmp_path / "tuned" / "finetune-ckpt.pt").exists()  # gone once the model is saved


def test_fff_convert_resumes_its_fine_tuning(text_corpus, tmp_path, monkeypatch, capsys):
    """Stopped after the fine-tuning (here while printing), the same command trains no step again; the checkpoint
    of a run on another model is refused."""
    import recruit.cli_fff
    import recruit.train
    from recruit.models import GPT, gpt_config

    GPT(gpt_config("gpt-nano")).save_pretrained(tmp_path / "dense")
    args = ["fff", "convert", str(tmp_path / "dense"), "--out", str(tmp_path / "fff"), "--corpus", text_corpus,
            "--depth", "3", "--steps", "5", "--windows", "2", "--max-bytes", "500", "--finetune-tokens", "4096",
            "-q"]  # fmt: skip
    printing = recruit.cli_fff._print_scores

    def stop(scores):
        raise KeyboardInterrupt

    monkeypatch.setattr(recruit.cli_fff, "_print_scores", stop)
    assert main(args) == 130
    assert (tmp_path / "fff" / "finetune-ckpt.pt").exists() and not (tmp_path / "fff" / "config.json").exists()
    monkeypatch.setattr(recruit.cli_fff, "_print_scores", printing)
    steps, loss = [], recruit.train.lm_loss
    monkeypatch.setattr(recruit.train, "lm_loss", lambda *a: steps.append(1) or loss(*a))
    assert main(args) == 0
    assert not steps and (tmp_path / "fff" / "config.json").exists()
    assert not (tmp_path / "fff" / "finetune-ckpt.pt").exists()

    monkeypatch.setattr(recruit.cli_fff, "_print_scores", stop)
    assert main(args) == 130 and steps  # a new fine-tuning, stopped again
    monkeypatch.setattr(recruit.cli_fff, "_print_scores", printing)
    GPT(gpt_config("gpt-nano")).save_pretrained(tmp_path / "dense")  # another model at the same path
    assert main(args) == 2 and "model_files differ" in capsys.readouterr().err


def test_fff_train_and_bench_cli(text_corpus, tmp_path, capsys):
    from recruit.models import load_model

    run = tmp_path / "run"
    args = ["fff", "train", "--preset", "gpt-nano", "--corpus", text_corpus, "--out_dir", str(run),
            "--max_steps", "2", "--model.fff_depth", "2", "-q"]  # fmt: skip
    assert main(args) == 0
    m = load_model(run / "final")
    assert m.config.mlp == "fff" and m.config.fff_depth == 2
    assert main(["fff", "bench", "--quick", "--device", "cpu", "--out", str(tmp_path / "res"), "-q"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "res/fff.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in recs} >= {"latency_ms", "speedup"}
    assert main(["fff", "train", "--preset", "gpt-nano", "--model.fff_mode", "both", "--corpus", text_corpus]) == 2
    assert "fff_mode" in capsys.readouterr().err


def test_bench_set_changes_config_fields(text_corpus, tmp_path, capsys):
    """``--set FIELD=VALUE`` reaches the benchmark's config (typed); bad fields are one-line errors."""
    out = tmp_path / "res"
    args = ["bench", "bdh-compare", "--corpus", text_corpus, "--out", str(out), "--quick", "-q",
            "--set", "equal_flops=false", "--set", f"out_dir={tmp_path / 'runs'}", "--set", "eval_bytes=512",
            "--set", 'bdh_args=[["impl", "fused"]]']  # fmt: skip
    assert main(args) == 0
    recs = read_records(out / "bdh-compare.jsonl")
    assert read_records(out / "bdh-compare.jsonl") and not (out / "bdh-compare.partial.jsonl").exists()
    assert not [r for r in recs if r.params.get("budget") == "equal-flops"]
    assert {r.params.get("impl") for r in recs if r.params.get("model") == "bdh-nano"} == {"fused"}
    capsys.readouterr()
    for bad, why in ((["--set", "tokens=many"], "must be an int"), (["--set", "speed=9"], "valid keys"),
                     (["--set", "tokens"], "FIELD=VALUE")):  # fmt: skip
        assert main(["bench", "bdh-compare", "--corpus", text_corpus, "--quick", "-q", *bad]) == 2
        assert why in capsys.readouterr().err
    assert main(["bench", "baseline", "--quick", "-q", "--set", "hidden=8"]) == 2
    assert "takes no --set" in capsys.readouterr().err


def test_bench_fff_set_selects_cases(tmp_path, capsys):
    """``recruit bench fff --set batches=...`` times only those cases; a selection that matches none is an error."""
    out = tmp_path / "res"
    assert main(["bench", "fff", "--quick", "-q", "--out", str(out), "--set", "batches=1,5"]) == 0
    recs = read_records(out / "fff.jsonl")
    assert recs and {r.params["B"] for r in recs} == {"1", "5"}
    capsys.readouterr()
    assert main(["bench", "fff", "--quick", "-q", "--set", "hidden=4096"]) == 2
    assert "no fff case has hidden in (4096,)" in capsys.readouterr().err


def _register_bench(monkeypatch, run) -> None:
    from recruit import benchmarks

    benchmarks.all_benches()  # the real ones first, so that the fake one is not replaced by a later import
    monkeypatch.setitem(benchmarks.BENCHES, "fake", benchmarks.Bench("fake", run))


def test_bench_keeps_the_records_of_a_run_that_stops(tmp_path, monkeypatch, capsys):
    """Each record reaches NAME.partial.jsonl as it is measured; a run that fails leaves them there, not NAME.jsonl."""
    from recruit.records import Record

    out = tmp_path / "res"
    seen_during_run = []

    def run(opts):
        if opts.overrides.get("broken"):
            raise RuntimeError("no device")
        recs = opts.recorder()
        recs.add(Record("fake", "case=a", "latency_ms", 1.5, "ms"))
        recs.extend([Record("fake", "case=b", "latency_ms", 2.5, "ms")])
        seen_during_run.extend(read_records(out / "fake.partial.jsonl"))
        if opts.overrides.get("fail"):
            raise RuntimeError("out of memory")
        return recs.records

    _register_bench(monkeypatch, run)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["bench", "fake", "-q", "--out", str(out), "--set", "fail=1"])
    assert [r.case for r in seen_during_run] == ["case=a", "case=b"]
    assert [r.value for r in read_records(out / "fake.partial.jsonl")] == [1.5, 2.5]
    assert not (out / "fake.jsonl").exists()
    assert f"the 2 records it had measured are in {out / 'fake.partial.jsonl'}" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="no device"):  # a run that measures nothing keeps the earlier run's file
        main(["bench", "fake", "-q", "--out", str(out), "--set", "broken=1"])  # and says whose it is
    assert len(read_records(out / "fake.partial.jsonl")) == 2
    assert f"before measuring anything; {out / 'fake.partial.jsonl'} is an earlier run's" in capsys.readouterr().err

    assert main(["bench", "fake", "-q", "--out", str(out)]) == 0
    assert [r.case for r in read_records(out / "fake.jsonl")] == ["case=a", "case=b"]
    assert not (out / "fake.partial.jsonl").exists()


def test_bench_records_survive_sigkill(tmp_path):
    """A benchmark killed mid-run (a device time limit, the OOM killer) leaves the records measured before it."""
    out, started = tmp_path / "res", tmp_path / "started"
    script = f"""
import time
from recruit import benchmarks
from recruit.cli import main
from recruit.records import Record

def run(opts):
    recs = opts.recorder()
    recs.add(Record("slow", "case=first", "latency_ms", 3.0, "ms"))
    open({str(started)!r}, "w").close()
    time.sleep(120)
    return recs.records

benchmarks.all_benches()
benchmarks.register(benchmarks.Bench("slow", run))
main(["bench", "slow", "-q", "--out", {str(out)!r}])
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert started.exists(), "the benchmark never started"
    assert [(r.case, r.value) for r in read_records(out / "slow.partial.jsonl")] == [("case=first", 3.0)]
    assert not (out / "slow.jsonl").exists()


def test_sigterm_unwinds_like_ctrl_c(tmp_path, monkeypatch, capsys):
    """SIGTERM mid-write: status 143, no temporary file left behind, the records measured so far kept."""
    from recruit.io import atomic_open
    from recruit.records import Record

    out = tmp_path / "res"

    def run(opts):
        opts.recorder().add(Record("fake", "case=a", "latency_ms", 1.5, "ms"))
        with atomic_open(tmp_path / "half.txt") as f:
            f.write("half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        return []

    _register_bench(monkeypatch, run)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["bench", "fake", "-q", "--out", str(out)]) == 143
    assert "terminated" in capsys.readouterr().err
    assert not list(tmp_path.glob(".half.txt.*")) and not (tmp_path / "half.txt").exists()
    assert [r.case for r in read_records(out / "fake.partial.jsonl")] == ["case=a"]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only


BAD_INPUT = [  # (arguments, what the one-line error says): refused before any work
    (["generate", "--prompt", "hi", "--temperature", "nan"], "--temperature: must be finite"),
    (["generate", "--prompt", "hi", "--top-k", "0"], "--top-k: must be at least 1"),
    (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens: must be at least 1"),
    (["generate", "--prompt", "hi", "--lang", "klingon"], "invalid choice: 'klingon'"),
    (["generate", "--prompt", "\udcff"], "the prompt is not valid UTF-8"),
    (["eval", "--max-bytes", "0"], "--max-bytes: must be at least 1"),
    (["eval", "--device", "tpu"], "unknown device 'tpu'"),
    (["generate", "--prompt", "hi", "--device", "tpu"], "unknown device 'tpu'"),
    (["data", "prepare", "--lang", "de"], "--lang tags your own text"),
    (["bench", "fff", "--quick", "--device", "banana"], "unknown device 'banana'"),
    (["bench", "fff", "--quick", "--out", ""], "--out is empty"),
    (["bench", "fff", "--quick", "--out", "{file}"], "exists and is not a directory"),
    (["report", "--quick", "--out", "{file}"], "exists and is not a directory"),
    (["report", "--quick", "--out", "{tmp}/r", "--markdown", "{tmp}"], "is a directory"),
    (["report", "--quick", "--out", "{tmp}/r", "--include", "{binary}"], "not UTF-8 text"),
    (["train", "--preset", "gpt-nano", "--lr", "nan", "--out_dir", "{tmp}/r"], "need lr > 0"),
    (["train", "--preset", "gpt-nano", "--beta1", "2", "--out_dir", "{tmp}/r"], "beta1 and beta2 must be in [0, 1)"),
    (["train", "--preset", "gpt-nano", "--seed", "-1", "--out_dir", "{tmp}/r"], "seed must be >= 0"),
    (["train", "--preset", "gpt-nano", "--out_dir", ""], "out_dir must not be empty"),
    (["train", "--preset", "gpt-nano", "--out_dir", "{file}"], "out_dir {file} exists and is not a directory"),
    (["train", "--preset", "gpt-nano", "--model.vocab_size", "10", "--out_dir", "{tmp}/r"], "outside the model's"),
    (["fff", "train", "--preset", "gpt-nano", "--model.fff_depth", "40"], "fff_depth must be in 0..30"),
    (["fff", "convert", "--out", "{tmp}/c", "--depth", "40"], "--depth: must be in 0..30"),
    (["fff", "convert", "--out", "{tmp}/c", "--trees", "0"], "--trees: must be at least 1"),
    (["fff", "convert", "--out", "{tmp}/c", "--finetune-lr", "nan"], "--finetune-lr: must be finite"),
    (["fff", "convert", "--out", "{file}"], "exists and is not a directory"),
    (["bdh", "inspect", "ck", "--seq-len", "1"], "--seq-len: must be at least 2"),
    (["bdh", "inspect", "ck", "--top", "0"], "--top: must be at least 1"),
    (["bdh", "inspect", "ck", "--out", "{file}"], "exists and is not a directory"),
    (["data"], "usage: recruit data"),
    (["bench", "fff", "--quick", "--model", "{tmp}"], "fff builds its own models and takes no --model"),
    (["bench", "--list", "fff"], "--list lists every benchmark"),
    (["eval", "--bogus"], "recruit eval: error: unrecognized arguments: --bogus"),
    (["train", "--preset", "gpt-nano", "--max_steps", "--out_dir", "{tmp}/r"], "--max_steps needs a value (got the"),
]


@pytest.mark.parametrize("args,said", BAD_INPUT, ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_bad_input_is_refused_in_one_line_before_any_work(args, said, text_corpus, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\n")
    paths = {"tmp": tmp_path, "file": tmp_path / "file", "binary": tmp_path / "binary.jsonl"}
    args = [a.format(**paths) for a in args]
    if args[0] in ("train", "fff", "eval"):
        args += ["--corpus", text_corpus]
    try:
        rc = main([*args, "-q"] if args != ["data"] else args)
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    captured = capsys.readouterr()
    assert rc == 2
    assert said.format(**paths) in captured.err + captured.out
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()  # nothing made on the way


def test_report_draws_what_it_can_from_cut_or_foreign_records(tmp_path, capsys):
    """A section that cannot be drawn from its records (a partial file cut between two records) says so on the
    page instead of failing the report; record text is escaped in the page."""
    lines = (Path(__file__).parent.parent / "results/cpu/bdh-memory-tiny.jsonl").read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if '"probe_exact"' in line) + 1  # its probe_char_acc left out
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:cut]) + "\n")
    tagged = Record("fff-quality", "ff=<b>dense</b>,lang=mean", "bpb", 1.5, "bits/byte")
    write_records(tmp_path / "tagged.jsonl", [tagged])
    out = tmp_path / "rep"
    args = ["report", "--quick", "-q", "--out", str(out), "--include", str(tmp_path / "cut.jsonl")]
    assert main([*args, str(tmp_path / "tagged.jsonl")]) == 0
    page = (out / "index.html").read_text()
    assert "This section could not be drawn from the bdh-memory records given (KeyError" in page
    assert "ff=&lt;b&gt;dense&lt;/b&gt;" in page and "<b>dense</b>" not in page
    assert len(read_records(out / "results.jsonl")) > cut

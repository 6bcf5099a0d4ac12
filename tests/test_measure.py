import math
import time

import numpy as np
import pytest
import torch

from recruit import measure
from recruit.data.stream import eval_windows, spread_windows
from recruit.errors import RecruitError
from recruit.models import GPT, gpt_config
from recruit.records import Record, cpu_description, environment, read_records, write_records


@pytest.mark.parametrize("over", [{}, {"mlp": "swiglu", "n_head": 4, "n_kv_head": 2, "d_model": 32}])
@pytest.mark.parametrize("T, ctx", [(16, 0), (1, 9), (5, 7)])
def test_flop_counter_equals_analytic_count(over, T, ctx):
    m = GPT(gpt_config("gpt-nano", **over)).eval()
    cache = m.new_cache()
    if ctx:
        m(torch.zeros(2, ctx, dtype=torch.long), cache=cache)
    x = torch.zeros(2, T, dtype=torch.long)
    counted = measure.count_flops(lambda: m(x, cache=cache if ctx else None))
    assert counted == measure.gpt_forward_flops(m.config, T, batch=2, context=ctx)


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
@pytest.mark.parametrize("trees", [1, 3])
def test_flop_counter_counts_fff_inference_by_its_walk(backend, trees):
    """An FFF in eval mode counts (D + 1)·K rows in and out per token, whichever path runs it (the fused kernels
    are invisible to torch's counter, the torch walk's gathers are not); in training mode its dense masked forward."""
    m = GPT(gpt_config("gpt-nano", mlp="fff", fff_depth=3, fff_trees=trees)).eval()
    for block in m.blocks:
        block.mlp.backend = backend
    x = torch.zeros(2, 7, dtype=torch.long)
    assert measure.count_flops(lambda: m(x)) == measure.gpt_forward_flops(m.config, 7, batch=2)
    none = GPT(gpt_config("gpt-nano", mlp="none"))
    width = trees * 15  # nodes of the dense masked forward
    masked = 2 * 2 * 7 * 2 * 32 * width * m.config.n_layer  # in and out projections of every node, per layer
    assert measure.count_flops(lambda: m.train()(x)) == measure.count_flops(lambda: none(x)) + masked


def test_uniform_model_scores_log2_vocab(tokens):
    class Uniform(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, 288)

    r = measure.nll(Uniform(), tokens, seq_len=32, max_windows=5)
    assert r.targets == 5 * 32
    assert r.bits_per_target == pytest.approx(math.log2(288))


def test_only_byte_targets_count():
    toks = np.array([300 - 12, 1, 2, 287, 3, 4, 5, 287, 6], dtype=np.uint16)

    class Uniform(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, 288)

    assert measure.nll(Uniform(), toks, seq_len=8).targets == 6
    assert measure.nll(Uniform(), toks, seq_len=8, n_bytes=None).targets == 8


def test_timing_and_memory_are_sane():
    t = measure.time_fn(lambda: sum(range(1000)), warmup=1, repeats=5)
    assert t.repeats == 5 and 0 < t.p10 <= t.median <= t.p90
    peak = measure.peak_memory(lambda: torch.ones(64, 1024, 1024).sum())  # 256 MiB
    if peak is not None:
        assert peak > 200 * 2**20


def test_interleaved_timing_alternates_blocks_and_pools_rounds():
    order: list[str] = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    t = measure.time_interleaved(fns, rounds=3, warmup=1, repeats=2)
    assert order == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert t.keys() == {"a", "b"} and all(v.repeats == 6 and 0 < v.p10 <= v.median <= v.p90 for v in t.values())
    slow = measure.time_interleaved({"sleep": lambda: time.sleep(0.002), "none": lambda: None}, rounds=2)
    assert slow["sleep"].median > 10 * slow["none"].median
    with pytest.raises(ValueError, match="rounds"):
        measure.time_interleaved(fns, rounds=0)


def test_records_round_trip(tmp_path):
    recs = [Record("baseline", "model=x,lang=de", "bpb", 1.5, "bits/byte", environment())]
    path = write_records(tmp_path / "r.jsonl", recs)
    back = read_records(path)
    assert back == recs and back[0].env["torch"] == torch.__version__
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(RecruitError, match="r.jsonl:2"):
        read_records(path)


def test_cpu_description_names_model_family_and_vector_isa(tmp_path):
    def described(name: str, text: str) -> str:  # one file per text: the description is cached by path
        (tmp_path / name).write_text(text)
        return cpu_description(tmp_path / name)

    block = "processor\t: {}\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f\n"
    two = block.format(0) + "\n" + block.format(1).replace("AMD EPYC", "other")
    assert described("x86", two) == "AMD EPYC (family 26, model 2, avx512)"  # the first processor's block
    assert described("arm", "processor\t: 0\nmodel name\t: Some ARM core\nflags\t\t: neon\n") == "Some ARM core"
    fallback = described("bare", "processor\t: 0\n")  # no model name: what platform says
    assert fallback and cpu_description(tmp_path / "missing") == fallback
    assert environment()["cpu"] == cpu_description()


def test_markdown_gives_each_device_its_own_table():
    from recruit.records import Record
    from recruit.report.terminal import format_markdown

    cpu, gpu = {"device_name": "x86_64", "torch": "2"}, {"device_name": "NVIDIA H200", "torch": "2"}
    recs = [Record("fff", "B=1", "speedup", 99.0, "x", cpu), Record("fff", "B=1", "speedup", 7.0, "x", gpu),
            Record("bdh", "c", "m", 1.0, "", cpu)]  # fmt: skip
    md = format_markdown(recs, command="recruit report")
    assert "## fff (x86_64)" in md and "## fff (NVIDIA H200)" in md and "## bdh\n" in md
    gpu_part = md.split("## fff (NVIDIA H200)")[1].split("##")[0]
    assert "| 7 |" in gpu_part and "| 99 |" not in gpu_part


def test_two_runs_on_one_device_get_a_table_each_under_their_commit():
    from recruit.records import Record
    from recruit.report.html import device_labels
    from recruit.report.terminal import format_markdown

    old, new = ({"device_name": "NVIDIA H200", "commit": c} for c in ("aaa", "bbb"))
    cpu = {"device_name": "x86_64"}
    recs = [Record("bdh-speed", "impl=fused", "train_speedup", 1.3, "x", old),
            Record("bdh-speed", "impl=fused", "train_speedup", 1.4, "x", new),
            Record("fff", "B=1", "speedup", 9.0, "x", old),
            Record("fff", "B=1", "speedup", 99.0, "x", cpu)]  # fmt: skip
    md = format_markdown(recs)
    assert "## bdh-speed (commit aaa)" in md and "## bdh-speed (commit bbb)" in md
    assert "## fff (NVIDIA H200)" in md and "## fff (x86_64)" in md  # one run per device: no commit named
    assert "| 1.4 |" in md.split("## bdh-speed (commit bbb)")[1].split("##")[0]
    assert "commit `bbb`" in md.split("## bdh-speed (commit bbb)")[1].split("##")[0]
    label = device_labels(recs)
    assert [label(r) for r in recs] == ["NVIDIA H200 @ aaa", "NVIDIA H200 @ bbb", "NVIDIA H200 @ aaa", "x86_64"]
    assert device_labels(recs[2:])(recs[2]) == "NVIDIA H200"
    # one commit, two sources (a device whose copy of .git lagged the tree): still two runs
    same = [Record("bdh", "c", "m", v, "", {"device_name": "gpu", "commit": "c-dirty", "source": s})
            for v, s in ((1.0, "s1"), (2.0, "s2"))]  # fmt: skip
    md = format_markdown(same)
    assert "## bdh (commit c-dirty, source s1)" in md and "## bdh (commit c-dirty, source s2)" in md
    assert [device_labels(same)(r) for r in same] == ["gpu @ c-dirty (s1)", "gpu @ c-dirty (s2)"]


def test_recovered_records_rebuild_the_same_page():
    import importlib.util
    from pathlib import Path

    from recruit.report.terminal import format_markdown

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "recover_records.py"
    spec = importlib.util.spec_from_file_location("recover_records", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cpu = {"device_name": "x86_64", "torch": "2", "threads": 2, "commit": "abc", "python": "3.11"}
    gpu = {"device_name": "NVIDIA H200", "torch": "2", "threads": 16, "commit": "def"}
    recs = [Record("baseline", "m", "bpb", 1.5, "bits/byte", cpu), Record("fff", "B=1", "speedup", 143.04, "x", cpu),
            Record("fff", "B=1", "latency_ms", 0.01557, "ms", gpu), Record("fff", "B=2", "bytes", 123456.7, "", gpu),
            Record("bdh", "c=1,d=x", "tiny", 3.2e-7, "", cpu)]  # fmt: skip
    page = format_markdown(recs)
    got = tool.recover(page, "page@1", skip={"baseline"})
    assert list(got) == ["fff (x86_64)", "fff (NVIDIA H200)", "bdh"]
    flat = [r for rs in got.values() for r in rs]
    key = [(r.bench, r.case, r.metric, r.unit) for r in recs[1:]]
    assert [(r.bench, r.case, r.metric, r.unit) for r in flat] == key
    assert [r.value for r in flat] == [143.0, 0.01557, 123457.0, 3.2e-7]  # as printed: 4 digits, integers above 1,000
    assert flat[0].env == {"device_name": "x86_64", "torch": "2", "threads": 2, "commit": "abc", "recovered": "page@1"}
    assert format_markdown([recs[0], *flat]) == page  # the same page again (its first record's environment heads it)


def test_results_page_names_only_record_files_the_repository_holds():
    import shlex
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    first = (root / "docs" / "results.md").read_text(encoding="utf-8").split("`")[1]  # the command that made it
    words = shlex.split(first)
    assert words[:2] == ["recruit", "report"] and "--include" in words
    files = words[words.index("--include") + 1 : words.index("--markdown")]
    assert files
    tracked = subprocess.run(["git", "ls-files", *files], cwd=root, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    assert sorted(tracked.stdout.split()) == sorted(files)  # committed, so a fresh checkout can rebuild the page
    for f in files:
        assert read_records(root / f)  # and each is a readable, non-empty record file


def test_spread_windows_sample_the_whole_split_in_order():
    toks = np.arange(1001) % 256
    every = eval_windows(toks, 10)  # 100 windows
    some = spread_windows(toks, 10, 4)
    assert some.shape == (4, 11) and some.dtype == torch.int64
    assert torch.equal(some, every[[0, 33, 66, 99]])  # first and last included, evenly spaced
    assert torch.equal(spread_windows(toks, 10), every) and torch.equal(spread_windows(toks, 10, 500), every)
    with pytest.raises(RecruitError, match="positive"):
        spread_windows(toks, 10, 0)
    with pytest.raises(RecruitError, match="fewer than one window"):
        spread_windows(toks[:5], 10, 2)


class _PairTokenizer:
    """Two UTF-8 bytes per token (ASCII text): a tokenizer whose tokens are not bytes."""

    def encode(self, text: str) -> list[int]:
        data = text.encode()
        return [data[i] * 256 + (data[i + 1] if i + 1 < len(data) else 0) for i in range(0, len(data), 2)]

    def decode(self, ids) -> str:
        return b"".join(bytes([i // 256, i % 256]) for i in ids).rstrip(b"\0").decode()


@pytest.mark.parametrize("tokenizer,bytes_per_token", [(None, 1), ("byte", 1), ("pair", 2)])
def test_bits_per_byte_with_a_tokenizer_divides_the_nll_by_the_bytes_scored(corpus, tokenizer, bytes_per_token):
    from recruit.data.tokenizer import ByteTokenizer

    tok = {"byte": ByteTokenizer(), "pair": _PairTokenizer(), None: None}[tokenizer]
    vocab = 65536 if tokenizer == "pair" else 288
    uniform = lambda x: torch.zeros(*x.shape, vocab)  # noqa: E731  every token costs ln(vocab) nats
    out = measure.corpus_bits_per_byte(uniform, corpus, "test", seq_len=16, max_bytes=600, lang="en", tokenizer=tok)
    bpb, scored = out["en"]
    assert bpb == pytest.approx(math.log2(vocab) / bytes_per_token)
    if tok is not None:  # the text's tokens in whole windows, in bytes
        text = measure.corpus_texts(corpus, "test", max_bytes=600, lang="en")["en"]
        assert text.isascii() and 600 - 2 * 16 * bytes_per_token < scored < 600
        assert scored == (len(tok.encode(text)) - 1) // 16 * 16 * bytes_per_token


def test_bits_per_byte_of_nothing_scored_is_an_error():
    """Windows of tags only hold no byte target: no bits per byte (it used to be 0.0)."""
    m = GPT(gpt_config("gpt-nano")).eval()
    with pytest.raises(RecruitError, match="no target was scored"):
        measure.bits_per_byte(m, np.full(100, 260, dtype=np.uint16), 32)


def test_time_fn_needs_a_timed_call():
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure.time_fn(lambda: None, repeats=0)


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"env": None}, "env must be a mapping"),
        ({"unit": None}, "unit must be a string"),
        ({"value": True}, "value must be a number"),
        ({"value": 10**400}, "too large"),
    ],  # fmt: skip
)
def test_records_that_would_fail_later_are_refused_when_read(tmp_path, bad, why):
    import json

    line = {"bench": "b", "case": "a=1", "metric": "m", "value": 1.0, "unit": "", "env": {}, **bad}
    (tmp_path / "r.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(RecruitError, match=f"r.jsonl:1: not a result record .*{why}"):
        read_records(tmp_path / "r.jsonl")


def test_markdown_keeps_one_row_per_record():
    from recruit.report.terminal import format_markdown

    text = format_markdown([Record("b", "a=x|y\nz", "m", 1.0, "u")])
    assert text.splitlines()[-1] == "| a=x\\|y z | m | 1 | u |"

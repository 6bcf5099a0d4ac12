"""Memory as state: a key stated once, asked for far later, within and beyond the training windows.

``recruit bench bdh-memory --out DIR``. A model trained on plain text has never seen the task, and both BDH and
the GPT score 0 on it (``recruit bench bdh``). Here a BDH and the GPT of equal size are trained on the same
batches, in which a fraction ``probe_mix`` of the windows carry a key-retrieval episode
(:class:`recruit.data.probes.ProbeMixStream`: a random key, up to a window of real text, the question, the key
again). Then both answer the held-out probes of :mod:`recruit.data.probes` (greedy decoding) at distances
inside the training windows and, for BDH in its recurrent form, far beyond them: its state has a fixed size, so
a key must survive in the synapses across thousands of tokens never seen in training. The GPT answers only
where the whole probe fits its context (``max_seq_len``); beyond it there is nothing to record.

The task is learnt suddenly, after a few million tokens: ``bdh-tiny`` and ``gpt-tiny`` trained on 2^21 tokens
with an episode in half of the windows both answered at chance (records in ``docs/results.md``), and so did
``gpt-mini`` after 2^21 tokens with an episode in every window (``MemoryConfig(presets=("gpt-mini",),
tokens=2**21)``), while after 2^23 tokens it answered every probe inside its training windows (its loss falls
by 0.3 nats between steps 3,586 and 3,749). Hence the defaults: 2^23 tokens, an episode in every window, the two
~215k-parameter models.

Records per model and distance: ``probe_exact`` (the whole key), ``probe_char_acc`` (key characters right at
their place; chance is 1/36), with the test bits per byte of each run (what the episodes cost on plain text).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from recruit.benchmarks import Bench, BenchOptions, checks, configure, register
from recruit.benchmarks.equal_budget import Arm, field_suffixes, prepare, run_root, score_arm, train_arm
from recruit.data.probes import probe_accuracy, prompt_tokens
from recruit.models import BDH, PRESETS
from recruit.records import Record

BENCH = "bdh-memory"


@dataclass(frozen=True)
class MemoryConfig:
    """Models, budget, episode mix and probe distances."""

    presets: tuple[str, ...] = ("bdh-mini", "gpt-mini")
    tokens: int = 2**23  # training tokens per run: 8192 steps of 8 windows of 128 tokens
    seq_len: int = 128  # an episode spans at most 129 ids: filler distances 0 to 78 in training
    batch_size: int = 8
    lr: float = 3e-3
    probe_mix: float = 1.0  # fraction of training windows carrying an episode
    bdh_args: tuple[tuple[str, object], ...] = ()  # BDH config fields, e.g. (("activity_l1", 0.5),); GPTs ignore them
    distances: tuple[int, ...] = (16, 64, 128, 256, 1024, 4096)  # filler bytes between key and question
    probes: int = 20  # probes per distance
    key_len: int = 6
    eval_bytes: int = 32768  # test bytes scored per language
    out_dir: str = "runs/bdh-memory"  # the runs, resumed by a rerun ("": a temporary directory)

    def __post_init__(self) -> None:
        checks.one_batch(self)
        checks.positive(self, "lr", "probes", "key_len", "eval_bytes")
        if not 0 < self.probe_mix <= 1:
            raise ValueError(f"probe_mix must be in (0, 1], got {self.probe_mix}")
        if not self.presets:
            raise ValueError("presets must name at least one model preset")
        for i, preset in enumerate(self.presets):
            checks.preset(f"presets[{i}]", preset)
            checks.fits_context(f"presets[{i}]", preset, self.seq_len)
        if not self.distances or any(d < 0 for d in self.distances):
            raise ValueError(f"distances must be one or more filler lengths >= 0, got {self.distances}")
        checks.bdh_args(self.bdh_args, [p for p in self.presets if p in checks.family_presets("bdh")])


QUICK = MemoryConfig(presets=("bdh-nano", "gpt-nano"), tokens=4 * 64 * 2, seq_len=64, batch_size=2,
                     distances=(4, 100), probes=2, eval_bytes=512, out_dir="")  # fmt: skip


def run(opts: BenchOptions, cfg: MemoryConfig | None = None) -> list[Record]:
    """Train (or resume) each model with episodes mixed in, then score probes at every distance it can read."""
    cfg = configure(opts, cfg or (QUICK if opts.quick else MemoryConfig()), BENCH)
    corpus, device, env, steps = prepare(opts, cfg)
    out_dir = f"{run_root(cfg.out_dir)}/tokens-{cfg.tokens}"
    recs = opts.recorder()
    for preset in tqdm(cfg.presets, desc="bdh memory", disable=not opts.progress):
        mix = {"probe_mix": cfg.probe_mix}
        args = dict(cfg.bdh_args) if PRESETS[preset][0] is BDH else {}
        tag, extra = field_suffixes(args)
        arm = Arm(f"{preset}-lr{cfg.lr:g}-mix{cfg.probe_mix:g}{tag}", preset, cfg.lr, model_args=args, train_args=mix)
        trainer = train_arm(corpus, arm, steps, cfg.seq_len, cfg.batch_size, out_dir, opts)
        model = trainer.model
        case = f"model={preset},probe_mix={cfg.probe_mix:g},lr={cfg.lr:g},train_T={cfg.seq_len}{extra}"
        r, _ = score_arm(BENCH, case, trainer, corpus, cfg.eval_bytes, device, env, 0.0)
        recs.extend(x for x in r if x.metric != "train_flops")
        recurrent = hasattr(model, "new_state")  # BDH: any length; a GPT: its context only
        limit = None if recurrent else model.config.max_seq_len
        distances = [d for d in cfg.distances if limit is None or prompt_tokens(d, cfg.key_len) + cfg.key_len <= limit]

        def generate(prompt: list[int], k: int, model=model) -> list[int]:
            with torch.no_grad():
                out = model.generate(torch.tensor([prompt], device=device), k, greedy=True)
            return out[0, len(prompt) :].tolist()

        mode = "recurrent" if recurrent else "kv_cache"
        tokens = trainer.step * cfg.seq_len * cfg.batch_size
        for s in probe_accuracy(generate, corpus, distances, cfg.probes, split="test", key_len=cfg.key_len):
            where = "inside" if prompt_tokens(s.distance, cfg.key_len) + cfg.key_len <= cfg.seq_len else "beyond"
            pc = f"{case},train_tokens={tokens},mode={mode},distance={s.distance},training_windows={where},n={s.n}"
            recs.add(Record(BENCH, pc, "probe_exact", s.exact, "fraction", env))
            recs.add(Record(BENCH, pc, "probe_char_acc", s.char, "fraction", env))
    return recs.records


def section(records: list[Record]) -> str:
    """Probe accuracy against distance, one table per training setup, one column per model."""
    from recruit.report.html import table

    rs = [r for r in records if r.bench == BENCH]
    if not rs:
        return ""
    known = {"model", "probe_mix", "lr", "train_T", "train_tokens", "mode", "distance", "training_windows", "n",
             "split", "lang"}  # fmt: skip

    def label(r: Record) -> str:  # the model, with any BDH config fields its run set (bdh_args)
        return " ".join([r.params["model"], *(f"{k}={v}" for k, v in r.params.items() if k not in known)])

    setups: dict[tuple[str, ...], list[Record]] = {}
    for r in rs:
        key = tuple(r.params.get(k, "") for k in ("train_T", "probe_mix", "train_tokens", "lr"))
        setups.setdefault(key, []).append(r)
    html = (
        "<p>Key retrieval after training with key-retrieval episodes in a fraction of the windows (<code>recruit "
        "bench bdh-memory</code>): whole keys right / key characters right (chance 1/36 ≈ 0.03) against the filler "
        "bytes between the key and the question. BDH answers in its recurrent form at every distance; the GPT only "
        "where the probe fits its context (—). The last row is each run's test bits per byte on plain text.</p>"
    )
    for (train_t, mix, tokens, lr), group in sorted(setups.items(), key=lambda kv: [int(kv[0][2] or 0), kv[0]]):
        probes = [r for r in group if "distance" in r.params]
        acc = {(label(r), int(r.params["distance"]), r.metric): r.value for r in probes}
        where = {int(r.params["distance"]): r.params["training_windows"] for r in probes}
        models = sorted({label(r) for r in group})
        bpb = {label(r): r.value for r in group if r.metric == "bpb" and r.params.get("lang") == "mean"}

        def cell(m: str, d: int, acc=acc) -> str:
            if (m, d, "probe_exact") not in acc:
                return "—"
            return f"{acc[m, d, 'probe_exact']:.2f} / {acc[m, d, 'probe_char_acc']:.2f}"

        rows = [[d, where[d], *(cell(m, d) for m in models)] for d in sorted(where)]
        rows.append(["test bits/byte", "", *(f"{bpb[m]:.4f}" if m in bpb else "—" for m in models)])
        html += (
            f"<p>Training windows of {train_t} tokens, {tokens} tokens per run, episodes in a fraction {mix} of the "
            f"windows, peak learning rate {lr}.</p>" + table(["distance (bytes)", "training windows", *models], rows)
        )
    return html


register(Bench(BENCH, run, section, summary="memory as state: key retrieval within and beyond the training length"))

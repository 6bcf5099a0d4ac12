"""Training arms for equal-budget comparisons: same corpus, same trainer, same batches, same number of tokens.

Benchmarks that compare architectures or layers (``bdh-compare``, ``fff-quality``) train each arm with
:func:`train_arm` (resumable: an interrupted benchmark continues) and score it with :func:`score_arm`.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch

from recruit import measure
from recruit.benchmarks import BenchOptions
from recruit.records import Record, environment
from recruit.train import Trainer, make_config, resolve_device, training_mode


@dataclass
class Arm:
    """One training run of a comparison.

    Attributes:
        name: Run directory name under the comparison's ``out_dir`` (followed by the corpus's fingerprint); also
            used in record cases.
        preset: Model preset.
        lr: Peak learning rate.
        model_args: Overrides of the preset's model config (dropout is always 0: budgets are below one epoch).
        train_args: Overrides of the training config (for example ``probe_mix``).
    """

    name: str
    preset: str
    lr: float
    model_args: dict[str, Any] = field(default_factory=dict)
    train_args: dict[str, Any] = field(default_factory=dict)


def field_suffixes(fields: dict[str, Any]) -> tuple[str, str]:
    """Config fields a run sets beyond its preset, as (run directory suffix ``-kv...``, record case suffix ``,k=v...``).

    Runs that differ in such fields (``bdh_args`` of ``bdh-compare`` and ``bdh-memory``) get their own directories
    and record cases.
    """
    return "".join(f"-{k}{v}" for k, v in fields.items()), "".join(f",{k}={v}" for k, v in fields.items())


def prepare(opts: BenchOptions, cfg: Any) -> tuple[Any, torch.device, dict, int]:
    """What every comparison starts from: (corpus, device, environment of its records, steps per arm).

    ``cfg`` has ``tokens``, ``seq_len`` and ``batch_size``; an arm trains tokens ÷ (seq_len × batch_size) steps.
    """
    from recruit.data.corpus import Corpus

    device = resolve_device(opts.device)
    return Corpus.load(opts.corpus), device, environment(device), cfg.tokens // (cfg.seq_len * cfg.batch_size)


def run_root(out_dir: str) -> str:
    """Where a benchmark's training runs go: ``out_dir``, or for "" a temporary directory.

    The temporary directory is removed when the process exits: nothing is kept, so such a run (``--quick``, a smoke
    test) trains from scratch every time.
    """
    if out_dir:
        return out_dir
    root = tempfile.mkdtemp(prefix="recruit-runs-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def train_arm(corpus, arm: Arm, steps: int, seq_len: int, batch_size: int, out_dir: str, opts: BenchOptions) -> Trainer:
    """Train ``arm`` for ``steps`` steps (resuming its run directory if present); the model comes back in eval mode.

    The run directory is ``out_dir/NAME-FINGERPRINT``: runs on another build of the corpus train anew beside it.
    """
    overrides = {
        "model": arm.preset, "model.dropout": 0.0, **{f"model.{k}": v for k, v in arm.model_args.items()},
        "out_dir": f"{out_dir}/{arm.name}-{corpus.fingerprint}", "seq_len": seq_len, "batch_size": batch_size,
        "max_steps": steps,
        "lr": arm.lr, "warmup_steps": max(1, steps // 20), "eval_every": steps, "ckpt_every": max(1, steps // 10),
        "log_every": max(1, steps // 50), "device": opts.device, **arm.train_args,
    }  # fmt: skip
    trainer = Trainer(
        make_config(None, overrides=overrides), corpus.tokens("train"), corpus.tokens("val"), progress=opts.progress
    )
    trainer.fit()
    trainer.model.eval()
    return trainer


def train_flops_per_token(model: torch.nn.Module, seq_len: int, device: torch.device) -> float:
    """Training FLOPs per token: 3 × the training forward's FLOPs counted by torch's counter (backward ≈ 2 × forward).

    Counted in training mode, the forward that training runs: an FFF trains through UltraFastBERT's dense masked
    forward (every node's pre-activation), which costs what a dense MLP of its width does.
    """
    x = torch.randint(0, 256, (1, seq_len), device=device)
    with training_mode(model, True):
        return 3 * measure.count_flops(lambda: model(x)) / seq_len


def score_arm(
    bench: str, case: str, trainer: Trainer, corpus, eval_bytes: int, device, env: dict, flops_per_token: float
) -> tuple[list[Record], dict[str, float]]:
    """Records of one trained arm (params, training FLOPs and throughput, test bits per byte per language).

    Returns:
        The records and ``{lang: bpb, "mean": bpb}``.
    """
    seq_len, tokens = trainer.cfg.seq_len, trainer.step * trainer.cfg.seq_len * trainer.cfg.batch_size
    case = f"{case},train_tokens={tokens}"
    recs = [
        Record(bench, case, "params", measure.count_params(trainer.model), "", env),
        Record(bench, case, "train_flops", flops_per_token * tokens, "FLOP", env),
    ]
    last = trainer.history[-1] if trainer.history else {}
    if "tok_per_s" in last:
        recs.append(Record(bench, case, "train_tok_per_s", last["tok_per_s"], "tok/s", env))
    with torch.no_grad():
        res = measure.corpus_bits_per_byte(
            trainer.model, corpus, "test", seq_len=seq_len, max_bytes=eval_bytes, device=device
        )
    bpb = {lang: v for lang, (v, _) in res.items()}
    bpb["mean"] = sum(bpb.values()) / len(bpb)
    recs += [Record(bench, f"{case},split=test,lang={lang}", "bpb", v, "bits/byte", env) for lang, v in bpb.items()]
    return recs, bpb


def ratio_records(bench: str, case: str, num: dict[str, float], den: dict[str, float], env: dict) -> list[Record]:
    """``bpb_ratio`` = num ÷ den per language (and mean) for the languages both arms were scored on."""
    return [Record(bench, f"{case},split=test,lang={k}", "bpb_ratio", num[k] / den[k], "x", env)
            for k in num if k in den]  # fmt: skip

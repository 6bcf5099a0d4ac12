"""``recruit fff train|bench|convert``: Fast Feedforward trees in the baseline decoder.

``train`` trains the baseline GPT with FFF trees in place of its MLPs (the same as ``recruit train
--model.mlp fff``); ``bench`` runs the speed benchmark (``recruit bench fff``) or, with ``--quality``, the
equal-budget dense / FFF / no-MLP comparison (``recruit bench fff-quality``); ``convert`` distils a trained
GPT's dense MLPs into FFF trees, with quality before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from recruit.errors import RecruitError


def cmd_fff_train(args: argparse.Namespace) -> int:
    """Train the baseline GPT with FFF trees instead of MLPs (resumes from OUT_DIR/ckpt.pt when present).

    --preset is a training preset (default gpt-tiny; out_dir runs/PRESET-fff); FFF fields are model fields:
    --model.fff_depth D (default 8), --model.fff_trees K, --model.fff_mode hard|soft, --model.fff_hardening W
    (soft mode: weight of the entropy hardening loss, added to the training loss). Any other field as in
    'recruit train' (--FIELD VALUE, --model.FIELD VALUE).
    """
    from recruit.cli import fit_and_report
    from recruit.config import load_config_file, parse_overrides
    from recruit.train import make_config

    file_data = load_config_file(args.config) if args.config else None
    preset = args.preset or (None if file_data else "gpt-tiny")
    base = {"model.mlp": "fff", **({"out_dir": f"runs/{preset}-fff"} if preset else {})}
    cfg = make_config(preset, file_data, {**base, **parse_overrides(args.overrides)})
    return fit_and_report(cfg, quiet=args.quiet)


def cmd_fff_bench(args: argparse.Namespace) -> int:
    """FFF benchmarks: inference speed against torch's dense FF, or (--quality) dense vs FFF vs no MLP.

    Writes OUT/fff.jsonl or OUT/fff-quality.jsonl, like 'recruit bench fff' and 'recruit bench fff-quality'.
    """
    from recruit.cli import cmd_bench

    args.name = "fff-quality" if args.quality else "fff"
    args.list, args.model = False, None
    return cmd_bench(args)


def cmd_fff_convert(args: argparse.Namespace) -> int:
    """Replace every dense MLP of a GPT checkpoint by an FFF distilled on recorded activations; save the result.

    Each layer's MLP inputs are recorded on training windows of the corpus (from the dense model), each FFF is
    fitted to its MLP's outputs, then held-out bits per byte is measured before and after.
    """
    from recruit import checkpoints, measure
    from recruit.data.corpus import Corpus
    from recruit.data.stream import TokenStream
    from recruit.fff.convert import distil_all, record_inputs
    from recruit.models import GPT, load_model

    model = load_model(args.model or checkpoints.path())
    if not isinstance(model, GPT) or model.config.mlp not in ("gelu", "swiglu"):
        raise RecruitError("fff convert needs a recruit-gpt checkpoint with dense (gelu or swiglu) MLPs")
    if args.depth < 0 or args.steps <= 0 or args.windows <= 0:
        raise RecruitError("need --depth >= 0, --steps > 0 and --windows > 0")
    corpus = Corpus.load(args.corpus)
    seq = min(256, model.config.max_seq_len)
    x, _ = TokenStream(corpus.tokens("train"), seq, args.windows, seed=1234).batch(0)  # (W, T)
    score = lambda m: measure.corpus_bits_per_byte(m, corpus, "test", seq_len=seq, max_bytes=args.max_bytes)  # noqa: E731
    with torch.no_grad():
        before = score(model)
    inputs = record_inputs([block.mlp for block in model.blocks], lambda: model(x))  # one pass; each (W*T, d)
    reports = distil_all([block.mlp for block in model.blocks], inputs,
                         lambda i, fff: setattr(model.blocks[i], "mlp", fff), args.depth, args.trees,
                         steps=args.steps, progress=not args.quiet)  # fmt: skip
    for i, rep in enumerate(reports):
        print(f"layer {i}: relative error {rep.initial_rel_error:.3f} -> {rep.final_rel_error:.3f} "
              f"(held-out MSE {rep.final_mse:.3g}; no MLP: {rep.dense_mse_to_zero:.3g})")  # fmt: skip
    model.config = dataclasses.replace(model.config, mlp="fff", fff_depth=args.depth, fff_trees=args.trees)
    model.eval()
    with torch.no_grad():
        after = score(model)
    print(f"{'lang':>6}  dense bpb  fff bpb")
    for lang in before:
        print(f"{lang:>6}  {before[lang][0]:9.4f}  {after[lang][0]:7.4f}")
    model.save_pretrained(args.out)
    print(f"FFF model saved to {Path(args.out)}")
    return 0


def add_fff_parser(subs) -> None:
    """Add ``fff`` with its actions ``train``, ``bench`` and ``convert`` to the subparsers ``subs``."""
    from recruit.cli import _sub, add_measure_args, add_train_args

    fff = subs.add_parser("fff", help="Fast Feedforward: train, benchmark, convert a dense GPT's MLPs",
                          description=(__doc__ or "").strip())  # fmt: skip
    fsubs = fff.add_subparsers(dest="fff_command", metavar="ACTION")
    add_train_args(
        _sub(fsubs, "train", cmd_fff_train), "training preset (gpt-nano, gpt-tiny, gpt-small; default gpt-tiny)"
    )

    p = _sub(fsubs, "bench", cmd_fff_bench)
    p.add_argument("--quality", action="store_true", help="dense vs FFF vs no MLP at equal budget (trains)")
    p.add_argument("--out", default="results", help="output directory (default: results)")
    add_measure_args(p)

    p = _sub(fsubs, "convert", cmd_fff_convert)
    p.add_argument("model", nargs="?", help="GPT checkpoint directory (default: the shipped gpt-tiny)")
    p.add_argument("--out", required=True, help="where to save the converted model")
    p.add_argument("--depth", type=int, default=8, help="FFF tree depth (default 8: 511 nodes)")
    p.add_argument("--trees", type=int, default=1)
    p.add_argument("--steps", type=int, default=2000, help="distillation steps per layer")
    p.add_argument("--windows", type=int, default=64, help="training windows whose activations are recorded")
    p.add_argument("--corpus", default="debian")
    p.add_argument("--max-bytes", type=int, default=32768, help="held-out bytes scored per language")

"""``recruit fff convert``: distil a trained GPT's dense MLPs into FFF trees, with quality before and after.

Training an FFF model from scratch is ``recruit train --model.mlp fff``; its speed and quality benchmarks are
``recruit bench fff`` and ``recruit bench fff-quality``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from recruit.errors import RecruitError


def cmd_fff_convert(args: argparse.Namespace) -> int:
    """Replace every dense MLP of a GPT checkpoint by an FFF distilled on recorded activations; save the result.

    Each layer's MLP inputs are recorded on training windows of the corpus (from the dense model), each FFF is
    fitted to its MLP's outputs, then held-out bits per byte is measured before and after.
    """
    from tqdm.auto import tqdm

    from recruit import checkpoints, measure
    from recruit.data.corpus import Corpus
    from recruit.data.stream import TokenStream
    from recruit.fff.convert import from_dense, record_mlp_inputs
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
    inputs = [record_mlp_inputs(model, x, i) for i in range(model.config.n_layer)]  # each (W*T, d)
    for i, block in enumerate(tqdm(model.blocks, desc="distil", disable=args.quiet)):
        block.mlp, rep = from_dense(block.mlp, args.depth, args.trees, inputs=inputs[i], steps=args.steps)
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
    """Add ``fff`` with its action ``convert`` to the subparsers ``subs``."""
    from recruit.cli import _sub

    fff = subs.add_parser("fff", help="Fast Feedforward: convert a dense GPT's MLPs into FFF trees",
                          description=(__doc__ or "").strip())  # fmt: skip
    fsubs = fff.add_subparsers(dest="fff_command", metavar="ACTION")
    p = _sub(fsubs, "convert", cmd_fff_convert)
    p.add_argument("model", nargs="?", help="GPT checkpoint directory (default: the shipped gpt-tiny)")
    p.add_argument("--out", required=True, help="where to save the converted model")
    p.add_argument("--depth", type=int, default=8, help="FFF tree depth (default 8: 511 nodes)")
    p.add_argument("--trees", type=int, default=1)
    p.add_argument("--steps", type=int, default=2000, help="distillation steps per layer")
    p.add_argument("--windows", type=int, default=64, help="training windows whose activations are recorded")
    p.add_argument("--corpus", default="debian")
    p.add_argument("--max-bytes", type=int, default=32768, help="held-out bytes scored per language")

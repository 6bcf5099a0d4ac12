"""``recruit fff train|bench|convert``: Fast Feedforward trees in the baseline decoder.

``train`` trains the baseline GPT with FFF trees in place of its MLPs (the same as ``recruit train
--model.mlp fff``); ``bench`` runs the speed benchmark (``recruit bench fff``) or, with ``--quality``, the
equal-budget dense / FFF / no-MLP comparison (``recruit bench fff-quality``); ``convert`` distils the dense
MLPs of a trained GPT, or of a Hugging Face decoder on disk (Llama, GPT-2, Qwen2 ... with its tokenizer), into FFF
trees, with quality before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import torch

from recruit.errors import RecruitError


def cmd_fff_train(args: argparse.Namespace) -> int:
    """Train the baseline GPT with FFF trees instead of MLPs (resumes from OUT_DIR/ckpt.pt when present).

    --preset is a training preset (default gpt-tiny; out_dir runs/PRESET-fff); FFF fields are model fields:
    --model.fff_depth D (default: the deepest tree with no more nodes than the preset's d_ff, 8 for gpt-tiny),
    --model.fff_trees K, --model.fff_mode hard|soft, --model.fff_hardening W
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


def _is_hf_checkpoint(path: str | None) -> bool:
    """Whether ``path`` is a model directory whose ``config.json`` names a model type (or architectures) not recruit's.

    A ``config.json`` that names neither (such as a training run directory's) is left to recruit's loader,
    whose error says what it is.
    """
    from recruit.models.base import MODEL_TYPES

    config = Path(path or "") / "config.json"
    if path is None or not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        model_type = data.get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return model_type not in MODEL_TYPES and (model_type is not None or "architectures" in data)


def cmd_fff_convert(args: argparse.Namespace) -> int:
    """Replace every dense MLP of a GPT checkpoint by an FFF distilled on recorded activations; save the result.

    Each layer's MLP inputs are recorded on training windows of the corpus (from the dense model), each FFF is
    fitted to its MLP's outputs, then held-out bits per byte is measured before and after; with
    --finetune-tokens N the converted model then trains end to end on N more tokens of the corpus (AdamW, warm-up
    and cosine decay from --finetune-lr) and is measured again; stopped part-way, the same command resumes the
    fine-tuning from OUT/finetune-ckpt.pt (deleted once the model is saved). MODEL may also be a
    Hugging Face decoder directory (``save_pretrained`` layout with its tokenizer): its ``mlp`` blocks are
    distilled on the corpus text tokenized by its own tokenizer, and the result is saved so that
    ``recruit.models.hf.load_hf_causal_lm`` loads it with its FFFs.
    """
    from recruit import checkpoints, measure
    from recruit.data.corpus import Corpus
    from recruit.data.stream import TokenStream
    from recruit.fff.convert import distil_all, record_inputs
    from recruit.io import output_dir
    from recruit.models import GPT, load_model
    from recruit.train import check_resumable, lm_loss, train_steps

    output_dir(args.out, "--out", create=False)
    if _is_hf_checkpoint(args.model):
        return _convert_hf(args)
    model_dir = args.model or checkpoints.path()
    model = load_model(model_dir)
    if not isinstance(model, GPT) or model.config.mlp not in ("gelu", "swiglu"):
        raise RecruitError("fff convert needs a recruit-gpt checkpoint with dense (gelu or swiglu) MLPs")
    corpus = Corpus.load(args.corpus)
    seq = min(256, model.config.max_seq_len)
    if args.finetune_tokens:  # a stopped fine-tuning of another run is refused before the distillation, not after
        check_resumable(
            steps=_finetune_steps(args, seq), lr=args.finetune_lr, **_finetune_checkpoint(args, model_dir, corpus)
        )
    x, _ = TokenStream(corpus.tokens("train"), seq, args.windows, seed=1234).batch(0)  # (W, T)
    score = lambda m: measure.corpus_bits_per_byte(m, corpus, "test", seq_len=seq, max_bytes=args.max_bytes)  # noqa: E731
    with torch.no_grad():
        before = score(model)
    inputs = record_inputs([block.mlp for block in model.blocks], lambda: model(x))  # one pass; each (W*T, d)
    reports = distil_all([block.mlp for block in model.blocks], inputs,
                         lambda i, fff: setattr(model.blocks[i], "mlp", fff), args.depth, args.trees,
                         steps=args.steps, progress=not args.quiet)  # fmt: skip
    _print_reports(reports)
    model.config = dataclasses.replace(model.config, mlp="fff", fff_depth=args.depth, fff_trees=args.trees)
    model.eval()
    with torch.no_grad():
        scores = {"dense bpb": before, "fff bpb": score(model)}
    if args.finetune_tokens:
        stream = TokenStream(corpus.tokens("train"), seq, FINETUNE_BATCH, seed=4321)
        train_steps(model, stream.batch, _finetune_steps(args, seq), args.finetune_lr,
                    lambda m, xy: lm_loss(m(xy[0]), xy[1]), progress=not args.quiet, desc="fff finetune",
                    **_finetune_checkpoint(args, model_dir, corpus))  # fmt: skip
        model.eval()
        with torch.no_grad():
            scores["fff+ft bpb"] = score(model)
    _print_scores(scores)
    model.save_pretrained(args.out)
    _write_scores(args, scores)
    _finetune_checkpoint(args)["checkpoint"].unlink(missing_ok=True)
    print(f"FFF model saved to {Path(args.out)}")
    return 0


def _print_reports(reports) -> None:
    for i, rep in enumerate(reports):
        print(f"layer {i}: relative error {rep.initial_rel_error:.3f} -> {rep.final_rel_error:.3f} "
              f"(held-out MSE {rep.final_mse:.3g}; no MLP: {rep.dense_mse_to_zero:.3g})")  # fmt: skip


FINETUNE_BATCH = 16  # windows per fine-tuning step


def _finetune_steps(args: argparse.Namespace, seq: int) -> int:
    return max(1, args.finetune_tokens // (seq * FINETUNE_BATCH))


def _finetune_checkpoint(args: argparse.Namespace, model_dir: str | Path | None = None, corpus=None) -> dict:
    """:func:`~recruit.train.train_steps`'s ``checkpoint`` and ``meta`` for the fine-tuning of ``fff convert``.

    The meta holds the options and what the model directory's files and the corpus build are (names, sizes and
    times; the corpus's fingerprint), so that a checkpoint left by a run on another model or corpus is refused.
    """
    names = ("depth", "trees", "windows", "finetune_tokens", "finetune_lr")
    meta: dict = {k: getattr(args, k) for k in names}
    meta["distil_steps"] = args.steps
    checkpoint = Path(args.out) / "finetune-ckpt.pt"
    if model_dir is not None:  # what the model's files are: names, sizes, times (OUT's own outputs left out)
        outputs = {checkpoint.name, "fff-convert.jsonl"}
        files = sorted(f for f in Path(model_dir).iterdir() if f.is_file() and f.name not in outputs)
        meta["model_files"] = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    if corpus is not None:
        meta["corpus"] = corpus.fingerprint
    return {"checkpoint": checkpoint, "meta": meta}


def _print_scores(columns: dict[str, dict[str, tuple[float, int]]]) -> None:
    """One row per language, one column per model: bits per byte."""
    names = list(columns)
    print(f"{'lang':>6}  " + "  ".join(names))
    for lang in columns[names[0]]:
        print(f"{lang:>6}  " + "  ".join(f"{columns[n][lang][0]:{len(n)}.4f}" for n in names))


def _write_scores(args: argparse.Namespace, scores: dict[str, dict[str, tuple[float, int]]]) -> None:
    """The printed table as result records, ``OUT/fff-convert.jsonl`` (bench ``fff-convert``, metric ``bpb``)."""
    from recruit.records import Record, environment, write_records

    env = environment("cpu")
    model = Path(args.model or "gpt-tiny").name.replace(",", "_").replace("=", "_")  # a case is k=v,k=v
    base = f"model={model},depth={args.depth},trees={args.trees},steps={args.steps}"
    base += f",windows={args.windows},finetune_tokens={args.finetune_tokens},split=test"
    recs = [Record("fff-convert", f"{base},ff={column.removesuffix(' bpb')},lang={lang}", "bpb", bpb, "bits/byte", env)
            for column, by_lang in scores.items() for lang, (bpb, _) in by_lang.items()]  # fmt: skip
    write_records(Path(args.out) / "fff-convert.jsonl", recs)


def _text_windows(corpus, tokenizer, n: int, seq: int) -> torch.Tensor:
    """``n`` windows (n, seq) of the corpus's training text in ``tokenizer``'s ids, taken from each language in turn."""
    from recruit import measure

    per = -(-n // max(1, len(corpus.languages("train"))))  # windows per language, rounded up
    texts = measure.corpus_texts(corpus, "train", max_bytes=per * seq * 8)  # ample: a token is rarely over 8 bytes
    by_lang = []
    for text in texts.values():
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        k = min(per, len(ids) // seq)
        by_lang.append(list(ids[: k * seq].view(k, seq)))
    windows = [w for group in itertools.zip_longest(*by_lang) for w in group if w is not None][:n]
    if not windows:
        raise RecruitError(f"no language of the corpus has {seq} tokens of training text in this tokenizer")
    return torch.stack(windows)


def _convert_hf(args: argparse.Namespace) -> int:
    """``fff convert`` of a Hugging Face decoder: calibrate on the corpus text in its own tokens, save with FFFs."""
    from recruit import measure
    from recruit.data.corpus import Corpus
    from recruit.fff.decoder import distil_decoder, save_fff_decoder
    from recruit.models.hf import load_hf_causal_lm
    from recruit.train import check_resumable, train_steps

    lm = load_hf_causal_lm(args.model)
    if lm.tokenizer is None:
        raise RecruitError(f"{args.model} has no tokenizer files: fff convert tokenizes the corpus text with the "
                           "model's own tokenizer (save it beside the model with save_pretrained)")  # fmt: skip
    corpus = Corpus.load(args.corpus)
    seq = min(256, getattr(lm.config.get_text_config(), "max_position_embeddings", 256) or 256)
    ft_steps = _finetune_steps(args, seq) if args.finetune_tokens else 0
    if ft_steps:  # a stopped fine-tuning of another run is refused before the distillation, not after
        check_resumable(steps=ft_steps, lr=args.finetune_lr, **_finetune_checkpoint(args, args.model, corpus))
    windows = _text_windows(corpus, lm.tokenizer, args.windows + ft_steps * FINETUNE_BATCH, seq)  # (W, T)
    calibrate, tune = windows[: args.windows], windows[args.windows :]  # the fine-tuning cycles through the rest
    score = lambda: measure.corpus_bits_per_byte(lm.forward, corpus, "test", seq_len=seq,  # noqa: E731
                                                 max_bytes=args.max_bytes, tokenizer=lm.tokenizer)  # fmt: skip
    with torch.no_grad():
        scores = {"dense bpb": score()}
    reports = distil_decoder(lm.model, calibrate, args.depth, args.trees, steps=args.steps, progress=not args.quiet)
    _print_reports(reports)
    lm.model.eval()
    with torch.no_grad():
        scores["fff bpb"] = score()
    if ft_steps:
        tune = tune if len(tune) else calibrate
        batch = lambda step: tune[torch.arange(step * FINETUNE_BATCH, (step + 1) * FINETUNE_BATCH) % len(tune)]  # noqa: E731
        train_steps(lm.model, batch, ft_steps, args.finetune_lr, lambda m, ids: m(input_ids=ids, labels=ids).loss,
                    progress=not args.quiet, desc="fff finetune",
                    **_finetune_checkpoint(args, args.model, corpus))  # fmt: skip
        lm.model.eval()
        with torch.no_grad():
            scores["fff+ft bpb"] = score()
    _print_scores(scores)
    save_fff_decoder(lm.model, args.out, lm.tokenizer)
    _write_scores(args, scores)
    _finetune_checkpoint(args)["checkpoint"].unlink(missing_ok=True)
    print(f"FFF model saved to {Path(args.out)} (load it with recruit.models.hf.load_hf_causal_lm)")
    return 0


def add_fff_parser(subs) -> None:
    """Add ``fff`` with its actions ``train``, ``bench`` and ``convert`` to the subparsers ``subs``."""
    from recruit.cli import (
        _sub,
        add_corpus_arg,
        add_measure_args,
        add_parser,
        add_set_arg,
        add_train_args,
        bounded_int,
        positive_float,
    )
    from recruit.fff.fff import MAX_DEPTH

    fff = add_parser(subs, "fff", __doc__, help="Fast Feedforward: train, benchmark, convert a dense GPT's MLPs")
    fsubs = fff.add_subparsers(dest="fff_command", metavar="ACTION")
    add_train_args(
        _sub(fsubs, "train", cmd_fff_train), "training preset (gpt-nano, gpt-tiny, gpt-small; default gpt-tiny)"
    )

    p = _sub(fsubs, "bench", cmd_fff_bench)
    p.add_argument("--quality", action="store_true", help="dense vs FFF vs no MLP at equal budget (trains)")
    p.add_argument("--out", default="results", help="output directory (default: results)")
    add_set_arg(p)  # fields of fff-quality's config (with --quality), else the speed cases' selection
    add_measure_args(p)

    p = _sub(fsubs, "convert", cmd_fff_convert)
    p.add_argument(
        "model",
        nargs="?",
        help="GPT checkpoint directory (default: the shipped gpt-tiny), or a "
        "Hugging Face decoder directory with its tokenizer",
    )
    p.add_argument("--out", required=True, help="where to save the converted model")
    p.add_argument("--depth", type=bounded_int(0, MAX_DEPTH), default=8, help="FFF tree depth (default 8: 511 nodes)")
    p.add_argument(
        "--trees",
        type=bounded_int(1),
        default=1,
        help="K trees of --depth (a forest distils better: see fff-distil; default 1)",
    )
    p.add_argument("--steps", type=bounded_int(1), default=2000, help="distillation steps per layer")
    p.add_argument("--windows", type=bounded_int(1), default=64, help="training windows whose activations are recorded")
    p.add_argument(
        "--finetune-tokens",
        type=bounded_int(0),
        default=0,
        help="then train the converted model end to end on this many corpus tokens (default 0: none)",
    )
    p.add_argument("--finetune-lr", type=positive_float, default=3e-4, help="peak learning rate of that fine-tuning")
    add_corpus_arg(p)
    p.add_argument("--max-bytes", type=bounded_int(1), default=32768, help="held-out bytes scored per language")

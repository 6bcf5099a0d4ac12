"""The ``recruit`` command: one subcommand per task; each handler's docstring is its ``--help``.

Errors caused by input (missing corpus, bad config, corrupt checkpoint) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from recruit.errors import RecruitError

log = logging.getLogger("recruit")


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Build the text corpus from Debian packages (Python docs; man pages in en, de, fr, pl, ru, es) or your text.

    The corpus goes to the cache directory (see --cache-dir) under corpus/NAME.
    """
    from recruit.data.corpus import Corpus, prepare_corpus

    if args.lang and not args.text:
        raise RecruitError("--lang tags your own text: it goes with --text (the Debian corpus tags its languages)")
    name = args.name or ("text" if args.text else "debian")
    lang = args.lang or "xx"
    path = prepare_corpus(name=name, text=args.text, lang=lang, force=args.force, progress=not args.quiet)
    print(Corpus.load(path).summary())
    print(f"corpus written to {path}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    """Print the sizes of a prepared corpus per split, language and kind."""
    from recruit.data.corpus import Corpus

    print(Corpus.load(args.name).summary())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model on a prepared corpus (resumes from OUT_DIR/ckpt.pt when present).

    Pick a preset (--preset) and/or a JSON/TOML file (--config), then override any field with --FIELD VALUE;
    model config fields are --model.FIELD VALUE. Fields: model, model_args, corpus, out_dir, seq_len,
    batch_size, max_steps, lr, min_lr_ratio, warmup_steps, weight_decay, beta1, beta2, grad_clip, eval_every,
    eval_windows, ckpt_every, log_every, seed, device, precision, threads, probe_mix.
    """
    from recruit.config import load_config_file, parse_overrides
    from recruit.train import make_config

    file_data = load_config_file(args.config) if args.config else None
    cfg = make_config(args.preset or (None if file_data else "gpt-tiny"), file_data, parse_overrides(args.overrides))
    return fit_and_report(cfg, quiet=args.quiet)


def fit_and_report(cfg, quiet: bool = False) -> int:
    """Train ``cfg`` (a :class:`recruit.train.TrainConfig`) on its corpus and print where the model went."""
    from recruit.data.corpus import Corpus
    from recruit.train import Trainer

    corpus = Corpus.load(cfg.corpus)
    trainer = Trainer(cfg, corpus.tokens("train"), corpus.tokens("val"), progress=not quiet)
    trainer.fit()
    last = next((h for h in reversed(trainer.history) if "val_loss" in h), None)
    if last is not None:
        print(f"step {trainer.step}: held-out loss {last['val_loss']:.4f} nats/token")
    print(f"model saved to {Path(cfg.out_dir) / 'final'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Held-out bits per byte of a checkpoint per language (and per kind with --by kind)."""
    from recruit import checkpoints, measure
    from recruit.data.corpus import Corpus
    from recruit.models import load_model
    from recruit.train import resolve_device

    device = resolve_device(args.device)
    model = load_model(args.model or checkpoints.path()).to(device)
    corpus = Corpus.load(args.corpus)
    seq = min(256, getattr(model.config, "max_seq_len", 256))
    res = measure.corpus_bits_per_byte(
        model, corpus, args.split, seq_len=seq, max_bytes=args.max_bytes, group=args.by, device=device
    )
    if not res:
        raise RecruitError(f"the {args.split} split of corpus {args.corpus!r} has no text to score")
    print(f"{args.by:>6}  bits/byte  bytes")
    for k, (bpb, n) in res.items():
        print(f"{k:>6}  {bpb:9.4f}  {n}")
    return 0


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt of ``--prompt`` or ``--prompt-file``; empty, unreadable or non-UTF-8 input is an error."""
    if getattr(args, "prompt_file", None) is not None:
        try:
            data = Path(args.prompt_file).read_bytes()
        except OSError as e:
            raise RecruitError(f"cannot read the prompt file {args.prompt_file}: {e.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecruitError(
                f"the prompt file {args.prompt_file} is not valid UTF-8 "
                f"(byte 0x{data[e.start]:02x} at offset {e.start})"
            ) from None
    else:
        text = args.prompt or ""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # undecodable argv bytes arrive as lone surrogates
            raise RecruitError(f"the prompt is not valid UTF-8 (at character {e.start})") from None
    if not text:
        hint = "--prompt TEXT or --prompt-file PATH" if hasattr(args, "prompt_file") else "--prompt TEXT"
        raise RecruitError(f"the prompt is empty: pass {hint}")
    return text


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue a prompt with a checkpoint (byte-level models; tags the prompt with --lang and --kind)."""
    import torch

    from recruit import checkpoints
    from recruit.data.tokenizer import ByteTokenizer
    from recruit.models import load_model
    from recruit.train import resolve_device

    prompt = read_prompt(args)
    device = resolve_device(args.device)
    model = load_model(args.model or checkpoints.path()).to(device)
    tok = ByteTokenizer()
    ids = [tok.lang_id(args.lang), tok.kind_id(args.kind), *tok.encode(prompt)]
    g = torch.Generator(device=device).manual_seed(args.seed)
    out = model.generate(
        torch.tensor([ids], device=device),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        greedy=args.greedy,
        generator=g,
    )
    print(tok.decode(out[0, 2:].tolist()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a registered benchmark and write its result records to OUT/NAME.jsonl (--list shows them all).

    While it runs, each record is appended to OUT/NAME.partial.jsonl as it is measured (replacing an earlier run's
    file at the first record); that file is deleted once NAME.jsonl is written, and kept if the run stops early.
    """
    from recruit import benchmarks
    from recruit.io import output_dir
    from recruit.records import PartialFile, write_records
    from recruit.report import format_records

    if args.list and args.name:
        raise RecruitError(f"--list lists every benchmark; to run {args.name}, leave --list out")
    if args.list or not args.name:
        for b in benchmarks.all_benches().values():
            print(f"{b.name:12} {b.summary}")
        return 0
    bench = benchmarks.get(args.name)
    if args.model is not None and not bench.takes_model:
        takers = ", ".join(b.name for b in benchmarks.all_benches().values() if b.takes_model)
        raise RecruitError(f"{bench.name} builds its own models and takes no --model (those that do: {takers})")
    output_dir(args.out, "--out", create=False)
    for path in (benchmarks.out_file(args.out, bench.name), benchmarks.partial_file(args.out, bench.name)):
        if path.is_dir():
            raise RecruitError(f"{path} is a directory; the benchmark writes a file there")
    overrides = {}
    for item in args.set:
        field, eq, value = item.partition("=")
        if not eq or not field:
            raise RecruitError(f"--set takes FIELD=VALUE, got {item!r}")
        overrides[field.strip().replace("-", "_")] = value
    opts = benchmarks.BenchOptions(
        model=args.model,
        corpus=args.corpus,
        device=args.device,
        quick=args.quick,
        max_bytes=args.max_bytes,
        progress=not args.quiet,
        overrides=overrides,
        sink=(partial := PartialFile(benchmarks.partial_file(args.out, bench.name))),
    )
    try:
        records = bench.run(opts)
    except BaseException:
        partial.close()
        if partial.count:
            print(f"{bench.name} stopped; the {partial.count} records it had measured are in {partial.path}",
                  file=sys.stderr)  # fmt: skip
        elif partial.earlier:
            print(f"{bench.name} stopped before measuring anything; {partial.path} is an earlier run's",
                  file=sys.stderr)  # fmt: skip
        raise
    path = write_records(benchmarks.out_file(args.out, bench.name), records)
    partial.finish()
    print(format_records(records))
    print(f"{len(records)} records written to {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The main job: measure the shipped defaults; write OUT/results.jsonl and OUT/index.html; print a table."""
    from recruit.benchmarks import BenchOptions
    from recruit.io import output_dir, output_file
    from recruit.report import format_records, run_report

    opts = BenchOptions(
        corpus=args.corpus, device=args.device, quick=args.quick, max_bytes=args.max_bytes, progress=not args.quiet
    )
    output_dir(args.out, "--out", create=False)
    if args.markdown:
        output_file(args.markdown, "--markdown", create=False)
    records, html_path = run_report(args.out, opts, include=args.include)
    if args.markdown:
        from recruit.io import atomic_write_text
        from recruit.report.terminal import format_markdown

        atomic_write_text(args.markdown, format_markdown(records, "recruit report " + " ".join(args.argv)))
    print(format_records(records))
    print(f"{len(records)} records in {Path(args.out) / 'results.jsonl'}; page: {html_path}")
    return 0


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [low, high] (a bad value is argparse's one-line error, exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def finite_float(text: str) -> float:
    """An argparse ``type``: a finite number (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    where = "$RECRUIT_CACHE, else $XDG_CACHE_HOME/recruit, else ~/.cache/recruit"
    p.add_argument("--cache-dir", help=f"cache directory (default {where})")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (paragraphs kept); every option's help ends with its default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default == [] or default == argparse.SUPPRESS
        shown = not unset and action.option_strings
        if shown and "default" not in text and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def plain(doc: str | None) -> str:
    """A docstring as terminal text: indentation removed, ``literal`` and :role:`~target` markup as `literal`."""
    text = inspect.cleandoc(doc or "")
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def add_parser(subs, name: str, doc: str | None, help: str | None = None) -> argparse.ArgumentParser:
    """A subcommand's parser, with ``doc`` (a docstring) as its description and recruit's help formatter.

    ``help``, its line in the parent's list, defaults to the description's first line.
    """
    text = plain(doc)
    return subs.add_parser(name, help=help or text.splitlines()[0], description=text, formatter_class=HelpFormatter)


def _sub(subs, name: str, fn: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    p = add_parser(subs, name, fn.__doc__)
    p.set_defaults(fn=fn)
    _common(p)
    return p


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """The tagging and sampling options shared by every ``generate`` command."""
    from recruit.data.tokenizer import KINDS, LANGUAGES

    p.add_argument("--lang", default="en", choices=LANGUAGES, help="language tag of the prompt")
    p.add_argument("--kind", default="manual", choices=KINDS, help="kind tag of the prompt")
    p.add_argument("--max-new-tokens", type=bounded_int(1), default=200, help="tokens to generate")
    p.add_argument("--temperature", type=finite_float, default=0.8, help="sampling temperature")
    p.add_argument("--top-k", type=bounded_int(1), default=None, help="sample from the K most likely tokens only")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (no sampling)")
    p.add_argument("--seed", type=bounded_int(0), default=0, help="seed of the sampler")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="recruit",
        description="recruit: make transformers do less work per input (corpus, train, bench, report).",
        formatter_class=HelpFormatter,
    )
    from recruit.data.tokenizer import LANGUAGES

    parser.add_argument("--version", action="version", version=f"recruit {_version()}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = add_parser(subs, "data", "Build or inspect the corpus.", help="build or inspect the text corpus")
    dsubs = data.add_subparsers(dest="data_command", metavar="ACTION")
    p = _sub(dsubs, "prepare", cmd_data_prepare)
    p.add_argument("--name", help="corpus name (default: debian, or text with --text)")
    p.add_argument("--text", help="a file or directory of your own UTF-8 text instead of the Debian packages")
    p.add_argument("--lang", choices=LANGUAGES, help="language tag of --text (default xx: other or unknown)")
    p.add_argument("--force", action="store_true", help="rebuild even if the corpus exists")
    p = _sub(dsubs, "info", cmd_data_info)
    p.add_argument("--name", default="debian", help="corpus name or directory")

    add_train_args(_sub(subs, "train", cmd_train), "training preset: gpt-nano, gpt-tiny, gpt-small")

    p = _sub(subs, "eval", cmd_eval)
    p.add_argument("model", nargs="?", help="checkpoint directory (default: the shipped gpt-tiny)")
    add_corpus_arg(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="corpus split scored")
    p.add_argument("--by", default="lang", choices=["lang", "kind"], help="group the scores by language or kind")
    p.add_argument("--max-bytes", type=bounded_int(1), default=65536, help="bytes scored per group")
    add_device_arg(p, "auto")

    p = _sub(subs, "generate", cmd_generate)
    p.add_argument("model", nargs="?", help="checkpoint directory (default: the shipped gpt-tiny)")
    p.add_argument("--prompt", required=True, help="prompt text")
    add_generation_args(p)
    add_device_arg(p, "auto")

    from recruit.cli_bdh import add_bdh_parser
    from recruit.cli_fff import add_fff_parser

    add_bdh_parser(subs)
    add_fff_parser(subs)

    for name, fn in (("bench", cmd_bench), ("report", cmd_report)):
        p = _sub(subs, name, fn)
        if name == "bench":
            p.add_argument("name", nargs="?", help="benchmark name (see --list)")
            p.add_argument("--list", action="store_true", help="list the benchmarks")
            p.add_argument("--model", help="checkpoint directory (default: the shipped one)")
            p.add_argument("--out", default="results", help="output directory (default: results)")
            add_set_arg(p)
        else:
            p.add_argument("--out", default="report", help="output directory (default: report)")
            p.add_argument("--include", nargs="*", default=[], help="more record files to add to the page")
            p.add_argument("--markdown", help="also write the records as Markdown tables to this file")
        add_measure_args(p)
    return parser


def add_train_args(p: argparse.ArgumentParser, preset_help: str) -> None:
    """The options of every training command: --preset, --config, and --FIELD VALUE overrides."""
    p.add_argument("--preset", help=preset_help)
    p.add_argument("--config", help="JSON or TOML file of training config fields")
    p.set_defaults(accepts_overrides=True)


def add_set_arg(p: argparse.ArgumentParser) -> None:
    """``--set FIELD=VALUE`` (repeatable): fields of a benchmark's config, for the commands that run one."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of the benchmark's config (repeatable); sequences as JSON or a,b,c",
    )


def add_measure_args(p: argparse.ArgumentParser) -> None:
    """The options every measuring command shares: corpus, device, quick mode, held-out bytes."""
    add_corpus_arg(p)
    add_device_arg(p, "auto")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    p.add_argument("--max-bytes", type=bounded_int(1), default=32768, help="held-out bytes scored per language")


def add_corpus_arg(p: argparse.ArgumentParser) -> None:
    """``--corpus``: a prepared corpus by name (in the cache) or directory."""
    p.add_argument("--corpus", default="debian", help="prepared corpus: a name in the cache, or its directory")


def add_device_arg(p: argparse.ArgumentParser, default: str) -> None:
    """``--device``: where the command runs."""
    p.add_argument("--device", default=default, help="cpu, cuda, cuda:N, or auto (cuda when there is one)")


def _version() -> str:
    from recruit import __version__

    return __version__


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``argv`` names, so that its errors show that command's usage."""
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            if not word.startswith("-") and subs:
                break
            continue
        parser = subs[0].choices[word]
    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread: a command unwinds as on Ctrl-C instead of dying mid-write.

    Temporary files are removed and partial records kept, as for ``KeyboardInterrupt``.
    """


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recruit`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        _command_parser(parser, argv if argv is not None else sys.argv[1:]).error(
            f"unrecognized arguments: {' '.join(extra)}"
        )
    args.overrides = extra
    args.argv = list(argv if argv is not None else sys.argv[1:])[1:]
    if not hasattr(args, "fn"):  # a command without its action (recruit data, bdh, fff), or none: usage, status 2
        if args.command:
            with contextlib.suppress(SystemExit):  # argparse's --help exits 0
                parser.parse_args([args.command, "--help"])
        else:
            parser.print_help()
        return 2
    quiet = getattr(args, "quiet", False)
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.cache_dir:
        os.environ["RECRUIT_CACHE"] = str(Path(args.cache_dir).expanduser().resolve())
    previous = (
        signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        return args.fn(args)
    except RecruitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

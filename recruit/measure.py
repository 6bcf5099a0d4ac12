"""The one measurement harness: quality (bits per byte, perplexity) and cost (parameters, FLOPs, time, memory).

Every technique is measured with these functions against its dense baseline on the same data, and every
figure becomes a :class:`recruit.records.Record`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from recruit.cuda_graphs import capture_cuda_graph
from recruit.data.stream import eval_windows
from recruit.errors import RecruitError

T = TypeVar("T")
K = TypeVar("K")

LN2 = math.log(2.0)


# ---- quality -----------------------------------------------------------------------------------------
@dataclass
class NLL:
    """Summed negative log-likelihood (nats) over counted targets."""

    nats: float
    targets: int

    @property
    def bits_per_target(self) -> float:
        """Mean bits per counted target; an error when nothing was counted (there is no mean to give)."""
        if self.targets <= 0:
            raise RecruitError("no target was scored (every token a tag, or too few tokens): no bits per byte to give")
        return self.nats / self.targets / LN2


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def nll(
    model: Callable[[torch.Tensor], Any],
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    max_windows: int | None = None,
    n_bytes: int | None = 256,
) -> NLL:
    """Summed next-token NLL of ``model`` over non-overlapping windows of ``tokens``.

    Args:
        model: Maps (B, T) ids to logits (B, T, V) (or a tuple whose first item is the logits).
        tokens: (N,) ids.
        seq_len: Window length; each window predicts ``seq_len`` targets.
        batch_size: Windows per forward pass.
        device: Where to run.
        max_windows: Evaluate at most this many windows (the first ones, deterministic).
        n_bytes: Count only targets with id < ``n_bytes`` (bytes, not tag tokens) for the byte tokenizer;
            ``None`` counts every target.
    """
    windows = eval_windows(tokens, seq_len, max_windows)  # (W, T + 1)
    nats, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size].to(device)
        x, y = w[:, :-1], w[:, 1:]  # (b, T) each
        losses = F.cross_entropy(_logits(model(x)).float().flatten(0, 1), y.flatten(), reduction="none")  # (b*T,)
        keep = torch.ones_like(losses, dtype=torch.bool) if n_bytes is None else y.flatten() < n_bytes
        nats += losses[keep].sum().item()
        count += int(keep.sum().item())
    return NLL(nats, count)


def bits_per_byte(model, tokens: np.ndarray, seq_len: int, **kw) -> float:
    """Bits per byte of a byte-level model: NLL over byte targets ÷ their count ÷ ln 2."""
    return nll(model, tokens, seq_len, n_bytes=256, **kw).bits_per_target


def _group_docs(corpus, split: str, max_bytes: int | None, group: str, lang: str | None) -> dict[str, list[np.ndarray]]:
    """Each group's documents of ``split`` (tagged byte ids), in a fixed pseudo-random order, to ``max_bytes``."""
    if group not in ("lang", "kind"):
        raise RecruitError(f"group must be 'lang' or 'kind', got {group!r}")
    toks = corpus.tokens(split)
    by: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, int] = {}
    docs = sorted(corpus.docs(split), key=lambda d: hashlib.sha1(d.id.encode()).hexdigest())
    for doc in docs:
        if lang is not None and doc.lang != lang:
            continue
        key = getattr(doc, group)
        if max_bytes is not None and sizes.get(key, 0) >= max_bytes + 1:
            continue
        by.setdefault(key, []).append(np.asarray(toks[doc.offset : doc.offset + doc.length]))
        sizes[key] = sizes.get(key, 0) + doc.length
    return {key: by[key] for key in sorted(by)}


def corpus_texts(
    corpus, split: str = "test", max_bytes: int | None = 65536, group: str = "lang", lang: str | None = None
) -> dict[str, str]:
    """The text of each language's (or kind's) documents of a corpus split, for models with their own tokenizer.

    The documents :func:`corpus_bits_per_byte` scores, in its order, without their tags, separated by a blank
    line and cut to at most ``max_bytes`` UTF-8 bytes (on a character boundary).
    """
    out = {}
    for key, docs in _group_docs(corpus, split, max_bytes, group, lang).items():
        data = b"\n\n".join(d[d < 256].astype(np.uint8).tobytes() for d in docs)  # the byte ids; tags dropped
        out[key] = data[: None if max_bytes is None else max_bytes].decode("utf-8", errors="ignore")
    return out


def corpus_bits_per_byte(
    model,
    corpus,
    split: str = "test",
    seq_len: int = 256,
    max_bytes: int | None = 65536,
    group: str = "lang",
    lang: str | None = None,
    tokenizer=None,
    **kw,
) -> dict[str, tuple[float, int]]:
    """Bits per byte of a model per language (or kind) on a corpus split.

    The documents of each group are taken in a fixed pseudo-random order (by a hash of their id, so a sample
    is not all from one man-page section), concatenated with their tags (the model sees
    ``<lang:de> <kind:manual>`` before each document) and cut to ``max_bytes`` tokens. With a ``tokenizer``
    (a model with its own vocabulary, such as a Hugging Face checkpoint) the group's text (:func:`corpus_texts`)
    is tokenized by it instead, every target token counts, and the NLL is divided by the UTF-8 bytes of the
    scored tokens.

    Args:
        model: Maps (B, T) ids to logits.
        corpus: A :class:`recruit.data.corpus.Corpus`.
        split: ``train``, ``val`` or ``test``.
        seq_len: Window length.
        max_bytes: Tokens (with a tokenizer: text bytes) scored per group (``None``: all).
        group: ``lang`` or ``kind``.
        lang: Only documents of this language (e.g. ``en`` to compare kinds within one language).
        tokenizer: Anything with ``encode(text) -> ids`` and ``decode(ids) -> text``; None: byte-level ids.
        **kw: Passed to :func:`nll` (``device``, ``batch_size``).

    Returns:
        ``{group value: (bits per byte, bytes scored)}``.
    """
    out = {}
    if tokenizer is not None:
        for key, text in corpus_texts(corpus, split, max_bytes, group, lang).items():
            ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
            n = (len(ids) - 1) // seq_len * seq_len  # targets in whole windows
            if n == 0:
                continue
            r = nll(model, ids[: n + 1], seq_len, n_bytes=None, **kw)
            scored = len(tokenizer.decode(ids[1 : r.targets + 1].tolist()).encode("utf-8"))
            out[key] = (r.nats / max(scored, 1) / LN2, scored)
        return out
    for key, docs in _group_docs(corpus, split, max_bytes, group, lang).items():
        arr = np.concatenate(docs)[: None if max_bytes is None else max_bytes + 1]
        if len(arr) < seq_len + 1:
            continue
        r = nll(model, arr, seq_len, n_bytes=256, **kw)
        if r.targets:  # a group of tags only has no bytes to score
            out[key] = (r.bits_per_target, r.targets)
    return out


# ---- cost --------------------------------------------------------------------------------------------
def count_params(model: torch.nn.Module) -> int:
    """Distinct parameters (shared/tied tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    shape = lambda t: t.shape if hasattr(t, "shape") else t  # noqa: E731
    return flop_counter.sdpa_flop_count(shape(query), shape(key), shape(value))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (multiply-add = 2) of running ``fn`` once, counted by ``torch.utils.flop_counter``.

    torch's counter knows the CUDA attention kernels but not the CPU flash kernel; we register the same
    formula for it, so attention is counted on every device (as the full T×S score matrix, causal or not).
    An FFF layer in eval mode (hard inference, whose fused kernels the counter cannot see) counts as
    :meth:`~recruit.fff.fff.FastFeedForward.inference_flops`; in training mode its torch forward is counted.
    """
    from recruit.fff.fff import FastFeedForward

    mapping = {}
    cpu_op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_op is not None:
        mapping[cpu_op] = _sdpa_cpu_flops
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=mapping)
    fff_calls: dict[int, int] = {}  # id(module) -> the counter's total when its eval forward began
    extra = 0  # FFF hard inference: its analytic FLOPs in place of what the counter saw of it (the fused
    # kernels run outside torch's operators; the torch fallback's gathers are counted as their own ops)

    def before(module: nn.Module, args: tuple) -> None:
        if isinstance(module, FastFeedForward) and not module.training:
            fff_calls[id(module)] = counter.get_total_flops()

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        nonlocal extra
        if id(module) in fff_calls:
            seen = counter.get_total_flops() - fff_calls.pop(id(module))
            extra += module.inference_flops(args[0].numel() // module.config.dim_in) - seen

    hooks = [nn.modules.module.register_module_forward_pre_hook(before),
             nn.modules.module.register_module_forward_hook(after)]  # fmt: skip
    try:
        with counter, torch.no_grad():
            fn()
    finally:
        for h in hooks:
            h.remove()
    return int(counter.get_total_flops()) + extra


def gpt_forward_flops(cfg, seq_len: int, batch: int = 1, context: int = 0) -> int:
    """Analytic forward FLOPs of :class:`recruit.models.gpt.GPT` (the same convention as :func:`count_flops`).

    Args:
        cfg: A :class:`recruit.models.gpt.GPTConfig`.
        seq_len: New tokens per sequence (T).
        batch: Sequences (B).
        context: Tokens already in the KV cache; keys span S = context + T.
    """
    d, hd, T, S = cfg.d_model, cfg.head_dim, seq_len, context + seq_len
    proj = 2 * T * d * (cfg.n_head * hd + 2 * cfg.n_kv_head * hd) + 2 * T * cfg.n_head * hd * d
    attn = 2 * 2 * T * S * cfg.n_head * hd  # scores and weighted values
    if cfg.mlp == "fff":  # hard routing: (depth + 1) nodes per tree, each one row in and one column out
        mlp = 2 * T * d * (cfg.fff_depth + 1) * cfg.fff_trees * 2
    else:
        mlp = 0 if cfg.mlp == "none" else 2 * T * d * cfg.d_ff * (3 if cfg.mlp == "swiglu" else 2)
    head = 2 * T * d * cfg.vocab_size
    return batch * (cfg.n_layer * (proj + attn + mlp) + head)


def sync(device: str | torch.device) -> None:
    """Wait for queued work on ``device``."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall-clock statistics of repeated calls, in seconds."""

    median: float
    p10: float
    p90: float
    repeats: int


def _timed_calls(fn: Callable[[], Any], cuda: bool, device, repeats: int, min_time: float) -> list[float]:
    """Seconds of each of at least ``repeats`` calls of ``fn()``, until ``min_time`` seconds were timed.

    Nothing but ``fn`` and the synchronisation runs between the clock reads, and little between calls:
    summing the growing list of times each round would sweep it through the cache between calls (thousands
    of floats at batch 1), evicting what a sub-10 µs ``fn`` had in cache; resolving the device costs a µs.
    """
    times: list[float] = []
    total = 0.0
    while len(times) < repeats or total < min_time:
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        times.append(elapsed)
        total += elapsed
    return times


def _timing(times: list[float]) -> Timing:
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return Timing(statistics.median(times), q[0], q[-1], len(times))


def time_fn(
    fn: Callable[[], Any], device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 10, min_time: float = 0.0
) -> Timing:
    """Median wall time of ``fn()`` after ``warmup`` calls, with the device synchronised around each call.

    Args:
        fn: The work to time.
        device: Device to synchronise.
        warmup: Untimed calls first (compilation, caches, allocator).
        repeats: Timed calls (at least this many).
        min_time: Keep repeating until this many seconds were timed in total.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    sync(device)
    return _timing(_timed_calls(fn, torch.device(device).type == "cuda", device, repeats, min_time))


def time_interleaved(
    fns: dict[K, Callable[[], Any]],
    device: str | torch.device = "cpu",
    rounds: int = 5,
    warmup: int = 3,
    repeats: int = 2,
    min_time: float = 0.0,
) -> dict[K, Timing]:
    """Wall time of several functions whose times are compared, timed in alternating blocks.

    Each of ``rounds`` rounds runs every function in turn: ``warmup`` untimed calls (its caches, after the
    others ran), then at least ``repeats`` timed calls and ``min_time`` seconds. The statistics of each
    function pool the times of all its rounds. On a shared machine whose speed drifts (other tenants,
    clocks), every function then sees the same spells of slowness, so the ratios of the medians hold where
    back-to-back timing would credit one side with a quiet spell.
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"need rounds >= 1 and repeats >= 1, got {rounds} and {repeats}")
    cuda = torch.device(device).type == "cuda"
    times: dict[K, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(warmup):
                fn()
            sync(device)
            times[k] += _timed_calls(fn, cuda, device, repeats, min_time)
    return {k: _timing(v) for k, v in times.items()}


def time_cuda_graph(fn: Callable[[int], Any], device: str | torch.device, calls: int = 16, repeats: int = 5) -> Timing:
    """GPU time per call of ``fn(i)``, i = 0..calls−1, captured back to back in one CUDA graph and replayed.

    This is the kernels' own time, without the Python and launch overhead that a wall clock sees around a
    single call (which dominates sub-10 µs kernels); ``fn(i)`` should read a distinct input per ``i`` so that
    calls do not find each other's data in cache. Statistics are over ``repeats`` replays of the graph.
    """

    def all_calls() -> None:
        for i in range(calls):
            fn(i)

    graph, _ = capture_cuda_graph(all_calls, device, warmup=1)
    graph.replay()
    sync(device)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return Timing(statistics.median(times), q[0], q[-1], len(times))


def _rss_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int | None:
    """Peak memory that running ``fn`` adds, in bytes.

    CUDA: ``max_memory_allocated`` above what was allocated before. CPU (Linux): the peak resident set
    (VmHWM, reset through ``/proc/self/clear_refs``) above the resident set before; ``None`` elsewhere.
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    _malloc_trim()  # hand freed heap pages back to the OS so that reused memory shows up in the peak
    before = _rss_bytes("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    fn()
    peak = _rss_bytes("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0)


@contextlib.contextmanager
def threads(n: int | None):
    """Run a block with ``torch.set_num_threads(n)``; ``None`` leaves the setting alone."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)

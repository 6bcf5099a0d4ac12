"""FFF in a whole decoder: one decoded token and a prompt's prefill against the dense decoder, same run.

``recruit bench fff-model --out DIR``. ``recruit bench fff`` times the feed-forward layer alone; a user runs the
whole model, whose attention, norms and LM head stay dense (Amdahl). Here three decoders that differ only in
their MLP are timed in alternating blocks of one run:

- ``dense``: the dense MLP of the aligned width 2^(D+1) (4096 at the default shape);
- ``fff``: a depth-D FFF (2^(D+1) − 1 neurons, D + 1 of them used per token), on the fused kernel;
- ``none``: no MLP at all, the bound that any cheaper MLP approaches.

Two families, each timed on its own: recruit's :class:`~recruit.models.gpt.GPT` (GELU MLP; model ``d768-l12-h12``)
and a Hugging Face ``LlamaForCausalLM`` built from a config (SwiGLU MLP of three matrices, RoPE, RMSNorm; model
``llama-d768-l12-h12``), converted the way a user converts their own checkpoint:
:func:`~recruit.fff.decoder.replace_decoder_mlps` and :func:`~recruit.fff.decoder.drop_decoder_mlps` on copies
of the dense model, decoded through Hugging Face's own ``forward`` and ``DynamicCache``.

Default shape: d_model 768, 12 layers, 12 heads (BERT-base's widths), depth 11, the byte vocabulary, float32.
The weights are random: this measures speed only (quality at an equal budget is ``fff-quality``'s); random
routers send tokens all over the tree, as the layer benchmark's random inputs do. Cases: one token decoded
after a context of ``context`` tokens (KV cache; each call is rolled back, so every call sees the same
context), and a prompt of ``prompt`` tokens prefilled (batch 1, no cache: ``prompt`` tokens through every FF at
once). ``speedup`` = dense time ÷ time.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from recruit import measure
from recruit.benchmarks import Bench, BenchOptions, checks, fixed_cases, register
from recruit.fff.decoder import drop_decoder_mlps, replace_decoder_mlps
from recruit.models import GPT
from recruit.models.gpt import GPTConfig
from recruit.records import Record, environment
from recruit.train import resolve_device

log = logging.getLogger(__name__)
BENCH = "fff-model"
MLPS = ("dense", "fff", "none")


@dataclass(frozen=True)
class ModelShape:
    """The decoders' shape and the two cases' lengths."""

    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    depth: int = 11  # FFF depth; the dense MLP's width is 2^(depth+1)
    context: int = 128  # tokens already in the KV cache when one token is decoded
    prompt: int = 128  # tokens prefilled at once
    family: str = "gpt"  # "gpt": recruit's GPT; "llama": a Hugging Face LlamaForCausalLM

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if min(self.d_model, self.n_layer, self.n_head, self.context, self.prompt) < 1 or self.depth < 0:
            raise ValueError(f"every size of {self} must be positive (depth >= 0)")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_head {self.n_head}")
        checks.fff_shape(f"shape {self.label}", self.depth)

    @property
    def label(self) -> str:
        """The shape in a case string: ``d768-l12-h12``, ``llama-d768-l12-h12``."""
        return ("" if self.family == "gpt" else f"{self.family}-") + f"d{self.d_model}-l{self.n_layer}-h{self.n_head}"


FAMILIES = ("gpt", "llama")
DEFAULT_SHAPE = ModelShape()
QUICK_SHAPE = ModelShape(d_model=64, n_layer=2, n_head=2, depth=5, context=16, prompt=16)
DEFAULT_SHAPES = (DEFAULT_SHAPE, replace(DEFAULT_SHAPE, family="llama"))
QUICK_SHAPES = (QUICK_SHAPE, replace(QUICK_SHAPE, family="llama"))


def build_models(shape: ModelShape, device: torch.device, seed: int = 0) -> dict[str, nn.Module]:
    """The three decoders of ``shape`` (see the module docstring), in eval mode.

    Random weights from ``seed``; everything outside the MLPs (embedding, attention, norms) is the same tensor
    values in all three.
    """
    if shape.family == "llama":
        return _build_llamas(shape, device, seed)
    common = dict(n_layer=shape.n_layer, n_head=shape.n_head, d_model=shape.d_model,
                  max_seq_len=max(shape.context + 1, shape.prompt))  # fmt: skip
    width = 2 ** (shape.depth + 1)
    configs = {
        "dense": GPTConfig(**common, mlp="gelu", d_ff=width),
        "fff": GPTConfig(**common, mlp="fff", d_ff=width - 1, fff_depth=shape.depth),
        "none": GPTConfig(**common, mlp="none"),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = {name: GPT(cfg).to(device).eval() for name, cfg in configs.items()}
    shared = {k: v for k, v in models["dense"].state_dict().items() if ".mlp." not in k}
    for name in ("fff", "none"):
        models[name].load_state_dict(shared, strict=False)  # the same weights outside the MLP
    return models


def _build_llamas(shape: ModelShape, device: torch.device, seed: int) -> dict[str, nn.Module]:
    """Hugging Face Llamas: a dense one from a config, and copies converted by :mod:`recruit.fff.decoder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=GPTConfig.vocab_size, hidden_size=shape.d_model,
                         intermediate_size=2 ** (shape.depth + 1), num_hidden_layers=shape.n_layer,
                         num_attention_heads=shape.n_head, num_key_value_heads=shape.n_head,
                         max_position_embeddings=max(shape.context + 1, shape.prompt),
                         tie_word_embeddings=False)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dense = LlamaForCausalLM(config).to(device).eval()
        fff = replace_decoder_mlps(copy.deepcopy(dense), shape.depth).eval()  # the FFFs drawn from the same seed
    return {"dense": dense, "fff": fff, "none": drop_decoder_mlps(copy.deepcopy(dense)).eval()}


def _decode_step(model: nn.Module, context: torch.Tensor, one: torch.Tensor) -> Callable[[], None]:
    """A call that decodes ``one`` (1, 1) after ``context`` (1, C) in the model's KV cache, then rolls it back.

    The context is prefilled here, which also builds the FFF layers' prepared kernels outside the timing. The
    call's ``cache`` attribute is that KV cache.
    """
    n = context.shape[1]
    if isinstance(model, GPT):
        cache = model.new_cache()
        model(context, cache=cache)

        def step() -> None:
            model(one, cache=cache)
            cache.truncate(n)

        step.cache = cache
        return step
    from transformers import DynamicCache

    hf_cache = DynamicCache()
    model(context, past_key_values=hf_cache, use_cache=True)

    def hf_step() -> None:
        model(one, past_key_values=hf_cache, use_cache=True)
        hf_cache.crop(n)

    hf_step.cache = hf_cache
    return hf_step


@torch.no_grad()
def measure_models(
    models: dict[str, nn.Module], shape: ModelShape, device: torch.device, rounds: int = 5, repeats: int = 20
) -> dict[str, dict[str, float]]:
    """Milliseconds per decoded token and per prefill of each model, timed in alternating blocks.

    Returns ``{"decode": {mlp: ms}, "prefill": {mlp: ms}}``.
    """
    g = torch.Generator().manual_seed(1)
    context = torch.randint(0, 256, (1, shape.context), generator=g).to(device)
    one = torch.randint(0, 256, (1, 1), generator=g).to(device)
    prompt = torch.randint(0, 256, (1, shape.prompt), generator=g).to(device)
    decode = {name: _decode_step(model, context, one) for name, model in models.items()}
    # a prompt as generation prefills it (a Llama builds a new KV cache: its mask is built faster with one)
    prefill = {name: (lambda model=model: model(prompt)) for name, model in models.items()}
    out = {}
    for kind, fns, n in (("decode", decode, repeats), ("prefill", prefill, max(2, repeats // 4))):
        timings = measure.time_interleaved(fns, device, rounds, warmup=2, repeats=max(1, n // rounds))
        out[kind] = {name: t.median * 1e3 for name, t in timings.items()}
    return out


def run(opts: BenchOptions, shapes: tuple[ModelShape, ...] | None = None) -> list[Record]:
    """Time the three decoders of each shape (default: :data:`DEFAULT_SHAPES`, quick: :data:`QUICK_SHAPES`)."""
    fixed_cases(opts, BENCH)
    device = resolve_device(opts.device)
    env = environment(device)
    recs = opts.recorder()
    for shape in shapes or (QUICK_SHAPES if opts.quick else DEFAULT_SHAPES):
        log.info("fff-model: building three %s decoders", shape.label)
        models = build_models(shape, device)
        ms = measure_models(models, shape, device, repeats=5 if opts.quick else 60)
        recs.extend(_records(shape, models, ms, env))
        del models
    return recs.records


def _records(
    shape: ModelShape, models: dict[str, nn.Module], ms: dict[str, dict[str, float]], env: dict
) -> list[Record]:
    """Parameters, times and speed-ups of one shape's three decoders."""
    recs: list[Record] = []
    cases = {"decode": f"B=1,context={shape.context}", "prefill": f"B=1,T={shape.prompt}"}
    metrics = {"decode": "decode_ms_per_token", "prefill": "prefill_ms"}
    for name, model in models.items():
        base = f"model={shape.label},mlp={name}" + (f",depth={shape.depth}" if name == "fff" else "")
        base += f",dense_width={2 ** (shape.depth + 1)}" if name == "dense" else ""
        recs.append(Record(BENCH, base, "params", measure.count_params(model), "", env))
        for kind, case in cases.items():
            value = ms[kind][name]
            recs.append(Record(BENCH, f"{base},{case}", metrics[kind], value, "ms", env))
            if name != "dense":
                recs.append(Record(BENCH, f"{base},{case},vs=dense", "speedup", ms[kind]["dense"] / value, "x", env))
    return recs


def section(records: list[Record]) -> str:
    """Decode and prefill time of the three decoders, and the speed-ups over dense."""
    from recruit.report.html import table

    cells: dict[tuple[str, str, str], dict[str, str]] = {}  # (device, model, mlp) -> column -> text
    for r in records:
        if r.bench != BENCH or "B" not in r.params:
            continue
        key = (str(r.env.get("device_name", r.env.get("device"))), r.params["model"], r.params["mlp"])
        kind = "decode" if "context" in r.params else "prefill"
        text = f"{r.value:.3g}x" if r.metric == "speedup" else f"{r.value:.3g}"
        cells.setdefault(key, {})[kind + (" speed-up" if r.metric == "speedup" else "")] = text
    if not cells:
        return ""
    columns = ("decode", "decode speed-up", "prefill", "prefill speed-up")
    rows = [[*key, *(c.get(col, "") for col in columns)] for key, c in cells.items()]
    return (
        "<p>Three decoders that differ only in their MLP (dense GELU of the aligned width, FFF on the fused kernel, "
        "no MLP), random weights, timed in alternating blocks of one run (<code>recruit bench fff-model</code>): "
        "what the FF layer's speed-up becomes in the whole model, where attention and the LM head stay dense. "
        "<code>none</code> is the bound for any cheaper MLP. Times in ms: one decoded token, one prefill.</p>"
        + table(["device", "model", "MLP", "decode ms/token", "speed-up", "prefill ms", "speed-up"], rows)
    )


register(Bench(BENCH, run, section, summary="FFF in a whole decoder: decode and prefill vs dense (same run)"))

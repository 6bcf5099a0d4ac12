"""Adapter for a local Hugging Face causal LM: find its blocks, swap modules, hook outputs, use its KV cache.

Techniques (KV eviction, module gating, layer linearity, FFF) reach a user's checkpoint (Llama, Qwen2,
Mistral, GPT-2 families) through :class:`HFCausalLM`, which attaches only through Hugging Face's own
extension points: forward hooks removed in ``finally``, and ``transformers.Cache`` objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property, partial, reduce
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PreTrainedModel

from recruit.data.tokenizer import HFTokenizer
from recruit.errors import RecruitError

log = logging.getLogger(__name__)

LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers")  # decoder blocks: Llama family, GPT-2/Falcon, NeoX
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")  # Llama family, GPT-2, GPT-NeoX, Falcon
MLP_NAMES = ("mlp",)  # feed-forward attribute of a block (both families)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

Kind = Literal["attention", "mlp", "layer"]


def _one_line(e: BaseException) -> str:
    """First line of an exception message, at most 200 characters."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


class _HiddenMap(nn.Module):
    """Wraps a ``(B, T, d) -> (B, T, d)`` map to be called as a decoder block: extra arguments are dropped."""

    def __init__(self, inner: nn.Module, as_tuple: bool) -> None:
        super().__init__()
        self.inner = inner
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor]:
        """Map the hidden states ``(B, T, d)``; every other argument is ignored."""
        out = self.inner(hidden_states)  # (B, T, d)
        return (out,) if self.as_tuple else out


class HFCausalLM:
    """A Hugging Face causal LM with uniform access to its blocks, modules, hidden states and KV cache.

    Args:
        model: A ``transformers`` causal LM whose blocks sit at one of :data:`LAYER_PATHS`.
        tokenizer: Its tokenizer, if any.

    Raises:
        RecruitError: If the decoder blocks are not found (the message names the model class).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: HFTokenizer | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        candidates = [reduce(lambda obj, name: getattr(obj, name, None), p.split("."), model) for p in LAYER_PATHS]
        found = [m for m in candidates if isinstance(m, nn.ModuleList)]
        if not found:
            where = " or ".join(LAYER_PATHS)
            raise RecruitError(f"unsupported model layout {type(model).__name__}: no decoder blocks at {where}")
        self._blocks: nn.ModuleList = found[0]
        text = self.config.get_text_config()
        self.hidden_size: int = text.hidden_size
        self.num_heads: int = text.num_attention_heads
        self.num_kv_heads: int = getattr(text, "num_key_value_heads", None) or self.num_heads
        self.head_dim: int = getattr(text, "head_dim", None) or self.hidden_size // self.num_heads

    @property
    def layers(self) -> list[nn.Module]:
        """The decoder blocks in order (a copy of the list; use :meth:`set_layer` to replace one)."""
        return list(self._blocks)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self._blocks)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def _child(self, i: int, names: tuple[str, ...], what: str) -> tuple[str, nn.Module]:
        block = self._blocks[i]
        for name in names:
            child = getattr(block, name, None)
            if isinstance(child, nn.Module):
                return name, child
        raise RecruitError(f"layer {i} ({type(block).__name__}) has no {what} module (looked for {', '.join(names)})")

    def attention(self, i: int) -> nn.Module:
        """The self-attention module of block ``i``; it maps ``(B, T, d)`` and returns ``(out, weights)``."""
        return self._child(i, ATTENTION_NAMES, "attention")[1]

    def mlp(self, i: int) -> nn.Module:
        """The feed-forward module of block ``i``; it maps ``(B, T, d) -> (B, T, d)``."""
        return self._child(i, MLP_NAMES, "mlp")[1]

    def set_mlp(self, i: int, module: nn.Module) -> None:
        """Replace the feed-forward module of block ``i`` by ``module``, a ``(B, T, d) -> (B, T, d)`` map."""
        name, _ = self._child(i, MLP_NAMES, "mlp")
        setattr(self._blocks[i], name, module)

    @cached_property
    def _blocks_return_tuple(self) -> bool:
        """Whether the model's blocks return a tuple (GPT-2) or a tensor (Llama family), found by one probe."""
        kinds: list[bool] = []
        handle = self._blocks[0].register_forward_hook(lambda _m, _a, out: kinds.append(isinstance(out, tuple)))
        probe = torch.zeros(1, 1, dtype=torch.long, device=self.device)  # (1, 1)
        try:
            with torch.no_grad():
                self.model.base_model(input_ids=probe, use_cache=False)
        finally:
            handle.remove()
        return kinds[0]

    def set_layer(self, i: int, module: nn.Module, raw: bool = False) -> None:
        """Replace the whole decoder block ``i``.

        Args:
            i: Block index.
            module: By default a ``(B, T, d) -> (B, T, d)`` map of the hidden states (e.g. an ``nn.Linear``);
                it is wrapped to accept the block's calling convention. Such a block neither reads nor
                writes the KV cache; keep block 0 a real attention block when decoding with a cache, since
                the model reads the cached length from layer 0.
            raw: Insert ``module`` as is; it must then take and return exactly what the replaced block does.
                Either way, plain attributes of the old block that ``module`` lacks are copied onto it.
        """
        old = self._blocks[i]
        if not raw:
            module = _HiddenMap(module, as_tuple=self._blocks_return_tuple)
        for key, value in vars(old).items():  # the model reads some, e.g. Qwen2's attention_type
            if not key.startswith("_") and isinstance(value, str | int | float | bool) and not hasattr(module, key):
                setattr(module, key, value)
        self._blocks[i] = module

    def forward(
        self, input_ids: torch.Tensor, past_key_values: DynamicCache | None = None, use_cache: bool = False
    ) -> torch.Tensor:
        """Next-token logits.

        Args:
            input_ids: Token ids ``(B, T)``; with a cache, only the new tokens.
            past_key_values: A cache from :meth:`new_cache`, extended in place with the new tokens.
            use_cache: Whether to use (and fill) a cache; implied when ``past_key_values`` is given.

        Returns:
            Logits ``(B, T, V)``.
        """
        use_cache = use_cache or past_key_values is not None
        out = self.model(input_ids=input_ids.to(self.device), past_key_values=past_key_values, use_cache=use_cache)
        return out.logits

    def hidden_states(self, input_ids: torch.Tensor, final_norm: bool = True) -> tuple[torch.Tensor, ...]:
        """The residual stream: embeddings, then the output of each block.

        Equal to Hugging Face's ``output_hidden_states=True`` but collected by hooks, so it stays right
        after blocks are replaced.

        Args:
            input_ids: Token ids ``(B, T)``.
            final_norm: Apply the final layer norm to the last entry, as Hugging Face does; ``False``
                gives the raw output of the last block.

        Returns:
            ``n_layers + 1`` tensors of shape ``(B, T, d)``.
        """
        embeds: list[torch.Tensor] = []  # the input of block 0, (B, T, d)
        grab = lambda _m, args, kwargs: embeds.append(args[0] if args else kwargs["hidden_states"])  # noqa: E731
        handle = self._blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with self.capture("layer", detach=False) as outs:
                base = self.model.base_model(input_ids=input_ids.to(self.device), use_cache=False)
        finally:
            handle.remove()
        states = [embeds[0]] + [o[0] for o in outs]
        if final_norm:
            states[-1] = base.last_hidden_state  # (B, T, d)
        return tuple(states)

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this model; ``cache.layers[i].keys`` is ``(B, kv_heads, T, head_dim)``."""
        return DynamicCache(config=self.config)

    @staticmethod
    def kv_bytes(cache: DynamicCache) -> int:
        """Bytes held by the keys and values of all layers of ``cache``."""
        tensors = [getattr(layer, name, None) for layer in cache.layers for name in ("keys", "values")]
        return sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))

    @torch.no_grad()
    def generate_greedy(self, input_ids: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding with the KV cache: one prefill, then one token per forward.

        Args:
            input_ids: Prompt ids ``(B, T)``.
            max_new_tokens: Number of tokens to generate (``N >= 1``).

        Returns:
            ``(ids, logits)``: the prompt followed by the new tokens ``(B, T + N)``, and the logits each new
            token was chosen from ``(B, N, V)`` (equal to a full forward's logits at positions ``T-1 .. T+N-2``).
        """
        if max_new_tokens < 1:
            raise RecruitError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        cache = self.new_cache()
        ids = input_ids.to(self.device)
        last = self.forward(ids, cache)[:, -1]  # (B, V)
        steps = []
        for n in range(max_new_tokens):
            steps.append(last)
            token = last.argmax(-1, keepdim=True)  # (B, 1)
            ids = torch.cat([ids, token], dim=1)  # (B, T + n + 1)
            if n + 1 < max_new_tokens:
                last = self.forward(token, cache)[:, -1]  # (B, V)
        return ids, torch.stack(steps, dim=1)  # (B, T + N), (B, N, V)

    @contextmanager
    def capture(self, kind: Kind, detach: bool = True) -> Iterator[list[list[torch.Tensor]]]:
        """Record the outputs of every block's attention, MLP or whole block while the context is open.

        Args:
            kind: ``"attention"``, ``"mlp"`` or ``"layer"``.
            detach: Store detached tensors (no autograd graph kept).

        Yields:
            ``outs`` with ``outs[i]`` the list of outputs ``(B, T, d)`` of layer ``i``, one per forward call.
            For modules returning a tuple, the first element is kept. The hooks are removed on exit.
        """
        getters: dict[str, Callable[[int], nn.Module]] = {"attention": self.attention, "mlp": self.mlp}
        getters["layer"] = self._blocks.__getitem__
        if kind not in getters:
            raise RecruitError(f"unknown capture kind {kind!r}; allowed: {', '.join(getters)}")
        outs: list[list[torch.Tensor]] = [[] for _ in range(self.n_layers)]
        modules = [getters[kind](i) for i in range(self.n_layers)]
        handles = []
        try:
            for module, sink in zip(modules, outs, strict=True):
                handles.append(module.register_forward_hook(partial(_record, sink, detach)))
            yield outs
        finally:
            for handle in handles:
                handle.remove()


def _record(sink: list[torch.Tensor], detach: bool, _module: nn.Module, _args: tuple, output: Any) -> None:
    """Forward hook: append the module's (first) output to ``sink``."""
    out = output[0] if isinstance(output, tuple) else output
    sink.append(out.detach() if detach else out)


def _dtype(config: Any, dtype: torch.dtype | Literal["auto"] | None) -> torch.dtype:
    """``dtype`` as :func:`load_hf_causal_lm` reads it: None is float32, ``auto`` the config's own (else float32)."""
    if dtype is None:
        return torch.float32
    if dtype != "auto":
        return dtype
    own = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    own = getattr(torch, own, None) if isinstance(own, str) else own
    return own if isinstance(own, torch.dtype) else torch.float32


def load_hf_causal_lm(
    path: str | Path, dtype: torch.dtype | Literal["auto"] | None = None, device: str | torch.device = "cpu"
) -> HFCausalLM:
    """Load a causal LM (eval mode) and its tokenizer, if any, from a local dir; never downloads or runs its code.

    A decoder saved with FFF feed-forwards (:func:`recruit.fff.decoder.save_fff_decoder`) loads with them.

    Args:
        path: Directory holding ``config.json`` and the weights (``save_pretrained`` layout).
        dtype: Parameter dtype; ``None`` gives float32, ``"auto"`` the checkpoint's own dtype.
        device: Where to put the model.

    Raises:
        RecruitError: If the directory or its config.json is missing, the architecture is unknown or not a
            supported causal LM, or the weights are missing or corrupt.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise RecruitError(f"model directory not found: {root}")
    if not (root / "config.json").is_file():
        raise RecruitError(f"not a Hugging Face model directory (no config.json): {root}")
    try:
        config = AutoConfig.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise RecruitError(f"cannot read {root / 'config.json'} (unknown architecture?): {_one_line(e)}") from None
    try:
        if getattr(config, "recruit_fff", None) is not None:  # saved by recruit.fff.decoder.save_fff_decoder
            from recruit.fff.decoder import load_fff_decoder

            model = load_fff_decoder(root, config, _dtype(config, dtype))
        else:
            model = AutoModelForCausalLM.from_pretrained(
                root, config=config, dtype=torch.float32 if dtype is None else dtype, local_files_only=True
            )
    except ValueError as e:
        raise RecruitError(f"unsupported architecture {type(config).__name__} in {root}: {_one_line(e)}") from None
    except (OSError, RuntimeError, SafetensorError) as e:
        raise RecruitError(f"cannot load the weights in {root}: {_one_line(e)}") from None
    tokenizer = HFTokenizer(str(root)) if any((root / f).is_file() for f in TOKENIZER_FILES) else None
    lm = HFCausalLM(model.to(device).eval(), tokenizer)
    log.info("loaded %s (%d layers) from %s", type(model).__name__, lm.n_layers, root)
    return lm

"""Load recruit GPT checkpoints with Hugging Face's Auto classes (``AutoConfig``, ``AutoModelForCausalLM``).

:class:`RecruitGPTForCausalLM` holds a :class:`~recruit.models.gpt.GPT`'s modules under the GPT's own names, so
a directory written by ``GPT.save_pretrained`` loads as it is (tied ``lm_head`` re-tied by HF), and its forward
runs the GPT's. Nothing is registered at import: call :func:`register_auto_classes` first.

Example:
    >>> register_auto_classes()
    >>> AutoModelForCausalLM.from_pretrained("ckpt_dir", local_files_only=True).generate(ids, max_new_tokens=20)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from recruit.models.gpt import GPT, GPTConfig
from recruit.models.kv_cache import KVCache

_FIELDS = [f.name for f in dataclasses.fields(GPTConfig) if f.name != "tie_embeddings"]  # kept under their names


class RecruitGPTConfig(PretrainedConfig):
    """HF config holding the :class:`GPTConfig` fields (validated and derived by ``GPTConfig`` itself).

    ``tie_embeddings`` is stored as HF's ``tie_word_embeddings``; HF-style aliases (``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ...) read the recruit fields.
    """

    model_type = GPT.model_type  # "recruit-gpt"
    attribute_map = {  # HF name -> recruit name
        "tie_embeddings": "tie_word_embeddings", "hidden_size": "d_model", "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head", "num_key_value_heads": "n_kv_head", "intermediate_size": "d_ff",
        "max_position_embeddings": "max_seq_len",
    }  # fmt: skip

    def __init__(self, tie_embeddings: bool = True, use_cache: bool = True, **kwargs: Any) -> None:
        gpt = GPTConfig(**{k: kwargs.pop(k) for k in _FIELDS if k in kwargs})  # raises on invalid values
        for name in _FIELDS:
            setattr(self, name, getattr(gpt, name))
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", tie_embeddings)
        super().__init__(**kwargs)

    @classmethod
    def from_gpt_config(cls, cfg: GPTConfig) -> RecruitGPTConfig:
        """The HF config equal to ``cfg``."""
        return cls(**dataclasses.asdict(cfg))

    def to_gpt_config(self) -> GPTConfig:
        """The :class:`GPTConfig` this config describes."""
        return GPTConfig(**{k: getattr(self, k) for k in _FIELDS}, tie_embeddings=self.tie_word_embeddings)


class _HFCacheView:
    """An HF :class:`Cache` seen through :class:`KVCache`'s interface; its tokens sit at positions ``0 .. S-1``."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.seen_tokens = cache.get_seq_length()

    def update(
        self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` (B, Hkv, T, hd); return all cached keys, values (B, Hkv, S, hd) and positions (S,)."""
        k, v = self.cache.update(k, v, layer_idx)
        return k, v, torch.arange(k.shape[2], device=k.device)

    def advance(self, n: int) -> None:
        """No-op: the HF cache counts its own tokens."""


class RecruitGPTForCausalLM(PreTrainedModel, GenerationMixin):
    """A :class:`GPT` as a Hugging Face causal LM; state-dict keys equal the GPT's (``tok_emb.weight``, ...).

    ``generate`` caches keys and values in HF's ``DynamicCache`` by default; ``use_cache=False`` recomputes the
    whole prefix each step (same tokens). Padding is not supported: ``attention_mask`` must be all ones.
    """

    config_class = RecruitGPTConfig
    _tied_weights_keys = ["lm_head.weight"]
    _no_split_modules = ["Block"]

    def __init__(self, config: RecruitGPTConfig) -> None:
        super().__init__(config)
        gpt = GPT(config.to_gpt_config())
        for name, module in gpt.named_children():  # same modules, same names: checkpoints load as they are
            self.add_module(name, module)
        object.__setattr__(self, "_gpt", gpt)  # runs forward; not a submodule, so no duplicate state-dict keys
        self._residual_ids = {id(m) for n, m in gpt.named_modules() if n.endswith(("o_proj", "fc_out"))}
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """GPT's init (HF calls it for weights a checkpoint lacks, and on fresh models)."""
        GPT._init(module)
        if id(module) in self._residual_ids:  # GPT-2's scaled init of residual projections
            nn.init.normal_(module.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
        elif isinstance(module, nn.LayerNorm | nn.RMSNorm):
            module.reset_parameters()

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding ``tok_emb``."""
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the token embedding (here and in the wrapped GPT)."""
        self.tok_emb = self._gpt.tok_emb = value

    def get_output_embeddings(self) -> nn.Linear:
        """The output projection ``lm_head``."""
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        """Replace the output projection (here and in the wrapped GPT)."""
        self.lm_head = self._gpt.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | KVCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits, and the shifted next-token loss when ``labels`` are given.

        Args:
            input_ids: (B, T) token ids; with a cache, only the tokens after the cached ones.
            attention_mask: Optional (B, S) mask; must be all ones (no padding).
            past_key_values: An HF :class:`Cache` or a recruit :class:`KVCache`, extended in place.
            labels: (B, T) targets aligned with ``input_ids`` (HF shifts them; ``-100`` is ignored).
            use_cache: Start a ``DynamicCache`` when none is given; defaults to ``config.use_cache``.
            output_hidden_states: Also return the input of block 0 and each block's output (not final-normed).
            **kwargs: Other arguments HF's generation utilities pass (e.g. ``cache_position``); ignored.

        Returns:
            ``CausalLMOutputWithPast`` with ``logits`` (B, T, V), ``loss``, ``past_key_values``, ``hidden_states``.
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("recruit GPT does not support padding: attention_mask must be all ones")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if past_key_values is None and use_cache:
            past_key_values = DynamicCache(config=self.config)
        cache = _HFCacheView(past_key_values) if isinstance(past_key_values, Cache) else past_key_values
        logits, hidden = self._gpt(input_ids, cache=cache, return_hidden=True)
        loss = None if labels is None else self.loss_function(logits, labels, vocab_size=self.config.vocab_size)
        states = tuple(hidden) if output_hidden_states else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values, hidden_states=states)


def register_auto_classes() -> None:
    """Register :class:`RecruitGPTConfig` and :class:`RecruitGPTForCausalLM` with HF's Auto classes (idempotent)."""
    AutoConfig.register(GPT.model_type, RecruitGPTConfig, exist_ok=True)
    AutoModelForCausalLM.register(RecruitGPTConfig, RecruitGPTForCausalLM, exist_ok=True)


def to_hf(gpt: GPT) -> RecruitGPTForCausalLM:
    """An HF model with a copy of ``gpt``'s weights (same mode, device and dtype)."""
    model = RecruitGPTForCausalLM(RecruitGPTConfig.from_gpt_config(gpt.config))
    model.to(next(gpt.parameters())).load_state_dict(gpt.state_dict())
    return model.train(gpt.training)


def from_hf(model: RecruitGPTForCausalLM) -> GPT:
    """A :class:`GPT` with a copy of ``model``'s weights (same mode, device and dtype)."""
    gpt = GPT(model.config.to_gpt_config())
    gpt.to(next(model.parameters())).load_state_dict(model.state_dict())
    return gpt.train(model.training)

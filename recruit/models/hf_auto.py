"""Load recruit checkpoints with Hugging Face's Auto classes (``AutoConfig``, ``AutoModelForCausalLM``).

:class:`RecruitGPTForCausalLM` holds a :class:`~recruit.models.gpt.GPT`'s modules under the GPT's own names, so
a directory written by ``GPT.save_pretrained`` loads as it is (tied ``lm_head`` re-tied by HF), and its forward
runs the GPT's. :class:`RecruitBDHForCausalLM` does the same for a :class:`~recruit.models.bdh.BDH`, and
generates in BDH's recurrent form: its cache is the synaptic state (``cache_params``, constant in size), so HF's
``generate`` runs past the training length at a fixed cost per token. :class:`RecruitByteTokenizer` is recruit's
byte-level tokenizer as an HF tokenizer, so ``AutoTokenizer`` and ``pipeline`` work on these checkpoints as well.
Nothing is registered at import: call :func:`register_auto_classes` first.

Example:
    >>> register_auto_classes()
    >>> tok = AutoTokenizer.from_pretrained("ckpt_dir")  # recruit checkpoints hold no tokenizer file: none needed
    >>> ids = tok("<lang:de><kind:manual>NAME", return_tensors="pt").input_ids
    >>> AutoModelForCausalLM.from_pretrained("ckpt_dir", local_files_only=True).generate(ids, max_new_tokens=20)
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizer,
    TrainerCallback,
)
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from recruit.data.tokenizer import SPECIALS, ByteTokenizer
from recruit.models.bdh import BDH, ActivityL1, BDHConfig, BDHState
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
        _no_padding(attention_mask, "GPT")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if past_key_values is None and use_cache:
            past_key_values = DynamicCache(config=self.config)
        cache = _HFCacheView(past_key_values) if isinstance(past_key_values, Cache) else past_key_values
        logits, hidden = self._gpt(input_ids, cache=cache, return_hidden=True)
        loss = None if labels is None else self.loss_function(logits, labels, vocab_size=self.config.vocab_size)
        states = tuple(hidden) if output_hidden_states else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values, hidden_states=states)


_BDH_FIELDS = [f.name for f in dataclasses.fields(BDHConfig)]


def _no_padding(attention_mask: torch.Tensor | None, model: str) -> None:
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(f"recruit {model} does not support padding: attention_mask must be all ones")


class RecruitBDHConfig(PretrainedConfig):
    """HF config holding the :class:`BDHConfig` fields (validated by ``BDHConfig`` itself).

    HF-style aliases (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``) read the recruit fields.
    ``max_seq_len`` bounds the parallel form only, so it is no ``max_position_embeddings``: the recurrent form
    that ``generate`` uses has no length limit. ``lm_head`` is BDH's own untied (d, V) matrix.
    """

    model_type = BDH.model_type  # "recruit-bdh"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head"}

    def __init__(self, use_cache: bool = True, **kwargs: Any) -> None:
        bdh = BDHConfig(**{k: kwargs.pop(k) for k in _BDH_FIELDS if k in kwargs})  # raises on invalid values
        for name in _BDH_FIELDS:
            setattr(self, name, getattr(bdh, name))
        self.use_cache = use_cache
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)

    def to_bdh_config(self) -> BDHConfig:
        """The :class:`BDHConfig` this config describes."""
        return BDHConfig(**{k: getattr(self, k) for k in _BDH_FIELDS})


@dataclasses.dataclass
class BDHCausalLMOutput(ModelOutput):
    """What :meth:`RecruitBDHForCausalLM.forward` returns.

    Attributes:
        loss: Shifted next-token cross-entropy when ``labels`` were given.
        logits: (B, T, V), or the last ``logits_to_keep`` positions.
        cache_params: The synaptic state after these tokens (recurrent form only): pass it back to continue.
        hidden_states: The stream after the embedding norm and after each layer, (B, T, d) each (parallel form).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache_params: BDHState | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class RecruitBDHForCausalLM(PreTrainedModel, GenerationMixin):
    """A :class:`BDH` as a Hugging Face causal LM; state-dict keys equal the BDH's (``encoder``, ``embed.weight``...).

    ``forward`` runs the parallel form, or, given ``cache_params`` (a :class:`BDHState`, e.g. from
    :meth:`new_state`), the recurrent form from that state, which it advances. ``generate`` uses the recurrent
    form by default (``use_cache=False``: the parallel form over the whole prefix, up to ``max_seq_len``). Greedy
    search and sampling work; beam search needs ``use_cache=False`` (the state is not reordered per beam).
    Padding is not supported: ``attention_mask`` must be all ones. The vocabulary is fixed: ``lm_head`` is a
    (d, V) matrix, not a linear module, and ``resize_token_embeddings`` is refused.
    """

    config_class = RecruitBDHConfig
    _is_stateful = True  # HF's generate makes no key-value cache for it; the state comes from prepare_inputs

    def __init__(self, config: RecruitBDHConfig) -> None:
        super().__init__(config)
        bdh = BDH(config.to_bdh_config())
        for name, param in bdh.named_parameters(recurse=False):  # same names: checkpoints load as they are
            self.register_parameter(name, param)
        for name, module in bdh.named_children():
            self.add_module(name, module)
        self._param_names = tuple(name for name, _ in bdh.named_parameters(recurse=False))
        self._child_names = tuple(name for name, _ in bdh.named_children())
        object.__setattr__(self, "_bdh", bdh)  # the template of `bdh`; not a submodule: no duplicate state-dict keys
        self._activity_ramp = ActivityL1()  # the penalty's weight ramp (activity_warmup), fed by set_activity_progress
        self.post_init()

    def set_activity_progress(self, fraction: float) -> None:
        """The fraction of the training run done, in [0, 1], for the ``activity_warmup`` ramp of the penalty.

        :class:`BDHActivityWarmup`, a callback of HF's ``Trainer``, calls it before each step; until something
        does, the penalty has its full weight.
        """
        self._activity_ramp.set_progress(fraction)

    @property
    def bdh(self) -> BDH:
        """A :class:`BDH` that runs on this module's parameters and submodules as they are now.

        A shallow copy of the BDH built at construction, made at each call: HF replaces parameter objects when it
        loads weights, and ``nn.DataParallel``'s replicas hold theirs as plain attributes, so they are read from
        ``self`` every time rather than kept. What a forward leaves on the BDH (the terms of the activity penalty)
        stays on that copy; :meth:`forward` adds the penalty to its loss itself.
        """
        bdh = copy.copy(self._bdh)
        bdh._parameters = {name: getattr(self, name) for name in self._param_names}
        bdh._modules = {name: getattr(self, name) for name in self._child_names}
        bdh.training = self.training
        return bdh

    def _init_weights(self, module: nn.Module) -> None:
        """BDH's init, N(0, 0.02) for every weight (HF calls it for weights a checkpoint lacks)."""
        params = list(module.parameters(recurse=False)) if module is not self else list(self._parameters.values())
        for param in params:
            nn.init.normal_(param, std=0.02)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding ``embed``."""
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the token embedding."""
        self.embed = value

    def get_output_embeddings(self) -> None:
        """None: BDH's ``lm_head`` is a bare (d, V) matrix, which HF's embedding utilities cannot handle."""
        return None

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """Refused: BDH's vocabulary (``embed`` and the (d, V) ``lm_head``) is fixed at ``config.vocab_size``."""
        raise ValueError(
            f"a recruit BDH's vocabulary is fixed at {self.config.vocab_size} tokens; it cannot be resized"
        )

    def new_state(self, batch: int = 1) -> BDHState:
        """An empty synaptic state for ``batch`` sequences, to pass as ``cache_params``."""
        return self.bdh.new_state(batch)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache_params: BDHState | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> BDHCausalLMOutput:
        """Logits, and the shifted next-token loss when ``labels`` are given.

        Args:
            input_ids: (B, T) token ids; with ``cache_params``, the tokens after those the state has seen.
            attention_mask: Optional (B, S) mask; must be all ones (no padding).
            cache_params: A :class:`BDHState` to continue from (recurrent form, no gradients); advanced in place.
            labels: (B, T) targets aligned with ``input_ids`` (HF shifts them; ``-100`` is ignored). In training mode
                with ``activity_l1`` > 0 the loss includes BDH's activity penalty, weighted by the
                ``activity_warmup`` ramp at the progress given to :meth:`set_activity_progress` (full weight until
                then; HF's ``Trainer`` gives it with the :class:`BDHActivityWarmup` callback).
            output_hidden_states: Also return the stream after the embedding norm and after each layer (parallel
                form only).
            logits_to_keep: Return the logits of the last this-many positions only (0: all).
            **kwargs: Other arguments HF's generation utilities pass (e.g. ``use_cache``, ``cache_position``);
                ignored.

        Returns:
            :class:`BDHCausalLMOutput`.
        """
        _no_padding(attention_mask, "BDH")
        bdh, hidden = self.bdh, None
        if cache_params is not None:
            if output_hidden_states:
                raise ValueError("hidden states come from the parallel form: call without cache_params")
            if logits_to_keep == 1:
                logits = bdh.prefill(input_ids, cache_params)[:, None]  # (B, 1, V)
            else:
                logits = bdh.prefill(input_ids, cache_params, every=True)  # (B, T, V)
        else:
            if input_ids.shape[1] > self.config.max_seq_len:
                raise ValueError(f"{input_ids.shape[1]} tokens exceed max_seq_len={self.config.max_seq_len}, the "
                                 "parallel form's limit: generate with use_cache=True, or pass cache_params (the "
                                 "recurrent form has no length limit)")  # fmt: skip
            logits, hidden = bdh(input_ids, return_hidden=True)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        loss = None if labels is None else self.loss_function(logits, labels, vocab_size=self.config.vocab_size)
        if loss is not None and self.training and self.config.activity_l1 > 0:
            loss = loss + self._activity_ramp.scale(self.config.activity_warmup) * bdh.activity_loss()
        states = tuple(hidden) if output_hidden_states and hidden is not None else None
        return BDHCausalLMOutput(loss=loss, logits=logits, cache_params=cache_params, hidden_states=states)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache_params: BDHState | None = None,
        use_cache: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The forward's inputs at a generation step: the tokens the state has not seen, and the state.

        The first step makes a fresh state (when ``use_cache``) and feeds the whole prompt; later steps feed only
        the tokens after ``cache_params.pos``, i.e. the one just generated.
        """
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache_params is not None:
            input_ids = input_ids[:, cache_params.pos :]
        elif use_cache:
            cache_params = self.new_state(input_ids.shape[0])
        inputs = {"input_ids": input_ids, "cache_params": cache_params, "attention_mask": attention_mask}
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """HF's ``generate``; beam search is refused with the recurrent state (pass ``use_cache=False``)."""
        config = kwargs.get("generation_config") or self.generation_config
        beams = kwargs.get("num_beams", config.num_beams)
        use_cache = kwargs.get("use_cache", config.use_cache)
        if beams > 1 and use_cache is not False:
            raise ValueError("beam search needs use_cache=False with BDH: its synaptic state is not reordered per beam")
        return super().generate(*args, **kwargs)


class BDHActivityWarmup(TrainerCallback):
    """HF ``Trainer`` callback: ramps a BDH's activity penalty up over ``activity_warmup`` of the run.

    Before each optimiser step it tells every :class:`RecruitBDHForCausalLM` in the trained model the fraction
    of the run done (``global_step / max_steps``), as recruit's own trainer does, so that the penalty's weight is
    ``activity_l1 · min(1, progress / activity_warmup)``. Without it the penalty has its full weight throughout.

    Example:
        >>> Trainer(model=model, args=args, train_dataset=data, callbacks=[BDHActivityWarmup()])
    """

    def on_step_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any):
        """Report ``state.global_step / state.max_steps`` to the BDHs in ``model``."""
        if model is None or not state.max_steps:
            return
        for module in model.modules():
            if isinstance(module, RecruitBDHForCausalLM):
                module.set_activity_progress(min(1.0, state.global_step / state.max_steps))


class RecruitByteTokenizer(PreTrainedTokenizer):
    """:class:`~recruit.data.tokenizer.ByteTokenizer` as a Hugging Face tokenizer: the same ids, no vocabulary file.

    A UTF-8 byte b is the token ``<0xBB>`` (id b); the 32 specials follow (``<pad>``, ``<bos>``, ``<eos>``,
    ``<sep>``, ``<mask>``, ``<lang:de>``, ``<kind:manual>``, ``<task:3>``...), and written in a text they become
    their ids, so ``tok("<lang:de><kind:manual>NAME")`` gives the tagged prompt recruit's models were trained on.
    No tokens are added around a text. Decoding joins the bytes as UTF-8 (invalid sequences become U+FFFD).
    """

    vocab_files_names: dict[str, str] = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, **kwargs: Any) -> None:
        self._bytes = ByteTokenizer()
        named = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "sep_token": "<sep>",
                 "mask_token": "<mask>"}  # fmt: skip
        for key, token in named.items():
            kwargs.setdefault(key, token)
        kwargs.setdefault("additional_special_tokens", [t for t in SPECIALS if t not in named.values()])
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        """256 bytes and the 32 specials: 288, the vocabulary of recruit's models."""
        return self._bytes.vocab_size

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for all 288 tokens."""
        return {self._convert_id_to_token(i): i for i in range(self.vocab_size)}

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [f"<0x{b:02X}>" for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return int(token[3:5], 16)
        return self._bytes.special_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        if self._bytes.is_byte(index):
            return f"<0x{index:02X}>"
        return SPECIALS[index - ByteTokenizer.n_bytes]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """The bytes of byte tokens as UTF-8, with any special token kept as its own text."""
        out, run = [], bytearray()
        for token in tokens:
            i = self._convert_token_to_id(token)
            if self._bytes.is_byte(i):
                run.append(i)
            else:
                out += [run.decode("utf-8", errors="replace"), token]
                run = bytearray()
        return "".join(out) + run.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Nothing to save: the vocabulary is fixed."""
        return ()


def register_auto_classes() -> None:
    """Register recruit's GPT and BDH configs, causal LMs and byte tokenizer with HF's Auto classes (idempotent)."""
    for model_type, config, model in ((GPT.model_type, RecruitGPTConfig, RecruitGPTForCausalLM),
                                      (BDH.model_type, RecruitBDHConfig, RecruitBDHForCausalLM)):  # fmt: skip
        AutoConfig.register(model_type, config, exist_ok=True)
        AutoModelForCausalLM.register(config, model, exist_ok=True)
        AutoTokenizer.register(config, slow_tokenizer_class=RecruitByteTokenizer, exist_ok=True)


def to_hf(model: GPT | BDH) -> RecruitGPTForCausalLM | RecruitBDHForCausalLM:
    """An HF model with a copy of ``model``'s weights (same mode, device and dtype)."""
    if isinstance(model, BDH):
        hf: RecruitGPTForCausalLM | RecruitBDHForCausalLM = RecruitBDHForCausalLM(
            RecruitBDHConfig(**dataclasses.asdict(model.config))
        )
    else:
        hf = RecruitGPTForCausalLM(RecruitGPTConfig.from_gpt_config(model.config))
    hf.to(next(model.parameters())).load_state_dict(model.state_dict())
    return hf.train(model.training)


def from_hf(model: RecruitGPTForCausalLM | RecruitBDHForCausalLM) -> GPT | BDH:
    """The recruit :class:`GPT` or :class:`BDH` with a copy of ``model``'s weights (same mode, device and dtype)."""
    if isinstance(model, RecruitBDHForCausalLM):
        native: GPT | BDH = BDH(model.config.to_bdh_config())
    else:
        native = GPT(model.config.to_gpt_config())
    native.to(next(model.parameters())).load_state_dict(model.state_dict())
    return native.train(model.training)

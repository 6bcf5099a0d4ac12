"""The dense baseline: a decoder-only transformer (pre-norm, RoPE, causal SDPA attention, GELU or SwiGLU MLP).

Every technique in recruit is measured against this model on the same data. It decodes incrementally with
a :class:`KVCache` that stores each cached token's absolute position, so a KV policy may evict tokens and
the remaining keys keep their true RoPE positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from recruit.errors import RecruitError
from recruit.models.base import RecruitModel, register_model
from recruit.models.kv_cache import KVCache
from recruit.models.sampling import check_prompt, check_sampling, decode_loop


@dataclass
class GPTConfig:
    """Hyperparameters of :class:`GPT`."""

    vocab_size: int = 288  # byte tokenizer: 256 bytes + 32 specials
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # query heads
    n_kv_head: int = 0  # key/value heads (grouped-query attention); 0 means n_head
    d_model: int = 256  # residual width
    d_ff: int = 0  # MLP hidden width; 0 means 8/3*d_model rounded up to 64 (swiglu), else 4*d_model
    mlp: Literal["gelu", "swiglu", "fff", "none"] = "gelu"  # fff: a Fast Feedforward tree; none: no MLP at all
    fff_depth: int | None = None  # FFF tree depth (0 to 30); None: the deepest whose 2^(D+1)-1 nodes fit in d_ff
    fff_trees: int = 1  # FFF parallel trees K
    fff_mode: Literal["hard", "soft"] = "hard"  # FFF training: masked hard routing or soft mixture
    fff_hardening: float = 0.0  # soft mode: weight of each FFF's entropy hardening loss (added by the Trainer)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    max_seq_len: int = 512  # longest sequence (prompt + generated) the model accepts
    rope_theta: float = 10000.0
    tie_embeddings: bool = True  # lm_head shares the token embedding matrix
    dropout: float = 0.0
    bias: bool = False  # biases in linear layers

    def __post_init__(self) -> None:
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.d_ff == 0:
            self.d_ff = 64 * math.ceil(8 * self.d_model / 3 / 64) if self.mlp == "swiglu" else 4 * self.d_model
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"head size d_model/n_head = {self.d_model // self.n_head} must be even for RoPE")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.mlp not in ("gelu", "swiglu", "fff", "none"):
            raise ValueError(f"mlp must be 'gelu', 'swiglu', 'fff' or 'none', got {self.mlp!r}")
        if self.fff_depth is None and self.mlp == "fff":
            self.fff_depth = max(0, (self.d_ff + 1).bit_length() - 2)  # 512 -> 8 (511 nodes)
        if self.fff_depth is not None:
            from recruit.fff.fff import MAX_DEPTH  # imported here: recruit.fff builds on this module

            if not 0 <= self.fff_depth <= MAX_DEPTH:  # FFFConfig's range
                raise ValueError(f"fff_depth must be in 0..{MAX_DEPTH}, got {self.fff_depth}")
        if self.fff_trees < 1 or self.fff_mode not in ("hard", "soft"):
            raise ValueError(f"need fff_trees >= 1 and fff_mode 'hard' or 'soft', got {self.fff_trees}, "
                             f"{self.fff_mode!r}")  # fmt: skip
        if self.fff_hardening < 0 or (self.fff_hardening > 0 and self.fff_mode != "soft"):
            raise ValueError(f"fff_hardening must be >= 0 and needs fff_mode 'soft', got {self.fff_hardening}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.rope_theta > 1.0 or not math.isfinite(self.rope_theta):
            raise ValueError(f"rope_theta must be a finite number > 1, got {self.rope_theta}")
        if self.n_kv_head < 0:
            raise ValueError(f"n_kv_head must be >= 0 (0: n_head), got {self.n_kv_head}")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.d_model // self.n_head


GPT_PRESETS: dict[str, dict] = {
    "gpt-nano": dict(n_layer=2, n_head=2, d_model=32, max_seq_len=64),  # tests
    "gpt-mini": dict(n_layer=4, n_head=4, d_model=64, max_seq_len=256),  # 216k params, = bdh-mini
    "gpt-tiny": dict(n_layer=4, n_head=4, d_model=128, max_seq_len=256),  # shipped default, 0.8M params
    "gpt-small": dict(n_layer=6, n_head=4, d_model=256, max_seq_len=512),  # 4.8M params
    "gpt-medium": dict(n_layer=8, n_head=8, d_model=512, max_seq_len=1024),  # 25M params, GPU
}
"""Preset name -> fields that differ from :class:`GPTConfig`'s defaults (derived fields stay derived)."""


def gpt_config(preset: str, **overrides) -> GPTConfig:
    """A preset config with fields replaced by ``overrides``."""
    if preset not in GPT_PRESETS:
        raise RecruitError(f"unknown GPT preset {preset!r}; presets: {', '.join(GPT_PRESETS)}")
    return GPTConfig(**{**GPT_PRESETS[preset], **overrides})


def rope_tables(positions: torch.Tensor, hd: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of RoPE angles ``position * theta^(-2i/hd)``: two (T, hd/2) fp32 tensors.

    :class:`GPT` computes them once per forward and shares them by every layer's queries and keys.
    """
    inv_freq = theta ** (-torch.arange(0, hd, 2, device=positions.device, dtype=torch.float32) / hd)  # (hd/2,)
    ang = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, hd/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + hd/2) of ``x`` (B, H, T, hd) by the angles of :func:`rope_tables` (Llama's convention)."""
    hd = x.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]  # (B, H, T, hd/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE of ``x`` (B, H, T, hd) at ``positions`` (T,) with base ``theta``; returns (B, H, T, hd)."""
    return apply_rope(x, *rope_tables(positions, x.shape[-1], theta))


def make_norm(cfg: GPTConfig) -> nn.Module:
    """LayerNorm or RMSNorm of width ``d_model``."""
    return nn.LayerNorm(cfg.d_model, bias=cfg.bias) if cfg.norm == "layernorm" else nn.RMSNorm(cfg.d_model)


class Attention(nn.Module):
    """Causal multi-head (optionally grouped-query) self-attention with RoPE and an optional KV cache."""

    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * hd, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_head * hd, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        rope_cs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` (B, T, d) at ``positions`` (T,) to itself and to the cached tokens.

        ``rope_cs`` are the :func:`rope_tables` of ``positions`` (computed here when not given).
        """
        B, T, _ = x.shape
        cfg, hd = self.cfg, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, cfg.n_head, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, cfg.n_kv_head, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, cfg.n_kv_head, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        cos, sin = rope_cs if rope_cs is not None else rope_tables(positions, hd, cfg.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            k, v, k_pos = cache.update(self.layer_idx, k, v, positions)  # (B, Hkv, S, hd), (S,)
            if k.shape[2] != T:  # cached tokens precede the new ones: mask by absolute position
                mask, causal = k_pos[None, :] <= positions[:, None], False  # (T, S) bool
                if T == 1:
                    mask = None
        if cfg.n_kv_head != cfg.n_head:
            rep = cfg.n_head // cfg.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, S, hd)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal and mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, cfg.n_head * hd))


class MLP(nn.Module):
    """Position-wise feed-forward: GELU (``fc_in`` → GELU → ``fc_out``) or SwiGLU (``down(silu(gate)·up)``)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        if cfg.mlp == "swiglu":
            self.fc_gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, T, d)."""
        h = F.gelu(self.fc_in(x)) if self.kind == "gelu" else F.silu(self.fc_gate(x)) * self.fc_in(x)
        return self.fc_out(h)


def make_mlp(cfg: GPTConfig) -> nn.Module:
    """The feed-forward module of a block: dense :class:`MLP`, a Fast Feedforward tree, or none (zeros)."""
    if cfg.mlp == "fff":
        from recruit.fff.fff import FastFeedForward  # imported here: recruit.fff builds on this module

        return FastFeedForward(cfg.d_model, cfg.d_model, cfg.fff_depth, cfg.fff_trees, cfg.fff_mode, cfg.fff_hardening)
    if cfg.mlp == "none":
        from recruit.fff.convert import ZeroFF

        return ZeroFF()
    return MLP(cfg)


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm1, self.attn = make_norm(cfg), Attention(cfg, layer_idx)
        self.norm2, self.mlp = make_norm(cfg), make_mlp(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        rope_cs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, T, d) -> (B, T, d)."""
        x = x + self.drop(self.attn(self.norm1(x), positions, cache, rope_cs))
        return x + self.drop(self.mlp(self.norm2(x)))


@register_model
class GPT(RecruitModel):
    """Decoder-only transformer language model.

    Example:
        >>> model = GPT(gpt_config("gpt-nano"))
        >>> model(torch.zeros(1, 8, dtype=torch.long)).shape
        torch.Size([1, 8, 288])
    """

    model_type = "recruit-gpt"
    config_class = GPTConfig
    tied_weights = {"lm_head.weight": "tok_emb.weight"}

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("o_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def loss_terms(self) -> list:
        """The FFF hardening loss when any FFF in the model has a hardening weight (soft mode)."""
        from recruit.fff.fff import FastFeedForward, HardeningLoss

        hard = any(isinstance(m, FastFeedForward) and m.config.hardening > 0 for m in self.modules())
        return [HardeningLoss()] if hard else []

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def new_cache(self) -> KVCache:
        """An empty KV cache with one layer slot per block."""
        return KVCache(self.config.n_layer)

    def forward(
        self, idx: torch.Tensor, cache: KVCache | None = None, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Next-token logits.

        Args:
            idx: (B, T) token ids. With a ``cache``, they continue the cached sequence.
            cache: Optional KV cache, updated in place.
            return_hidden: Also return the residual stream before the first block and after each block.

        Returns:
            logits (B, T, V) in fp32 or the autocast dtype; with ``return_hidden`` also a list of
            ``n_layer + 1`` tensors (B, T, d).
        """
        B, T = idx.shape
        start = cache.seen_tokens if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise RecruitError(
                f"sequence of {start + T} tokens is longer than the model's context of {self.config.max_seq_len}"
            )
        positions = torch.arange(start, start + T, device=idx.device)  # (T,)
        rope_cs = rope_tables(positions, self.config.head_dim, self.config.rope_theta)  # shared by all layers
        x = self.drop(self.tok_emb(idx))  # (B, T, d)
        hidden = [x]
        for block in self.blocks:
            x = block(x, positions, cache, rope_cs)
            hidden.append(x)
        if cache is not None:
            cache.advance(T)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        return (logits, hidden) if return_hidden else logits

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens with a KV cache; returns (B, T + new).

        ``greedy`` takes the arg-max; otherwise samples from ``softmax(logits / temperature)``, restricted
        to the ``top_k`` most likely tokens when given.
        """
        check_prompt(idx)
        check_sampling(temperature, greedy, top_k, max_new_tokens)
        if idx.shape[1] + max_new_tokens > self.config.max_seq_len:
            raise RecruitError(
                f"prompt ({idx.shape[1]}) + new tokens ({max_new_tokens}) exceed the context of "
                f"{self.config.max_seq_len} tokens"
            )
        cache = self.new_cache()
        logits = self(idx, cache=cache)[:, -1]  # (B, V)
        step = lambda nxt: self(nxt, cache=cache)[:, -1]  # noqa: E731  (B, 1) -> (B, V)
        return decode_loop(idx, logits, step, max_new_tokens, temperature, top_k, greedy, generator)

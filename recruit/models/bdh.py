"""BDH-GPU, the "Dragon Hatchling" (Kosowski et al., arXiv 2509.26507): sparse positive neurons, Hebbian state.

One set of weights is shared by all layers. Each layer lifts the d-dim stream ``v`` to n = h·N positive
neurons ``x = ReLU(v·D_x)``, attends linearly with Q = K = RoPE(x) and V = v (strictly causal, no softmax,
no scaling), lifts the normalised result to ``y = ReLU(a·D_y)``, gates it by ``x`` and decodes it back with
``E``. Parameter names and layouts follow the paper's reference code (Appendix E).

The same model has a recurrent form: per layer a synaptic state ``S`` (B, h, N, d) that is read
(``a_t = RoPE_t(x_t)·S``) before the Hebbian write (``S += RoPE_t(x_t)ᵀ ⊗ v_t``). Because the parallel
scores are strictly below the diagonal this reproduces the parallel logits exactly (up to float rounding),
at a per-token cost and memory independent of the position. :meth:`BDH.prefill` consumes prompts in chunks
(parallel inside a chunk, state across chunks); state math always runs in fp32, since the unscaled scores
overflow fp16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from recruit.cuda_graphs import capture_cuda_graph
from recruit.errors import RecruitError
from recruit.models.base import RecruitModel, register_model
from recruit.models.sampling import check_prompt, check_sampling, decode_loop
from recruit.triton_support import triton_available


@dataclass
class BDHConfig:
    """Hyperparameters of :class:`BDH` (defaults are the paper's, except the vocabulary of our tokenizer)."""

    vocab_size: int = 288  # byte tokenizer: 256 bytes + 32 specials (the paper: 256)
    n_layer: int = 6  # layers; they all share one set of weights
    d_model: int = 256  # width d of the residual stream v
    n_head: int = 4  # heads h
    n_neurons: int = 0  # neurons N per head; 0 means 128 * d_model / n_head (8192 at the defaults)
    dropout: float = 0.1  # on the gated neurons x ⊙ y
    rope_theta: float = 2.0**16  # RoPE base over the N neurons
    max_seq_len: int = 4096  # longest sequence of the parallel form; the recurrent form has no limit
    impl: str = "fast"  # parallel form: "fast" (per-head GEMMs, symmetric backward), "fused" (fast, with Triton
    # kernels that make each neuron tensor in a GEMM's epilogue; on CUDA, else fast) or "reference" (Appendix E)
    activity_l1: float = 0.0  # training: weight of the mean activity of x and y (an L1 sparsity penalty; 0 = off)
    activity_warmup: float = 0.0  # training: fraction of the run over which that weight ramps up from 0 (0 = none)

    def __post_init__(self) -> None:
        if self.n_neurons == 0 and self.n_head > 0:
            if (128 * self.d_model) % self.n_head:
                raise ValueError(f"128*d_model ({128 * self.d_model}) must be divisible by n_head ({self.n_head})")
            self.n_neurons = 128 * self.d_model // self.n_head
        for name in ("vocab_size", "n_layer", "d_model", "n_head", "n_neurons", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_neurons % 2:
            raise ValueError(f"n_neurons must be even (RoPE rotates neuron pairs), got {self.n_neurons}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (self.rope_theta > 1.0 and math.isfinite(self.rope_theta)):
            raise ValueError(f"rope_theta must be > 1, got {self.rope_theta}")
        if self.impl not in ("fast", "fused", "reference"):
            raise ValueError(f"impl must be 'fast', 'fused' or 'reference', got {self.impl!r}")
        if self.activity_l1 < 0:
            raise ValueError(f"activity_l1 must be >= 0, got {self.activity_l1}")
        if not 0.0 <= self.activity_warmup <= 1.0:
            raise ValueError(f"activity_warmup must be in [0, 1] (a fraction of the run), got {self.activity_warmup}")


BDH_PRESETS: dict[str, dict] = {
    "bdh-nano": dict(n_layer=2, d_model=32, n_head=2, n_neurons=64, max_seq_len=256),  # tests, 30,720 params
    "bdh-mini": dict(n_layer=4, d_model=32, n_head=4, n_neurons=512, max_seq_len=1024),  # 215,040 ≈ gpt-mini
    "bdh-tiny": dict(n_layer=4, d_model=64, n_head=4, n_neurons=1024, max_seq_len=1024),  # 823,296 ≈ gpt-tiny
    "bdh-ref": dict(),  # the paper's model: 25,313,280 params (25,296,896 with its vocabulary of 256)
}
"""Preset name -> fields that differ from :class:`BDHConfig`'s defaults (derived fields stay derived)."""


def bdh_config(preset: str, **overrides) -> BDHConfig:
    """A preset config with fields replaced by ``overrides``."""
    if preset not in BDH_PRESETS:
        raise RecruitError(f"unknown BDH preset {preset!r}; presets: {', '.join(BDH_PRESETS)}")
    return BDHConfig(**{**BDH_PRESETS[preset], **overrides})


def rope_tables(positions: torch.Tensor, n: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin of the reference code's RoPE angles, each (T, n) fp32.

    Frequencies come in pairs, ``f_i = theta^(-2*floor(i/2)/n) / 2π`` cycles per token, and the angle is
    ``((t·f_i) mod 1)·2π``, all in fp32 as in the reference (so angles lose precision past ~10^5 tokens).
    """
    i = torch.arange(n, device=positions.device, dtype=torch.float32)  # (n,)
    freqs = 1.0 / theta ** (torch.floor(i / 2) * 2 / n) / (2 * math.pi)  # (n,)
    ang = (positions.to(torch.float32)[:, None] * freqs) % 1 * (2 * math.pi)  # (T, n)
    return ang.cos(), ang.sin()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2k, 2k+1) of ``x`` (..., T, n) by the angles of ``cos``/``sin`` (T, n)."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., T, n/2, 2)
    rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (..., T, n): (-x[1::2], x[::2])
    return (x * cos).to(x.dtype) + (rot * sin).to(x.dtype)  # products in fp32 as in the reference


def _ln(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:])  # no affine parameters


def _causal_attention(x: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``(RoPE(x)·RoPE(x)ᵀ).tril(-1) · v`` for x (B, h, T, N), v (B, T, d) -> (B, h, T, d).

    Runs in the autocast dtype, except fp16, whose range the unscaled scores overflow: that runs in fp32.
    """
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.float16:
        with torch.autocast(dev, enabled=False):
            return _causal_attention(x.float(), v.float(), cos, sin)
    xr = rope(x, cos, sin)  # (B, h, T, N)
    scores = (xr @ xr.mT).tril(-1)  # (B, h, T, T)
    return scores @ v.unsqueeze(1)  # (B, h, T, d): V is the stream, shared by the heads


def _stateful_attention(
    x: torch.Tensor, v: torch.Tensor, S: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Attention of a chunk x (B, h, C, N), v (B, C, d) after the tokens summed in ``S`` (B, h, N, d), in fp32.

    Reads the state before writing the chunk into it (Hebbian: ``S += RoPE(x)ᵀ ⊗ v``); returns (B, h, C, d).
    """
    (B, h, C, N), d = x.shape, S.shape[-1]
    with torch.autocast(x.device.type, enabled=False):
        xr, vf = rope(x.float(), cos, sin), v.float().unsqueeze(1)  # (B, h, C, N), (B, 1, C, d)
        a = xr @ S  # the earlier chunks: (B, h, C, d)
        if C > 1:
            a = a + (xr @ xr.mT).tril(-1) @ vf  # inside the chunk
        # S += xr^T·v in place, one kernel: (B·h, N, C) @ (B·h, C, d) -> (B·h, N, d)
        S.view(B * h, N, d).baddbmm_(xr.reshape(B * h, C, N).mT, vf.expand(B, h, C, d).reshape(B * h, C, d))
    return a


def _turn(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Turn interleaved pairs (2k, 2k+1) of x (..., T, N) by angles with cos ``c`` and sin ``s`` (T, N/2).

    The same rotation as :func:`rope` (whose tables repeat each pair's angle), in fp32, rounded once to x's
    dtype; ``_turn(x, c, -s)`` is the inverse (transposed) rotation.
    """
    p = x.unflatten(-1, (-1, 2)).float()  # (..., T, N/2, 2)
    x0, x1 = p[..., 0], p[..., 1]
    return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2).to(x.dtype)


class _CausalLinearAttention(torch.autograd.Function):
    """One head's ``tril(RoPE(x)·RoPE(x)ᵀ, −1)·v`` with a hand-written backward; x (B, T, N), v (B, T, d).

    It keeps the (B, T, T) scores and the pre-rotation ``x`` (which the layer keeps anyway) instead of the
    rotated copy, and uses that the scores are a Gram matrix: with ``G = tril(g·vᵀ, −1)`` the gradient of
    the rotated neurons is ``(G + Gᵀ)·RoPE(x)``, one (T×T)·(T×N) product where autograd spends two.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, v: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # runs in x's dtype, which the caller picks
            xr = _turn(x, c, s)  # (B, T, N)
            scores = (xr @ xr.mT).tril_(-1)  # (B, T, T)
            ctx.save_for_backward(x, v, c, s, scores)
            return scores @ v  # (B, T, d)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, v, c, s, scores = ctx.saved_tensors
        g = g.to(v.dtype)  # (B, T, d)
        gram = (g @ v.mT).tril_(-1)  # dL/dscores, (B, T, T)
        dv = scores.mT @ g  # (B, T, d)
        dxr = (gram + gram.mT) @ _turn(x, c, s)  # (B, T, N)
        return _turn(dxr, c, -s), dv, None, None


def _head_attention(x: torch.Tensor, v: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """:class:`_CausalLinearAttention` in x's dtype, except fp16, which runs in fp32 (see _causal_attention)."""
    if x.dtype == torch.float16:
        x = x.float()
    return _CausalLinearAttention.apply(x, v.to(x.dtype), c, s)


Attend = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Attention of a layer: (x (B, h, T, N), v (B, T, d)) -> (B, h, T, d)."""
Observe = Callable[[torch.Tensor, torch.Tensor], None]
"""A look at a layer's neurons: (x, y), each (B, h, T, N), before dropout."""


@dataclass
class BDHState:
    """The recurrent form's memory: one synaptic matrix per layer and the number of tokens seen.

    Attributes:
        synapses: ``n_layer`` fp32 tensors (B, h, N, d), i.e. n×d per layer and sequence.
        pos: Absolute position of the next token.
    """

    synapses: list[torch.Tensor]
    pos: int = 0

    def nbytes(self) -> int:
        """Bytes held by the state; constant in the context length."""
        return sum(s.numel() * s.element_size() for s in self.synapses)


@register_model
class BDH(RecruitModel):
    """BDH-GPU language model with a parallel (training) and a recurrent (inference) form.

    Example:
        >>> model = BDH(bdh_config("bdh-nano")).eval()
        >>> model(torch.zeros(1, 8, dtype=torch.long)).shape
        torch.Size([1, 8, 288])
    """

    model_type = "recruit-bdh"
    config_class = BDHConfig

    def __init__(self, config: BDHConfig) -> None:
        super().__init__(config)
        h, d, n, V = config.n_head, config.d_model, config.n_neurons, config.vocab_size
        self.encoder = nn.Parameter(torch.empty(h, d, n).normal_(std=0.02))  # D_x (h, d, N)
        self.encoder_v = nn.Parameter(torch.empty(h, d, n).normal_(std=0.02))  # D_y (h, d, N)
        self.decoder = nn.Parameter(torch.empty(h * n, d).normal_(std=0.02))  # E (h*N, d)
        self.embed = nn.Embedding(V, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.lm_head = nn.Parameter(torch.empty(d, V).normal_(std=0.02))  # untied (d, V)
        self.drop = nn.Dropout(config.dropout)
        self._activity: list[torch.Tensor] | None = None  # filled by a training forward when activity_l1 > 0
        self._triton = config.impl == "fused" and triton_available()  # checked once: the forward may be compiled

    def loss_terms(self) -> list:
        """:class:`ActivityL1` when the config sets ``activity_l1`` > 0."""
        return [ActivityL1()] if self.config.activity_l1 > 0 else []

    def activity_loss(self) -> torch.Tensor:
        """``activity_l1`` × the mean over layers (and heads) of mean(x) + mean(y) in the last training forward.

        x and y are non-negative (ReLU), so their mean is their L1 norm per entry: the penalty pulls
        activations to exactly 0, the sparsity the paper reports (about 5% non-zero).
        """
        if not self._activity:
            raise RecruitError("activity_loss needs a training forward with activity_l1 > 0 first")
        return self.config.activity_l1 * torch.stack(self._activity).mean()

    def _layer(
        self, v: torch.Tensor, attend: Attend, observe: Observe | None = None, penalise: bool = True
    ) -> torch.Tensor:
        """One (shared-weight) layer: stream v (B, T, d) -> (B, T, d); ``attend(x, v)`` gives (B, h, T, d).

        ``observe(x, y)``, when given, sees the layer's neurons x and y (B, h, T, N) before dropout. With
        ``penalise`` (the parallel form) the layer adds its term to the activity penalty of a training forward.
        """
        B, T, _ = v.shape
        x = F.relu(v.unsqueeze(1) @ self.encoder)  # (B, h, T, N)
        a = _ln(attend(x, v))  # (B, h, T, d)
        y = F.relu(a.to(v.dtype) @ self.encoder_v)  # (B, h, T, N)
        xy = self.drop(x * y)  # (B, h, T, N)
        if penalise and self._activity is not None:
            self._activity.append(x.mean() + y.mean())
        if observe is not None:
            observe(x, y)
        out = xy.transpose(1, 2).reshape(B, T, -1) @ self.decoder  # (B, T, h*N) @ (h*N, d) -> (B, T, d)
        return _ln(v + _ln(out))

    def _layer_fast(self, v: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """:meth:`_layer` with causal attention, head by head: v (B, T, d) -> (B, T, d); c, s (T, N/2).

        Each head's neurons stay a contiguous (B, T, N) block, so every projection is one plain GEMM over
        the B·T tokens (the reference broadcasts (B, h) batches, copying the weights B times, and
        transposes the neurons before decoding), and attention is :class:`_CausalLinearAttention`.
        Dropout draws its mask per head, a different draw from :meth:`_layer`'s of the same distribution.
        """
        N, out = self.config.n_neurons, None
        for j in range(self.config.n_head):
            x = F.relu(v @ self.encoder[j])  # (B, T, N)
            a = _ln(_head_attention(x, v, c, s))  # (B, T, d)
            y = F.relu(a.to(v.dtype) @ self.encoder_v[j])  # (B, T, N)
            o = self.drop(x * y) @ self.decoder[j * N : (j + 1) * N]  # (B, T, N) @ (N, d) -> (B, T, d)
            if self._activity is not None:
                self._activity.append(x.mean() + y.mean())
            out = o if out is None else out + o
        return _ln(v + _ln(out))

    def _layer_fused(self, v: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """:meth:`_layer_fast` with each head's neurons made in Triton GEMM epilogues (:mod:`.bdh_triton`).

        Runs in the autocast dtype (or v's) where :func:`~recruit.models.bdh_triton.supports` allows (CUDA,
        fp32 or bf16, T and N multiples of 16) and ``triton`` is installed; elsewhere it is :meth:`_layer_fast`.
        Dropout draws a Philox mask, a different draw from :meth:`_layer_fast`'s, at p rounded to a multiple of
        2^-16 (:func:`~recruit.models.bdh_triton.dropout_p`).
        """
        if not self._triton:
            return self._layer_fast(v, c, s)
        from recruit.models import bdh_triton

        dev = v.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else v.dtype
        vin, N = v.to(dt), self.config.n_neurons
        if not bdh_triton.supports(vin, N):
            return self._layer_fast(v, c, s)
        p, means, out = (self.drop.p if self.training else 0.0), self._activity is not None, None
        for j in range(self.config.n_head):
            dec = self.decoder[j * N : (j + 1) * N]
            o, x_mean, y_mean = bdh_triton.fused_head(vin, self.encoder[j], self.encoder_v[j], dec, c, s, p, means)
            if self._activity is not None:
                self._activity.append(x_mean + y_mean)
            out = o if out is None else out + o
        return _ln(v + _ln(out))

    def forward(
        self,
        idx: torch.Tensor,
        return_hidden: bool = False,
        observe: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Next-token logits of the parallel form.

        Args:
            idx: (B, T) token ids, T <= ``max_seq_len``.
            return_hidden: Also return the stream after the embedding norm and after each layer.
            observe: If given, called as ``observe(layer, x, y)`` with each layer's neurons x and y
                (B, h, T, N) before dropout (this runs the reference form, which keeps all heads together).

        Returns:
            logits (B, T, V); with ``return_hidden`` also a list of ``n_layer + 1`` tensors (B, T, d).
        """
        cfg = self.config
        T = idx.shape[1]
        if T > cfg.max_seq_len:
            raise RecruitError(f"sequence of {T} tokens exceeds max_seq_len={cfg.max_seq_len}; use prefill/step")
        cos, sin = rope_tables(torch.arange(T, device=idx.device), cfg.n_neurons, cfg.rope_theta)  # (T, N) each
        v = _ln(self.embed(idx))  # (B, T, d)
        # the activity penalty's terms, one per layer (reference) or per layer and head (fast): mean x + mean y
        self._activity = [] if self.training and cfg.activity_l1 > 0 else None
        hidden = [v]
        fast = cfg.impl in ("fast", "fused") and observe is None
        if fast:
            # (T, N/2): one angle per neuron pair, the halves of one tensor (the fused head loads both in one copy)
            c, s = torch.stack((cos[:, ::2], sin[:, ::2])).unbind(0)
        for i in range(cfg.n_layer):
            if fast:
                v = self._layer_fused(v, c, s) if cfg.impl == "fused" else self._layer_fast(v, c, s)
            else:
                seen = None if observe is None else partial(observe, i)
                v = self._layer(v, partial(_causal_attention, cos=cos, sin=sin), seen)
            hidden.append(v)
        logits = v @ self.lm_head  # (B, T, V)
        return (logits, hidden) if return_hidden else logits

    @torch.no_grad()
    def forward_with_stats(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """Logits (B, T, V) and, per layer, the fraction of non-zero neurons: keys ``x``, ``y``, ``xy``."""
        per_layer: dict[str, list[float]] = {"x": [], "y": [], "xy": []}

        def count(_: int, x: torch.Tensor, y: torch.Tensor) -> None:
            for k, t in (("x", x), ("y", y), ("xy", x * y)):
                per_layer[k].append((t != 0).float().mean().item())

        return self(idx, observe=count), per_layer

    @torch.no_grad()
    def held_out_stats(self, idx: torch.Tensor) -> dict[str, float]:
        """Fraction of non-zero x, y and x⊙y on ``idx`` (B, T), averaged over layers; the trainer logs them."""
        _, per_layer = self.forward_with_stats(idx)
        return {f"density_{k}": sum(v) / len(v) for k, v in per_layer.items()}

    # ---- recurrent form ------------------------------------------------------------------------------
    def new_state(self, batch: int = 1) -> BDHState:
        """An empty synaptic state (all zeros, fp32) for ``batch`` sequences."""
        cfg, dev = self.config, self.lm_head.device
        shape = (batch, cfg.n_head, cfg.n_neurons, cfg.d_model)  # (B, h, N, d)
        return BDHState([torch.zeros(shape, device=dev, dtype=torch.float32) for _ in range(cfg.n_layer)])

    @torch.no_grad()
    def _chunk(self, idx: torch.Tensor, state: BDHState, every: bool = False) -> torch.Tensor:
        """Consume tokens idx (B, C) after ``state.pos`` tokens and update ``state``.

        Returns the last token's logits (B, V), or with ``every`` each token's (B, C, V).
        """
        if state.synapses[0].shape[0] != idx.shape[0]:
            raise RecruitError(f"state holds {state.synapses[0].shape[0]} sequences, got a batch of {idx.shape[0]}")
        positions = torch.arange(state.pos, state.pos + idx.shape[1], device=idx.device)
        logits = self._chunk_at(idx, positions, state, every)
        state.pos += idx.shape[1]
        return logits

    @torch.no_grad()
    def _chunk_at(
        self, idx: torch.Tensor, positions: torch.Tensor, state: BDHState, every: bool = False
    ) -> torch.Tensor:
        """Tokens idx (B, C) at ``positions`` (C,) into the synapses (``state.pos`` untouched).

        Returns the last token's logits (B, V), or with ``every`` each token's (B, C, V).
        """
        cfg = self.config
        cos, sin = rope_tables(positions, cfg.n_neurons, cfg.rope_theta)  # (C, N) each
        v = _ln(self.embed(idx))  # (B, C, d)
        for S in state.synapses:
            v = self._layer(v, partial(_stateful_attention, S=S, cos=cos, sin=sin), penalise=False)
        return (v if every else v[:, -1]) @ self.lm_head

    @torch.no_grad()
    def cuda_graph_step(self, state: BDHState) -> Callable[[torch.Tensor], torch.Tensor]:
        """A :meth:`step` for ``state`` (on a CUDA device) that replays one captured CUDA graph per token.

        A step launches a few dozen small kernels, whose launch cost exceeds their work at batch 1; the
        graph launches them at once. The returned ``step(idx_t)`` takes (B,) token ids and returns (B, V)
        logits, updating ``state`` exactly as :meth:`step` does (it is only valid for this state object).
        """
        dev = state.synapses[0].device
        if dev.type != "cuda":
            raise RecruitError(f"CUDA graphs need a state on a CUDA device, not {dev}")
        B = state.synapses[0].shape[0]
        tok = torch.zeros(B, 1, dtype=torch.long, device=dev)  # static inputs of the graph
        pos = torch.zeros(1, dtype=torch.long, device=dev)
        saved = [S.clone() for S in state.synapses]  # warm-up runs write into the synapses
        graph, logits = capture_cuda_graph(lambda: self._chunk_at(tok, pos, state), dev)  # (B, V) static
        for S, S0 in zip(state.synapses, saved, strict=True):
            S.copy_(S0)

        def step(idx_t: torch.Tensor) -> torch.Tensor:
            tok.copy_(idx_t.view(B, 1))
            pos.fill_(state.pos)
            graph.replay()
            state.pos += 1
            return logits.clone()

        return step

    def step(self, idx_t: torch.Tensor, state: BDHState) -> torch.Tensor:
        """Feed one token per sequence, idx_t (B,); returns its next-token logits (B, V), updating ``state``."""
        return self._chunk(idx_t[:, None], state)

    def prefill(self, idx: torch.Tensor, state: BDHState, chunk: int = 256, every: bool = False) -> torch.Tensor:
        """Feed a prompt idx (B, T) in chunks of ``chunk`` tokens; returns the last token's logits (B, V).

        Work per chunk is bounded and memory does not grow with the prompt's length (with ``every``, each token's
        logits come back, (B, T, V): the recurrent form of :meth:`forward`, continuing from ``state``).
        """
        if idx.shape[1] == 0 or chunk <= 0:
            raise RecruitError(f"prefill needs a non-empty prompt and chunk > 0, got T={idx.shape[1]}, chunk={chunk}")
        logits = [self._chunk(idx[:, s : s + chunk], state, every) for s in range(0, idx.shape[1], chunk)]
        return torch.cat(logits, dim=1) if every else logits[-1]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        chunk: int = 256,
        cuda_graph: bool | None = None,
    ) -> torch.Tensor:
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens in the recurrent form; returns (B, T + new).

        ``greedy`` takes the arg-max; otherwise samples from ``softmax(logits / temperature)``, restricted
        to the ``top_k`` most likely tokens when given. The cost per new token is independent of position.
        ``cuda_graph`` replays each step from a CUDA graph (:meth:`cuda_graph_step`); default: on CUDA.
        """
        check_prompt(idx)
        check_sampling(temperature, greedy, top_k, max_new_tokens)
        state = self.new_state(idx.shape[0])
        logits = self.prefill(idx, state, chunk)  # (B, V)
        if cuda_graph is None:
            cuda_graph = idx.is_cuda and max_new_tokens > 1
        if cuda_graph:
            graphed = self.cuda_graph_step(state)
            step = lambda nxt: graphed(nxt[:, 0])  # noqa: E731
        else:
            step = lambda nxt: self.step(nxt[:, 0], state)  # noqa: E731  (B, 1) -> (B, V)
        return decode_loop(idx, logits, step, max_new_tokens, temperature, top_k, greedy, generator)


class ActivityL1:
    """A :class:`recruit.train.LossTerm`: :meth:`BDH.activity_loss` of the last forward (``bdh_activity``).

    With ``BDHConfig.activity_warmup`` = w > 0 the penalty is scaled by min(1, progress / w), progress being the
    fraction of the run done, which the trainer reports through :meth:`set_progress` before each step (so a
    resumed run picks the ramp up where it stopped).
    """

    name = "bdh_activity"

    def __init__(self) -> None:
        self.progress = 1.0  # fraction of the run done; 1 (full weight) until a trainer says otherwise

    def set_progress(self, fraction: float) -> None:
        """The fraction of the training run done, in [0, 1]."""
        self.progress = fraction

    def scale(self, warmup: float) -> float:
        """The ramp's factor at the current progress: min(1, progress / warmup), or 1 without a ramp."""
        return min(1.0, self.progress / warmup) if warmup > 0 else 1.0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The weighted activity penalty of the BDH inside ``model`` (it may be compiled or wrapped)."""
        bdh = next(m for m in model.modules() if isinstance(m, BDH))
        return self.scale(bdh.config.activity_warmup) * bdh.activity_loss()

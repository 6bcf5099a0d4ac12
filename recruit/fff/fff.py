"""Fast feedforward (FFF) layer, UltraFastBERT variant: K balanced binary trees of single-neuron nodes.

Nodes are in heap order (children of ``n``: ``2n+1``, ``2n+2``). At node ``n`` a token computes
``a = x·w_in[n] + b_in[n]``, adds ``gelu(a)·w_out[:, n]`` to the output and goes right iff ``a > 0``; it
uses ``(D+1)·K`` of the ``K·(2^(D+1)-1)`` neurons. Training runs ``mode="hard"`` (dense, masked to the path)
or ``mode="soft"`` (a mixture over paths); ``eval()`` runs hard routing by a fused kernel of
:mod:`recruit.fff.kernels` when importable, else a pure-torch gather walk. All are tested against the slow
:meth:`FastFeedForward.reference_forward`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Backend = Literal["auto", "torch", "reference"]
Mode = Literal["hard", "soft"]
BACKENDS = ("auto", "torch", "reference")
MODES = ("hard", "soft")


def pack_rows(w_in: torch.Tensor, w_out_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w_in`` (R, D_in) and ``w_out_t`` (R, D_out) copied into one (R, D_in + D_out) buffer; returns its two views.

    Row r of the buffer is ``w_in[r]`` followed by ``w_out_t[r]``, so a token's visit to a node reads one
    contiguous stretch of memory instead of two rows far apart, one stream for the hardware prefetcher.
    :func:`~recruit.fff.kernels.cpu.fff_cpu` reads the views in place. Same values, same results. A CPU buffer is
    advised onto 2 MiB pages before it is filled (see :func:`~recruit.fff.kernels.cpu.advise_huge_pages`).
    """
    if w_in.dim() != 2 or w_out_t.dim() != 2 or w_in.shape[0] != w_out_t.shape[0]:
        raise ValueError(f"pack_rows needs (R, D_in) and (R, D_out), got {tuple(w_in.shape)}, {tuple(w_out_t.shape)}")
    if w_in.dtype != w_out_t.dtype or w_in.device != w_out_t.device:
        raise ValueError("pack_rows needs w_in and w_out_t of one dtype and device")
    d_in = w_in.shape[1]
    if w_in.device.type != "cpu":
        packed = torch.cat([w_in, w_out_t], dim=1)  # (R, D_in + D_out)
        return packed[:, :d_in], packed[:, d_in:]
    packed = torch.empty(w_in.shape[0], d_in + w_out_t.shape[1], dtype=w_in.dtype)  # (R, D_in + D_out)
    try:  # imported here: the layer works without the kernels package (then the pages stay as they come)
        from recruit.fff.kernels.cpu import advise_huge_pages
    except ImportError:
        pass
    else:
        advise_huge_pages(packed, collapse=False)  # before the first touch: faulted in as huge pages
    packed[:, :d_in].copy_(w_in)
    packed[:, d_in:].copy_(w_out_t)
    return packed[:, :d_in], packed[:, d_in:]


MAX_DEPTH = 30
"""The deepest tree an FFF may have (2^31 − 1 nodes per tree); configs and the command line check against it."""


@dataclass
class FFFConfig:
    """Hyperparameters of :class:`FastFeedForward`."""

    dim_in: int  # input width
    dim_out: int  # output width
    depth: int  # D: levels below the root; a token visits D+1 nodes per tree
    n_trees: int = 1  # K parallel trees whose outputs are summed
    mode: Mode = "hard"  # training forward: masked hard routing or soft path mixture
    hardening: float = 0.0  # weight of the entropy hardening loss (soft mode only)

    def __post_init__(self) -> None:
        for name in ("dim_in", "dim_out", "n_trees"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"depth must be in 0..{MAX_DEPTH}, got {self.depth}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.hardening < 0:
            raise ValueError(f"hardening must be >= 0, got {self.hardening}")

    @property
    def n_nodes(self) -> int:
        """Nodes per tree: 2^(D+1) - 1."""
        return 2 ** (self.depth + 1) - 1

    @property
    def width(self) -> int:
        """All neurons of the layer: K · n_nodes."""
        return self.n_trees * self.n_nodes


class FastFeedForward(nn.Module):
    """FFF layer with UltraFastBERT's weight layout; maps (..., dim_in) -> (..., dim_out).

    Parameters: ``w_in`` (K·nodes, dim_in) and ``b_in`` (K·nodes,) initialised U(±1/√dim_in); ``w_out``
    (dim_out, K·nodes), no bias, U(±1/√((D+1)·K)). Tree ``k`` owns rows ``[k·nodes, (k+1)·nodes)``.

    Example:
        >>> fff = FastFeedForward(16, 16, depth=3, n_trees=2)
        >>> fff(torch.randn(2, 5, 16)).shape, fff.neurons_used_per_token()
        (torch.Size([2, 5, 16]), 8)
    """

    def __init__(
        self, dim_in: int, dim_out: int, depth: int, n_trees: int = 1, mode: Mode = "hard", hardening: float = 0.0
    ) -> None:
        super().__init__()
        self.config = c = FFFConfig(dim_in, dim_out, depth, n_trees, mode, hardening)
        self.w_in = nn.Parameter(torch.empty(c.width, dim_in))
        self.b_in = nn.Parameter(torch.empty(c.width))
        self.w_out = nn.Parameter(torch.empty(dim_out, c.width))
        self.backend: Backend = "auto"
        self._last_logits: torch.Tensor | None = None  # soft mode: internal-node logits of the last forward
        self._kernel_cache: tuple[tuple, tuple[torch.Tensor, ...]] | None = None
        self._prepared: tuple[tuple[torch.Tensor, ...], Callable[[torch.Tensor], torch.Tensor] | None] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """UltraFastBERT's initialisation (see the class docstring)."""
        c = self.config
        bound_in, bound_out = c.dim_in**-0.5, ((c.depth + 1) * c.n_trees) ** -0.5
        for p, bound in ((self.w_in, bound_in), (self.b_in, bound_in), (self.w_out, bound_out)):
            nn.init.uniform_(p, -bound, bound)

    @property
    def backend(self) -> Backend:
        """Inference path in eval mode: ``auto`` (fused kernel, else torch), ``torch`` or ``reference``."""
        return self._backend

    @backend.setter
    def backend(self, value: Backend) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {value!r}")
        self._backend = value

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        c = self.config
        return f"{c.dim_in}->{c.dim_out}, depth={c.depth}, n_trees={c.n_trees}, mode={c.mode}, width={c.width}"

    def neurons_used_per_token(self) -> int:
        """Neurons on one token's paths: (D+1)·K."""
        return (self.config.depth + 1) * self.config.n_trees

    @property
    def fraction_used(self) -> float:
        """Fraction of the layer's neurons a token uses: (D+1)·K / (K·nodes)."""
        return self.neurons_used_per_token() / self.config.width

    def _route_logits(self, a: torch.Tensor) -> torch.Tensor:
        """Paths from dense pre-activations ``a`` (N, K·nodes): global rows (N, K, D+1), root first."""
        c = self.config
        a = a.view(-1, c.n_trees, c.n_nodes)  # (N, K, nodes)
        node = torch.zeros(a.shape[:2], dtype=torch.long, device=a.device)  # (N, K) index within a tree
        path = []
        for _ in range(c.depth + 1):
            path.append(node)
            right = a.gather(2, node.unsqueeze(2)).squeeze(2) > 0  # (N, K)
            node = 2 * node + 1 + right.long()
        offsets = torch.arange(c.n_trees, device=a.device) * c.n_nodes  # (K,) first row of each tree
        return torch.stack(path, 2) + offsets[None, :, None]  # (N, K, D+1)

    @torch.no_grad()
    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``w_in`` each token visits: (..., dim_in) -> (N, K, D+1) int64, N = prod(...)."""
        x2 = x.reshape(-1, self.config.dim_in)  # (N, dim_in)
        return self._route_logits(F.linear(x2, self.w_in.to(x2.dtype), self.b_in.to(x2.dtype)))

    def inference_flops(self, tokens: int) -> int:
        """FLOPs of hard inference on ``tokens`` tokens (multiply-add = 2, as :func:`recruit.measure.count_flops`).

        Each token visits D + 1 nodes per tree: one ``w_in`` row (dim_in multiply-adds) and one ``w_out`` column
        (dim_out) each. The fused kernels run outside torch's operators, so ``count_flops`` adds this for them.
        """
        c = self.config
        return 2 * tokens * c.n_trees * (c.depth + 1) * (c.dim_in + c.dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim_in) -> (..., dim_out): the training forward of ``mode``, or hard inference in eval mode."""
        if x.shape[-1:] != (self.config.dim_in,):  # (the fused kernels' own checks would name other things)
            raise ValueError(f"FastFeedForward expects inputs (..., {self.config.dim_in}), got {tuple(x.shape)}")
        if self.training:
            return self.forward_soft(x) if self.config.mode == "soft" else self.forward_masked(x)
        if self._last_logits is not None:  # (Module.__setattr__ costs µs; skipped when there is nothing to drop)
            self._last_logits = None
        if self.backend == "reference":
            return self.reference_forward(x)
        y = self._forward_kernel(x) if self.backend == "auto" else None
        return y if y is not None else self.forward_hard_inference(x)

    def forward_masked(self, x: torch.Tensor) -> torch.Tensor:
        """UltraFastBERT's training forward: dense pre-activations, GELU masked to each token's path.

        Gradients reach only the ``w_in``/``b_in`` rows and ``w_out`` columns on some token's path.
        """
        c = self.config
        x2 = x.reshape(-1, c.dim_in)  # (N, dim_in)
        a = F.linear(x2, self.w_in, self.b_in)  # (N, K·nodes)
        rows = self._route_logits(a.detach())  # (N, K, D+1)
        mask = torch.zeros_like(a).scatter_(1, rows.flatten(1), 1.0)  # (N, K·nodes), 1 on the path
        y = F.linear(F.gelu(a) * mask, self.w_out)  # (N, dim_out)
        return y.reshape(*x.shape[:-1], c.dim_out)

    def forward_soft(self, x: torch.Tensor) -> torch.Tensor:
        """Soft routing: a mixture over all root-to-leaf paths, computed per node.

        Node ``n`` goes right with ``p_n = sigmoid(a_n)``. The path to leaf ``L`` has weight
        ``P(L) = prod over its internal nodes of (p_n if it turns right else 1 - p_n)``, and the output is
        ``sum_L P(L) · sum_{n on L} gelu(a_n)·w_out[:, n]``, which equals ``sum_n r_n·gelu(a_n)·w_out[:, n]``
        with ``r_n`` the probability of reaching ``n`` (``r_root = 1``, ``r_{2n+1} = r_n(1-p_n)``,
        ``r_{2n+2} = r_n·p_n``). As |a| grows, ``r`` becomes the indicator of the hard path. The internal
        nodes' logits are kept for :meth:`hardening_loss`.
        """
        c = self.config
        x2 = x.reshape(-1, c.dim_in)  # (N, dim_in)
        a = F.linear(x2, self.w_in, self.b_in).view(-1, c.n_trees, c.n_nodes)  # (N, K, nodes)
        reach = [a.new_ones(a.shape[0], c.n_trees, 1)]  # level 0: (N, K, 1)
        for level in range(c.depth):
            z = a[..., 2**level - 1 : 2 ** (level + 1) - 1]  # (N, K, 2^level) logits of this level
            r = reach[-1]
            reach.append(torch.stack([r * torch.sigmoid(-z), r * torch.sigmoid(z)], -1).flatten(2))  # (N,K,2^(l+1))
        r = torch.cat(reach, 2)  # (N, K, nodes), heap order
        self._last_logits = a[..., : 2**c.depth - 1]  # (N, K, internal nodes)
        y = F.linear((F.gelu(a) * r).flatten(1), self.w_out)  # (N, dim_out)
        return y.reshape(*x.shape[:-1], c.dim_out)

    def forward_hard_inference(self, x: torch.Tensor) -> torch.Tensor:
        """Hard inference by a pure-torch gather walk, O(D) work per token; the fused kernels' fallback.

        Per level: gather each token's ``w_in`` row, dot, GELU, gather its ``w_out`` column, accumulate,
        choose the child.
        """
        c = self.config
        dt = torch.promote_types(x.dtype, self.w_in.dtype)
        x2 = x.reshape(-1, c.dim_in).to(dt)  # (N, dim_in)
        if torch.is_grad_enabled() and self.w_in.requires_grad:  # differentiable views of the weights
            w_in, b_in, w_out_t = self.w_in.to(dt), self.b_in.to(dt), self.w_out.t().to(dt)  # w_out_t (K·nodes, out)
        else:  # cached, w_out_t contiguous so that the column gathers read contiguous rows
            w_in, b_in, w_out_t = self._kernel_args(dt)
        node = torch.zeros(x2.shape[0], c.n_trees, dtype=torch.long, device=x2.device)  # (N, K)
        offsets = torch.arange(c.n_trees, device=x2.device) * c.n_nodes  # (K,) first row of each tree
        y = x2.new_zeros(x2.shape[0], c.dim_out)  # (N, dim_out)
        for _ in range(c.depth + 1):
            rows = node + offsets  # (N, K) global row per token and tree
            a = torch.matmul(w_in[rows], x2.unsqueeze(2)).squeeze(2) + b_in[rows]  # (N, K, d) @ (N, d, 1) -> (N, K)
            y = y + torch.matmul(F.gelu(a).unsqueeze(1), w_out_t[rows]).squeeze(1)  # (N, 1, K) @ (N, K, out)
            node = 2 * node + 1 + (a > 0).long()
        return y.reshape(*x.shape[:-1], c.dim_out).to(x.dtype)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The oracle: a literal per-token, per-tree, per-level Python loop (slow; for tests only)."""
        c = self.config
        dt = torch.promote_types(x.dtype, self.w_in.dtype)
        x2 = x.reshape(-1, c.dim_in).to(dt)  # (N, dim_in)
        outs = []
        for t in range(x2.shape[0]):
            y = x2.new_zeros(c.dim_out)
            for k in range(c.n_trees):
                n = 0
                for _ in range(c.depth + 1):
                    row = k * c.n_nodes + n
                    a = torch.dot(x2[t], self.w_in[row].to(dt)) + self.b_in[row].to(dt)
                    y = y + F.gelu(a) * self.w_out[:, row].to(dt)
                    n = 2 * n + 2 if a.item() > 0 else 2 * n + 1
            outs.append(y)
        y = torch.stack(outs) if outs else x2.new_zeros(0, c.dim_out)  # (N, dim_out)
        return y.reshape(*x.shape[:-1], c.dim_out).to(x.dtype)

    def reference_soft_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Oracle of soft mode: enumerates every root-to-leaf path and weights it by its probability."""
        c = self.config
        x2 = x.reshape(-1, c.dim_in)  # (N, dim_in)
        outs = []
        for t in range(x2.shape[0]):
            y = x2.new_zeros(c.dim_out)
            for k in range(c.n_trees):
                for leaf in range(2**c.depth):
                    n, prob, contrib = 0, x2.new_ones(()), x2.new_zeros(c.dim_out)
                    for level in range(c.depth + 1):
                        row = k * c.n_nodes + n
                        a = torch.dot(x2[t], self.w_in[row]) + self.b_in[row]
                        contrib = contrib + F.gelu(a) * self.w_out[:, row]
                        if level < c.depth:
                            right = (leaf >> (c.depth - 1 - level)) & 1
                            prob = prob * (torch.sigmoid(a) if right else torch.sigmoid(-a))
                            n = 2 * n + 1 + right
                    y = y + prob * contrib
            outs.append(y)
        y = torch.stack(outs) if outs else x2.new_zeros(0, c.dim_out)  # (N, dim_out)
        return y.reshape(*x.shape[:-1], c.dim_out)

    def _kernel_args(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detached ``(w_in, b_in, w_out.t())`` in ``dtype``, rows contiguous; cached until a weight changes.

        On the CPU ``w_in`` and ``w_out.t()`` are the two views of one buffer made by :func:`pack_rows` (a
        node's two rows side by side, the C++ kernel's fastest layout); elsewhere they are contiguous tensors.
        """
        ps = self._parameters  # not self.w_in: Module.__getattr__ costs about a µs per access, per call here
        w_in, b_in, w_out = ps["w_in"], ps["b_in"], ps["w_out"]
        key = (dtype, w_in.device, w_in._version, b_in._version, w_out._version)
        key += (w_in.data_ptr(), b_in.data_ptr(), w_out.data_ptr())
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            w_in, b_in, w_out_t = (p.detach().to(dtype) for p in (w_in, b_in, w_out.t()))
            if w_in.device.type == "cpu":
                w_in, w_out_t = pack_rows(w_in, w_out_t)
            else:
                w_in, w_out_t = w_in.contiguous(), w_out_t.contiguous()
            self._kernel_cache = (key, (w_in, b_in.contiguous(), w_out_t))  # w_out.t(): (K·nodes, dim_out)
        return self._kernel_cache[1]

    def __getstate__(self) -> dict:
        """The module's state without its inference caches (rebuilt by the next eval forward), for pickle and copy."""
        state = dict(super().__getstate__())
        state["_kernel_cache"] = state["_prepared"] = None
        return state

    def _kernel(self, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``recruit.fff.kernels.fff_prepare`` of :meth:`_kernel_args`, rebuilt with them; None without the kernels."""
        args = self._kernel_args(dtype)
        if self._prepared is None or self._prepared[0] is not args:
            try:
                prepare = importlib.import_module("recruit.fff.kernels").fff_prepare
            except (ImportError, AttributeError):
                return None
            self._prepared = (args, prepare(*args, self.config.depth, self.config.n_trees))
        return self._prepared[1]

    def _forward_kernel(self, x: torch.Tensor) -> torch.Tensor | None:
        """Hard inference by the prepared fused kernel; None when it is missing or gradients are needed.

        Contract: ``fff_prepare(w_in, b_in, w_out_t, depth, n_trees)`` returns ``f(x2d (N, dim_in)) -> (N,
        dim_out)``, one dtype throughout, which returns None (or raises NotImplementedError) for inputs it does
        not handle.
        """
        w_dtype = self._parameters["w_in"].dtype
        if torch.is_grad_enabled() and (self._parameters["w_in"].requires_grad or x.requires_grad):
            return None
        c = self.config
        dt = x.dtype if x.dtype == w_dtype else torch.promote_types(x.dtype, w_dtype)
        kernel = self._kernel(dt)
        if kernel is None:
            return None
        x2 = x.reshape(-1, c.dim_in)  # (N, dim_in); each step below only where needed (µs each at one token)
        if x2.dtype != dt:
            x2 = x2.to(dt)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        try:
            y = kernel(x2)
        except NotImplementedError:
            return None
        if y is None:
            return None
        y = y.reshape(*x.shape[:-1], c.dim_out)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def branch_entropy(self) -> torch.Tensor:
        """Mean binary entropy (nats) of internal nodes' branch probabilities in the last soft forward, else 0."""
        z = self._last_logits
        if z is None or z.numel() == 0:
            return self.w_in.new_zeros(())
        p = torch.sigmoid(z)
        return (p * F.softplus(-z) + (1 - p) * F.softplus(z)).mean()  # H(p) = -p log p - (1-p) log(1-p)

    def hardening_loss(self) -> torch.Tensor:
        """``hardening`` × :meth:`branch_entropy`: pushes branch probabilities towards 0 or 1."""
        return self.config.hardening * self.branch_entropy()


@dataclass
class HardeningLoss:
    """A :class:`recruit.train.LossTerm`: sum of :meth:`FastFeedForward.hardening_loss` (from the last forward)."""

    name: str = "fff_hardening"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The summed, weighted hardening loss of every :class:`FastFeedForward` in ``model``."""
        terms = [m.hardening_loss() for m in model.modules() if isinstance(m, FastFeedForward)]
        return torch.stack(terms).sum() if terms else logits.new_zeros(())

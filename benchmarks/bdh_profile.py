"""Where a BDH training step spends its GPU time: per kernel, and per fused-head GEMM against cuBLAS.

    python benchmarks/bdh_profile.py --out DIR                  # on a GPU: bdh-ref, batch 32 × 512, bf16
    TRITON_INTERPRET=1 python benchmarks/bdh_profile.py --device cpu --quick --out DIR   # dry run here

A diagnostic for tuning ``impl="fused"`` (:mod:`recruit.models.bdh_triton`), not a result: the figures of
record are ``recruit bench bdh-speed``'s. Writes ``DIR/bdh-profile.txt`` with

1. for each form (fused, and fast for comparison), the kernels of one optimiser step under ``torch.profiler``,
   sorted by device time, and the step's total;
2. each epilogue of the fused GEMM at the step's shapes: its time, against the same-shape product in torch
   (cuBLAS) without the epilogue, with the FLOP rate and the bytes its neuron tensors move per second, and
   the causal scores against torch's full product;
3. the launch configuration the autotuner picked for each shape.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from recruit import measure
from recruit.models import BDH, bdh_config
from recruit.models.bdh import rope_tables


def _step_fn(model: BDH, opt, idx: torch.Tensor, device: torch.device):
    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(idx[:, :-1]).float().flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def profile_forms(preset: str, batch: int, seq: int, device: torch.device, out: io.StringIO) -> None:
    """Part 1: the kernels of one step of each form, by device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    for impl in ("fused", "fast"):
        torch.manual_seed(0)
        model = BDH(bdh_config(preset, impl=impl, max_seq_len=seq)).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
        idx = torch.randint(0, model.config.vocab_size, (batch, seq + 1), device=device)
        step = _step_fn(model, opt, idx, device)
        timing = measure.time_fn(step, device, warmup=2, repeats=3)  # the warm-up autotunes
        with profile(activities=acts) as prof:
            step()
            measure.sync(device)
        out.write(f"\n== {impl}: {timing.median * 1e3:.2f} ms per step (median of 3), {preset}, {batch} x {seq}\n")
        out.write(prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=70))
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()


def time_epilogues(batch: int, seq: int, d: int, n: int, device: torch.device, out: io.StringIO) -> None:
    """Part 2: each epilogue at the step's shapes, against the bare torch product of the same shapes."""
    from recruit.models import bdh_triton as bt

    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    M, T = batch * seq, seq

    def rnd(*shape):
        return torch.randn(*shape, device=device, dtype=dt) * 0.05

    v, dxw, e_t, an, g = rnd(M, d), rnd(d, n), rnd(d, n), rnd(M, d), rnd(M, d)
    dxw, e_t = dxw.mT.contiguous().mT, e_t.mT.contiguous().mT  # K-major, as the head passes D_x, D_y and Eᵀ
    x, y = torch.relu(rnd(2, M, n)).unbind(0)  # the halves of one tensor, as the head makes them (see _get_pair)
    xr = torch.relu(rnd(M, n))
    o0, o1 = torch.empty_like(x), torch.empty_like(x)
    gsym = rnd(batch, T, T)
    scores = torch.empty(batch, T, T, device=device, dtype=dt)
    flat = scores.view(M, T)
    cos, sin = rope_tables(torch.arange(T, device=device), n, 2.0**16)
    trig = bt.halves_of_one(cos[:, ::2], sin[:, ::2])
    xrb = xr.view(batch, T, n)
    cases = {  # name: (fused launch, the bare torch product, FLOPs, bytes of the neuron tensors read + written)
        "ENCODE": (lambda: bt._launch(bt.ENCODE, v, dxw, (o0, o1), (x, x), trig, T),
                   lambda: v @ dxw, 2 * M * d * n, 2 * M * n * 2),
        "GATE": (lambda: bt._launch(bt.GATE, an, dxw, (o0, o1), (x, x), trig, T, p_drop=0.1, seed=1),
                 lambda: an @ dxw, 2 * M * d * n, 3 * M * n * 2),
        "GATE_BACKWARD": (lambda: bt._launch(bt.GATE_BACKWARD, g, e_t, (o0, o1), (x, y), trig, T, p_drop=0.1,
                                             seed=1), lambda: g @ e_t, 2 * M * d * n, 4 * M * n * 2),
        "GATE p=0": (lambda: bt._launch(bt.GATE, an, dxw, (o0, o1), (x, x), trig, T), lambda: an @ dxw,
                     2 * M * d * n, 3 * M * n * 2),  # without dropout: what its Philox draws cost
        "GATE_BACKWARD p=0": (lambda: bt._launch(bt.GATE_BACKWARD, g, e_t, (o0, o1), (x, y), trig, T),
                              lambda: g @ e_t, 2 * M * d * n, 4 * M * n * 2),
        "ROPE_BACKWARD": (lambda: bt._launch(bt.ROPE_BACKWARD, gsym, xr, (o0, o0), (y, x), trig, T,
                                             batch=(T * T, T * n)),
                          lambda: torch.matmul(gsym, xrb), 2 * batch * T * T * n, 4 * M * n * 2),
        "SCORES": (lambda: bt._launch(bt.SCORES, xr, xr.mT, (flat, flat), (flat, flat), trig, T,
                                      batch=(T * n, T * n)),
                   lambda: torch.matmul(xrb, xrb.mT).tril_(-1), 2 * batch * T * T * n, M * n * 2),
    }  # fmt: skip
    out.write(f"\n== fused GEMM epilogues at B·T={M}, N={n}, d={d}, T={T}, {dt}\n")
    out.write(f"{'epilogue':>18} {'fused us':>10} {'torch us':>10} {'ratio':>7} {'TFLOP/s':>8} {'GB/s':>7}\n")
    timings = {}
    for name, (fused, bare, flops, nbytes) in cases.items():
        if not bt.interpreting():  # tune this shape again, to record every config's time
            bt._tuned.cache.clear()
            fused()
            timings[name] = getattr(bt._tuned, "configs_timings", None) or {}
        t_f = measure.time_fn(fused, device, warmup=3, repeats=20).median
        t_t = measure.time_fn(bare, device, warmup=3, repeats=20).median
        out.write(f"{name:>18} {t_f * 1e6:10.1f} {t_t * 1e6:10.1f} {t_f / t_t:7.2f} {flops / t_f / 1e12:8.1f} "
                  f"{nbytes / t_f / 1e9:7.0f}\n")  # fmt: skip
    if not bt.interpreting():
        out.write("\n== autotuner choices (key -> config)\n")
        for key, config in bt._tuned.cache.items():
            out.write(f"{key} -> {config}\n")
        out.write("\n== every config's time (us), fastest first\n")
        for name, by_config in timings.items():
            for config, t in sorted(by_config.items(), key=lambda kv: _first(kv[1])):
                out.write(f"{name:>18} {_first(t) * 1e3:10.1f}  {config}\n")


def _first(t) -> float:
    """The autotuner's time of a config (ms): its median, or inf where it did not run."""
    return float(t[0] if isinstance(t, (list, tuple)) else t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for bdh-profile.txt")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="bdh-nano at 2 x 32 (a dry run of the script)")
    p.add_argument("--skip-forms", action="store_true", help="only the epilogue timings")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.quick:
        preset, batch, seq, d, n = "bdh-nano", 2, 32, 32, 64
    else:
        preset, batch, seq, d, n = "bdh-ref", 32, 512, 256, 8192
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("on the CPU the fused kernels need TRITON_INTERPRET=1")
    out = io.StringIO()
    out.write(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}\n")
    if not args.skip_forms:
        profile_forms(preset, batch, seq, device, out)
    time_epilogues(batch, seq, d, n, device, out)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bdh-profile.txt").write_text(out.getvalue())
    print(out.getvalue())


if __name__ == "__main__":
    main()

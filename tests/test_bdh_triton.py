"""BDH's fused Triton head (``impl="fused"``) against the torch form, on the CPU through Triton's interpreter."""

import os
import subprocess
import sys

import pytest
import torch

from recruit.models import BDH, bdh_config
from recruit.models.bdh import rope_tables

# Run in a subprocess: the interpreter must be on before ``triton`` is first imported (see test_fff_kernels).
INTERPRET = r"""
import sys, torch
from recruit.models import BDH, bdh_config
from recruit.models.bdh_triton import GATE, _launch, fused_head, supports
sys.path.insert(0, sys.argv[2])
from test_bdh_triton import head_case, launch_all, model_case

from recruit.models import bdh_triton

out = {}
for name, dtype, p_drop, means in [("fp32", torch.float32, 0.0, True), ("odd", torch.float32, 0.0, False),
                                   ("bf16", torch.bfloat16, 0.0, False), ("drop", torch.float32, 0.3, True),
                                   ("rows-fp32", torch.float32, 0.0, True), ("rows-odd", torch.float32, 0.0, False),
                                   ("rows-drop", torch.float32, 0.3, True), ("tma-fp32", torch.float32, 0.0, True),
                                   ("tma-drop", torch.float32, 0.3, True)]:
    # "rows-": each program makes two row blocks against a held B block (ROW_BLOCKS = 2; "rows-odd" has 3);
    # "tma-": 3 programs loop over the tiles, which the products of K = d move through tensor descriptors
    bdh_triton._INTERPRETED.update(ROW_BLOCKS=2 if name.startswith("rows-") else 1,
                                   PERSISTENT=3 * name.startswith("tma-"), TMA=int(name.startswith("tma-")))
    v, dx, dy, e, c, s, w = head_case(name.split("-")[-1], dtype)
    torch.manual_seed(5)
    o, xm, ym = fused_head(v, dx, dy, e, c, s, p_drop, means=means)
    grads = torch.autograd.grad((o.float() * w).sum() + 3 * xm + 5 * ym, (v, dx, dy, e))
    keep = None
    if p_drop:  # the mask of seed 5: GATE with x = 1 and y = 1 stores the kept elements as 1 / (1 - p)
        torch.manual_seed(5)
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        M, N = v.shape[0] * v.shape[1], dx.shape[1]
        ones, y, xy = torch.ones(M, N), torch.empty(M, N), torch.empty(M, N)
        _launch(GATE, torch.ones(M, 16), torch.full((16, N), 1 / 16), (y, xy), (ones, ones), (c, s), v.shape[1],
                p_drop=p_drop, seed=seed)
        keep = xy != 0
    out[name] = dict(out=o.detach(), xm=xm, ym=ym, grads=grads, keep=keep, supports=supports(v, dx.shape[1]))
bdh_triton._INTERPRETED.update(ROW_BLOCKS=1, PERSISTENT=0, TMA=0)
out["row_blocks"] = {r: launch_all(torch.device("cpu"), torch.float32, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64,
                                                                             GROUP_M=2, ROW_BLOCKS=r), T=32, N=48, d=32)
                     for r in (1, 2)}  # fmt: skip
out["persistent"] = {p: launch_all(torch.device("cpu"), torch.float32, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16,
                                                                             GROUP_M=2, ROW_BLOCKS=1, PERSISTENT=p),
                                   T=32, N=48, d=32)
                     for p in (0, 5)}  # fmt: skip
tma_meta = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, ROW_BLOCKS=1, PERSISTENT=5)
kernel, launched = bdh_triton._neuron_gemm, []


class Spy:  # the epilogues that the "tma" launches below run with TMA on
    arg_names = kernel.arg_names

    def __getitem__(self, grid):
        return lambda *args, **kw: launched.append((kw["EPILOGUE"], kw["TMA"])) or kernel[grid](*args, **kw)


bdh_triton._neuron_gemm = Spy()
out["tma"] = {(n, tma): launch_all(torch.device("cpu"), torch.float32, {**tma_meta, "TMA": tma}, T=32, N=n, d=32)
              for n in (48, 40) for tma in (0, 1)}  # fmt: skip
bdh_triton._neuron_gemm = kernel
out["tma_launched"] = launched

model, idx, tgt = model_case()
for impl in ("fused", "fast"):
    m = BDH(bdh_config("bdh-nano", dropout=0.0, impl=impl, activity_l1=0.5)).train()
    m.load_state_dict(model.state_dict())
    logits = m(idx)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten()) + m.activity_loss()
    loss.backward()
    out[impl] = dict(logits=logits.detach(), grads={k: p.grad for k, p in m.named_parameters()})
m = BDH(bdh_config("bdh-nano", dropout=0.0, impl="fused")).eval()  # compiled: the heads run between graphs
m.load_state_dict(model.state_dict())
out["compiled"] = torch.compile(m)(idx).detach()
m = BDH(bdh_config("bdh-nano", dropout=0.1, impl="fused")).train()  # dropout inside the whole model
out["trained"] = [float(torch.nn.functional.cross_entropy(m(idx).flatten(0, 1), tgt.flatten()).backward() or 0)
                  for _ in range(2)]
torch.save(out, sys.argv[1])
"""

SHAPES = {"fp32": (2, 32, 16, 64), "odd": (1, 48, 8, 48), "bf16": (2, 32, 16, 64), "drop": (2, 32, 16, 64)}


def head_case(name: str, dtype: torch.dtype):
    """Inputs of one head: v (B, T, d), D_x, D_y (d, N), E (N, d), cos, sin (T, N/2), output weights w."""
    B, T, d, N = SHAPES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    v = torch.randn(B, T, d, generator=g).to(dtype).requires_grad_()
    dx, dy, e = ((torch.randn(*shape, generator=g) * 0.3).to(dtype).requires_grad_() for shape in
                 ((d, N), (d, N), (N, d)))  # fmt: skip
    cos, sin = rope_tables(torch.arange(T), N, 2.0**16)
    return v, dx, dy, e, cos[:, ::2].contiguous(), sin[:, ::2].contiguous(), torch.randn(B, T, d, generator=g)


def launch_all(device, dtype, config: dict, B: int = 2, T: int = 512, N: int = 1024, d: int = 256, epilogues=range(5)):
    """The fused head's GEMM launched with ``config`` on random inputs, per epilogue: {epilogue: outputs}.

    The products of a head at (B, T, d, N), with dropout 0.25 where it applies; one seed for every config, so two
    configs that multiply in the same order (the same BLOCK_K) give the same bits.
    """
    from recruit.models import bdh_triton as bt

    g = torch.Generator().manual_seed(7)

    def rnd(*shape, relu=False):
        t = torch.randn(*shape, generator=g) * 0.1
        return (t.relu() if relu else t).to(device=device, dtype=dtype)

    M = B * T
    v, dx, an, g2, e_t = rnd(M, d), rnd(d, N), rnd(M, d), rnd(M, d), rnd(d, N)
    dx, e_t = dx.mT.contiguous().mT, e_t.mT.contiguous().mT  # K-major, as the head passes D_x, D_y and Eᵀ
    x, y = rnd(2, M, N, relu=True).unbind(0)  # the halves of one tensor, as the head makes them (see _get_pair)
    xr, part, gram = rnd(M, N), rnd(M, N), rnd(B, T, T)
    cos, sin = rope_tables(torch.arange(T), N, 2.0**16)
    trig = bt.halves_of_one(cos[:, ::2].to(device), sin[:, ::2].to(device))
    got = {}
    for epilogue, a, b, ins, batch in [(bt.ENCODE, v, dx, (x, x), None), (bt.GATE, an, dx, (x, x), None),
                                       (bt.GATE_BACKWARD, g2, e_t, (x, y), None),
                                       (bt.ROPE_BACKWARD, gram, xr, (part, x), (T * T, T * N)),
                                       (bt.SCORES, xr, xr.mT, None, (T * N, T * N))]:  # fmt: skip
        if epilogue not in epilogues:
            continue
        outs = tuple(torch.zeros(M, T if epilogue == bt.SCORES else N, device=device, dtype=dtype) for _ in "01")
        bt._launch(epilogue, a, b, outs, ins or outs, trig, T, batch=batch, p_drop=0.25, seed=11, config=config)
        got[epilogue] = [o.cpu() for o in outs[: 1 if epilogue in (bt.ROPE_BACKWARD, bt.SCORES) else 2]]
    return got


def model_case():
    torch.manual_seed(3)
    model = BDH(bdh_config("bdh-nano"))
    idx = torch.randint(0, 288, (2, 32), generator=torch.Generator().manual_seed(4))
    return model, idx, idx.roll(-1, dims=1)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("bdh-triton") / "out.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", INTERPRET, str(out), os.path.dirname(__file__)],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


def _oracle(name: str, dtype: torch.dtype, keep=None, p_drop: float = 0.0, means: bool = True):
    from recruit.models.bdh_triton import dropout_p, reference_head

    v, dx, dy, e, c, s, w = head_case(name, dtype)
    o, x, y = reference_head(v, dx, dy, e, c, s, keep, dropout_p(p_drop))
    loss = (o.float() * w).sum() + (3 * x.float().mean() + 5 * y.float().mean() if means else 0)
    grads = torch.autograd.grad(loss, (v, dx, dy, e))
    return o.detach(), x.float().mean(), y.float().mean(), grads


@pytest.mark.parametrize("name", ["fp32", "odd", "drop", "rows-fp32", "rows-odd", "rows-drop", "tma-fp32", "tma-drop"])
def test_fused_head_equals_torch_in_fp32(interpreted, name):
    got = interpreted[name]
    assert got["supports"]
    p_drop = 0.3 if name.endswith("drop") else 0.0
    if p_drop:
        kept = got["keep"].float().mean().item()
        assert abs(kept - (1 - p_drop)) < 0.03  # 4096 draws: 7 standard deviations
        keep = got["keep"].float()
        agree = 1 - p_drop * (2 - 2 * p_drop)  # P(two independent draws agree) = p² + (1 − p)²
        for a, b in ((keep[:, :-1], keep[:, 1:]), (keep[:-1], keep[1:])):  # neighbours: columns, rows
            assert abs((a == b).float().mean().item() - agree) < 0.04
    means = not name.endswith("odd")
    o, xm, ym, grads = _oracle(name.split("-")[-1], torch.float32, got["keep"], p_drop, means=means)
    torch.testing.assert_close(got["out"], o, rtol=1e-5, atol=1e-5)
    if means:  # "odd" asks for no means: they come back as 0
        torch.testing.assert_close(got["xm"], xm)
        torch.testing.assert_close(got["ym"], ym)
    for a, b in zip(got["grads"], grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fused_head_in_bf16_is_about_as_close_to_fp32_as_torch_in_bf16(interpreted):
    """Errors against fp32 of the fused head and of torch's, both in bf16.

    The interpreter rounds fp32 to bf16 toward zero (the GPU to nearest), which about doubles the fused
    head's mean error here; the bound allows that and still catches a wrong rounding point or a wrong value.
    """
    exact = _oracle("bf16", torch.float32, means=False)
    torch_bf16 = _oracle("bf16", torch.bfloat16, means=False)
    got = interpreted["bf16"]

    def errs(a, b):
        d = (a.float() - b.float()).abs()
        return d.mean().item(), d.max().item()

    pairs = [(got["out"], torch_bf16[0], exact[0])] + list(zip(got["grads"], torch_bf16[3], exact[3], strict=True))
    for fused, by_torch, fp32 in pairs:
        assert fused.dtype == torch.bfloat16
        (mean_f, max_f), (mean_t, max_t) = errs(fused, fp32), errs(by_torch, fp32)
        assert mean_f <= 2.5 * mean_t + 1e-6 and max_f <= 4 * max_t + 1e-6, (mean_f, mean_t, max_f, max_t)


def test_fused_model_equals_fast_model(interpreted):
    fused, fast = interpreted["fused"], interpreted["fast"]
    torch.testing.assert_close(fused["logits"], fast["logits"], rtol=1e-5, atol=1e-5)
    assert fused["grads"].keys() == fast["grads"].keys()
    for k in fast["grads"]:
        torch.testing.assert_close(fused["grads"][k], fast["grads"][k], rtol=1e-4, atol=1e-5, msg=k)


def test_compiled_fused_model_equals_fast_model(interpreted):
    torch.testing.assert_close(interpreted["compiled"], interpreted["fast"]["logits"], rtol=1e-5, atol=1e-5)


def test_fused_model_trains_with_dropout(interpreted):
    assert all(torch.isfinite(torch.tensor(interpreted["trained"])))


def test_fused_falls_back_to_fast_without_a_gpu():
    """On CPU tensors (interpreter off) ``impl="fused"`` runs the fast form: same logits, same gradients."""
    model, idx, _ = model_case()
    fused = BDH(bdh_config("bdh-nano", dropout=0.0, impl="fused"))
    fast = BDH(bdh_config("bdh-nano", dropout=0.0, impl="fast"))
    for m in (fused, fast):
        m.load_state_dict(model.state_dict())
    torch.testing.assert_close(fused(idx), fast(idx), rtol=0, atol=0)


def test_autotuner_keeps_configs_whose_row_blocks_fit_the_sequences():
    """A batched product needs BLOCK_M · ROW_BLOCKS | T; small row blocks only when nothing larger divides T
    (T = 48, 16); a program holding its B block (ROW_BLOCKS > 1) only where BLOCK_K is K's power of two; a
    persistent program only where B is K-major (unit stride along K); one moving tiles by TMA only for an
    unbatched product of K-major operands whose row blocks divide T, and 16-byte aligned rows and tensors, and
    whose epilogue's two inputs (if it reads two) are the halves of one tensor."""
    pytest.importorskip("triton")
    from recruit.models.bdh_triton import _CONFIGS, _prune, _tuned

    def kept(T, N, K, batched, stride_bk=1, paired=True, **more):
        args = {"T": T, "N": N, "K": K, "stride_ak": 1, "stride_bk": stride_bk, "stride_am": K, "stride_bn": K}
        configs = _prune(_tuned.configs, {**args, **more}, BATCHED=batched, PAIRED=paired)
        return {c for c, t in zip(_CONFIGS, _tuned.configs, strict=True) if t in configs}

    walking = {c for c in _CONFIGS if c[5] == 1 and c[0] >= 64 and not c[6]}
    holding = {c for c in _CONFIGS if c[5] > 1}
    persistent = {c for c in _CONFIGS if c[6] and not c[7]}
    tma = {c for c in _CONFIGS if c[7]}
    assert holding and all(c[2] == 256 for c in holding) and persistent and all(c[5] == 1 for c in persistent)
    assert tma and all(c[6] and c[5] == 1 for c in tma)
    assert kept(512, 8192, 256, False) == walking | holding | persistent | tma  # K = d
    assert kept(512, 8192, 256, True) == walking | holding | persistent  # a batched product: no TMA
    assert kept(512, 8192, 256, False, paired=False) == walking | holding | persistent  # two inputs apart: no TMA
    assert kept(512, 8192, 256, False, stride_bk=8192) == walking | holding
    assert kept(512, 8192, 512, True, stride_bk=8192) == walking  # ROPE_BACKWARD: K = T, B = RoPE(x)
    assert kept(512, 512, 8192, True) == walking | persistent  # SCORES: K = N, B = RoPE(x)ᵀ
    assert kept(768, 8192, 256, True) == walking | persistent  # 512 rows per program do not divide the sequence
    assert kept(768, 8192, 256, False) == kept(512, 8192, 256, False)
    assert (
        kept(512, 8192, 256, False, stride_am=260)
        == kept(512, 8192, 256, False, stride_ak=2)
        == walking | holding | persistent
    )
    misaligned = torch.zeros(9)[1:]  # 4 bytes past an allocation
    assert kept(512, 8192, 256, False, a_ptr=misaligned) == walking | holding | persistent
    assert kept(512, 8192, 256, False, a_ptr=torch.zeros(8)) == kept(512, 8192, 256, False)
    assert kept(80, 8192, 256, True) == {(16, 64, 64, 4, 3, 1, 0, 0)}
    assert kept(48, 8192, 256, True) == {(16, 64, 64, 4, 3, 1, 0, 0)}
    assert {c[:2] for c in kept(32, 48, 32, True)} == {(16, 64), (32, 64)}
    assert all(c[0] >= 64 for c in kept(48, 8192, 256, False))


def test_two_inputs_are_paired_only_as_the_halves_of_one_tensor():
    """An epilogue's two inputs go to TMA configs in one copy only where the second directly follows the first
    in one contiguous tensor; :func:`halves_of_one` makes them so, copying only where they are not."""
    pytest.importorskip("triton")
    from recruit.models.bdh_triton import _halves, halves_of_one

    pair = torch.randn(2, 6, 8)
    a, b = pair.unbind(0)
    assert _halves(a, b) and not _halves(b, a) and not _halves(a, torch.randn(6, 8))
    assert not _halves(*torch.randn(6, 2, 8).unbind(1))  # strided halves
    assert not _halves(pair[0, :3], pair[1, :3])  # a gap between them
    same = halves_of_one(a, b)
    assert same[0].data_ptr() == a.data_ptr() and same[1].data_ptr() == b.data_ptr()
    apart = torch.randn(6, 8), torch.randn(6, 8)
    made = halves_of_one(*apart)
    assert _halves(*made) and all(torch.equal(m, t) for m, t in zip(made, apart, strict=True))


def test_programs_holding_their_b_block_equal_programs_walking_k(interpreted):
    """ROW_BLOCKS = 2 (one B block held for two row blocks) gives the same bits as one row block per program."""
    one, two = interpreted["row_blocks"][1], interpreted["row_blocks"][2]
    for epilogue in one:
        for a, b in zip(one[epilogue], two[epilogue], strict=True):
            assert a.abs().sum() > 0 and torch.equal(a, b), epilogue


def test_programs_moving_tiles_by_tma_equal_programs_loading_them(interpreted):
    """Persistent programs moving the tiles of the products of K = d through tensor descriptors give the bits of
    the same programs loading them through pointers, with N's last column block partly outside (N = 40)."""
    # (EPILOGUE, TMA) launched: with TMA asked for, TMA moves the tiles of ENCODE, GATE and GATE_BACKWARD (whose
    # two inputs launch_all pairs as the head does), not those of the batched products
    asked = [(0, 1), (1, 1), (2, 1), (3, 0), (4, 0)]
    assert interpreted["tma_launched"] == 2 * ([(e, 0) for e in range(5)] + asked)
    for n in (48, 40):
        loaded, moved = interpreted["tma"][n, 0], interpreted["tma"][n, 1]
        assert list(loaded) == list(moved) == list(range(5))
        for epilogue in loaded:
            for a, b in zip(loaded[epilogue], moved[epilogue], strict=True):
                assert a.abs().sum() > 0 and torch.equal(a, b), (n, epilogue)


def test_persistent_programs_equal_one_program_per_tile(interpreted):
    """5 programs looping over a product's tiles (8 or 12 of them) give the bits of one program per tile."""
    one, looping = interpreted["persistent"][0], interpreted["persistent"][5]
    assert list(one) == list(range(5))
    for epilogue in one:
        for a, b in zip(one[epilogue], looping[epilogue], strict=True):
            assert a.abs().sum() > 0 and torch.equal(a, b), epilogue


def test_every_epilogue_compiles_for_sm90_pipelined_without_spills(cuobjdump):
    """The fused head's GEMM at bdh-ref's shapes, compiled ahead of time for an H100/H200 (no GPU needed), in
    every config that the autotuner may pick there.

    No registers spilled, and operand tiles copied asynchronously (the software pipeline); a config holding its B
    block (ROW_BLOCKS > 1) only for the products whose K it spans, with its A tiles pipelined across the row
    blocks; a persistent one only for the products whose B is K-major, as Triton pipelines a flattened loop's
    N-major B through registers (so the products of K = d take D_x, D_y and Eᵀ K-major); one moving its tiles by
    TMA only for the unbatched products of K = d, with no copy left to the threads, and an epilogue's two inputs
    in one copy; GATE and GATE_BACKWARD with few layout conversions. A persistent one compiles its flattened loop
    once, where Triton also keeps the loop unflattened for an empty K loop unless told K > 0 (SCORES skips the K
    loop of the tiles above the diagonal, so it keeps both).
    """
    from recruit.models import bdh_triton

    checked = [config for config in bdh_triton._CONFIGS if _compiles_as_it_should(cuobjdump, config)]
    assert len(checked) == len(bdh_triton._CONFIGS) - 2  # all but the small row blocks, for shorter sequences


def _compiles_as_it_should(cuobjdump, config) -> bool:
    """The checks of the test above for one config; False where bdh-ref's shapes keep it for no product."""
    copies = []
    epilogues = [e for e in range(5) if config in cuobjdump.bdh_configs(e)]
    if not epilogues:
        return False
    assert epilogues == ([0, 1, 2] if config[5] > 1 or config[7] else [0, 1, 2, 4] if config[6] else [0, 1, 2, 3, 4])
    for epilogue in epilogues:
        kernel = cuobjdump.compile_bdh_gemm(epilogue, config)
        used = cuobjdump.resources(kernel, waves=False)
        assert used.local_bytes == 0, (config, epilogue, used)
        if config[6] and epilogue != 4:  # persistent: one flattened loop, no second copy kept for an empty K loop
            assert "tt.flatten" not in kernel.asm["ttgir"], (config, epilogue)
        ptx = kernel.asm["ptx"]
        if config[7]:  # A and B tiles (prologue and loop), the epilogue's inputs and its two outputs
            assert ptx.count("cp.async.cg") == 0 and ptx.count("cp.async.bulk.tensor") >= 6, (config, epilogue)
            # ENCODE's cos and sin, GATE_BACKWARD's x and y: one copy of both halves (a 3-d box), not two
            assert (ptx.count("cp.async.bulk.tensor.3d") > 0) == (epilogue in (0, 2)), (config, epilogue)
            continue
        copies.append(ptx.count("cp.async.cg"))
        # the products of GATE and GATE_BACKWARD taken on column pairs (bdh_triton._pairs): few tiles moved between
        # register layouts (under Triton 3.9, 4 and 9 for whole-tile products)
        conversions = kernel.asm["ttgir"].count("ttg.convert_layout")
        assert conversions <= {1: 3, 2: 2}.get(epilogue, conversions), (config, epilogue, conversions)
    assert config[7] or (copies[0] >= 8 and len(set(copies)) == 1), (config, copies)  # both operands of every product
    return True


SM90_SHARED = 228 * 1024  # an H100's or H200's shared memory per SM, of which each program also takes 1 KB


def test_every_config_fits_its_programs_into_an_sm90_multiprocessor(resources_tool):
    """Compiled for an H100/H200 at bdh-ref's shapes, every config that the autotuner may pick for a product
    leaves room in one SM's shared memory for its program, and a persistent one for the PERSISTENT programs per
    SM that it starts (which would otherwise run one after another)."""
    for epilogue in range(5):
        for config in resources_tool.bdh_configs(epilogue):
            shared = resources_tool.compile_bdh_gemm(epilogue, config).metadata.shared
            assert max(1, config[6]) * (shared + 1024) <= SM90_SHARED, (epilogue, config, shared)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_model_equals_fast_model_on_cuda():
    """fp32 (no TF32): logits and gradients equal the fast form's; bf16: as close to fp32 as the fast form's."""
    pytest.importorskip("triton")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _fused_equals_fast_on_cuda()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_programs_holding_their_b_block_equal_programs_walking_k_on_cuda():
    """The autotuner's ROW_BLOCKS configs against the same tiles one row block per program, bf16, at d = 256.

    Only the products of K = d (ENCODE, GATE, GATE_BACKWARD), where the autotuner keeps these configs; the
    walking launch has one pipeline stage, as two of its whole-K tiles would not fit in shared memory.
    """
    pytest.importorskip("triton")
    from recruit.models.bdh_triton import _CONFIGS, ENCODE, GATE, GATE_BACKWARD

    cuda, products = torch.device("cuda"), (ENCODE, GATE, GATE_BACKWARD)
    for bm, bn, bk, warps, stages, rows, _, _ in (c for c in _CONFIGS if c[5] > 1):
        meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps)
        walking = launch_all(cuda, torch.bfloat16, {**meta, "ROW_BLOCKS": 1, "num_stages": 1}, epilogues=products)
        holding = launch_all(cuda, torch.bfloat16, {**meta, "ROW_BLOCKS": rows, "num_stages": stages},
                             epilogues=products)  # fmt: skip
        assert list(walking) == list(products)
        for epilogue in walking:
            for a, b in zip(walking[epilogue], holding[epilogue], strict=True):
                assert a.float().abs().sum() > 0 and torch.equal(a, b), epilogue


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_persistent_programs_equal_one_program_per_tile_on_cuda():
    """The autotuner's persistent configs (those moving tiles by TMA too) against the same tiles one per program
    loaded through pointers, bf16, at d = 256."""
    pytest.importorskip("triton")
    from recruit.models.bdh_triton import _CONFIGS

    cuda = torch.device("cuda")
    for bm, bn, bk, warps, stages, _, persistent, tma in (c for c in _CONFIGS if c[6]):
        meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, ROW_BLOCKS=1, num_warps=warps, num_stages=stages)
        one = launch_all(cuda, torch.bfloat16, {**meta, "PERSISTENT": 0, "TMA": 0})
        looping = launch_all(cuda, torch.bfloat16, {**meta, "PERSISTENT": persistent, "TMA": tma})
        assert list(one) == list(range(5))
        for epilogue in one:
            for a, b in zip(one[epilogue], looping[epilogue], strict=True):
                assert a.float().abs().sum() > 0 and torch.equal(a, b), epilogue


def _fused_equals_fast_on_cuda():
    torch.manual_seed(1)
    fast = BDH(bdh_config("bdh-nano", dropout=0.0, n_neurons=512, activity_l1=0.1)).cuda().train()
    fused = BDH(bdh_config("bdh-nano", dropout=0.0, n_neurons=512, activity_l1=0.1, impl="fused")).cuda().train()
    fused.load_state_dict(fast.state_dict())
    x = torch.randint(0, 288, (4, 128), device="cuda")
    grads, logits = [], []
    for m in (fast, fused):
        out = m(x)
        (out.logsumexp(-1).mean() + m.activity_loss()).backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
        logits.append(out.detach())
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-3, atol=1e-4, msg=k)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        err_fast, err_fused = ((m(x).float() - logits[0]).abs().max().item() for m in (fast, fused))
    assert err_fused <= 2 * err_fast + 1e-3

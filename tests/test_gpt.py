import json

import pytest
import torch

from recruit.errors import RecruitError
from recruit.models import GPT, build_model, gpt_config, load_model
from recruit.models.kv_cache import KVCache

CONFIGS = {
    "gelu-tied": dict(),
    "swiglu-rms-gqa": dict(mlp="swiglu", norm="rmsnorm", n_head=4, n_kv_head=2, d_model=32, tie_embeddings=False),
    "bias": dict(bias=True),
}


@pytest.fixture(params=list(CONFIGS))
def model(request):
    return GPT(gpt_config("gpt-nano", **CONFIGS[request.param])).eval()


def test_incremental_decoding_equals_full_forward(model):
    x = torch.randint(0, 288, (3, 21))
    full = model(x)
    cache = model.new_cache()
    parts = [model(x[:, :5], cache=cache)]
    parts += [model(x[:, 5:9], cache=cache)]  # a chunk after a prefix: masked by absolute position
    parts += [model(x[:, t : t + 1], cache=cache) for t in range(9, 21)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.seen_tokens == 21 and cache.seq_len() == 21


def reference_forward(model, x, allowed):
    """Slow reference: explicit softmax attention with a (T, T) boolean ``allowed`` mask, no cache, no SDPA."""
    from recruit.models.gpt import rope

    cfg = model.config
    B, T = x.shape
    pos = torch.arange(T)
    h = model.tok_emb(x)
    for blk in model.blocks:
        a = blk.norm1(h)
        q = blk.attn.q_proj(a).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = blk.attn.k_proj(a).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        v = blk.attn.v_proj(a).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        q, k = rope(q, pos, cfg.rope_theta), rope(k, pos, cfg.rope_theta)
        rep = cfg.n_head // cfg.n_kv_head
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-1, -2)) / cfg.head_dim**0.5
        s = s.masked_fill(~allowed, float("-inf")).softmax(-1)
        h = h + blk.attn.o_proj((s @ v).transpose(1, 2).reshape(B, T, cfg.d_model))
        h = h + blk.mlp(blk.norm2(h))
    return model.lm_head(model.norm_f(h))


def test_reference_forward_equals_model(model):
    x = torch.randint(0, 288, (2, 11))
    torch.testing.assert_close(reference_forward(model, x, torch.ones(11, 11).tril().bool()), model(x))


def test_eviction_keeps_true_positions(model):
    """After dropping cached tokens, the next token attends to the kept ones at their absolute positions."""
    x = torch.randint(0, 288, (1, 11))
    cache = model.new_cache()
    model(x[:, :10], cache=cache)
    keep = torch.tensor([0, 1, 2, 7, 8, 9])
    for i in range(model.config.n_layer):
        cache.keep(i, keep)
    fast = model(x[:, 10:11], cache=cache)[0, -1]
    allowed = torch.ones(11, 11).tril().bool()
    allowed[10, 3:7] = False  # the evicted tokens are invisible to the last query only
    torch.testing.assert_close(fast, reference_forward(model, x, allowed)[0, -1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast, model(x)[0, -1], atol=1e-4)


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    again = load_model(tmp_path / "m")
    x = torch.randint(0, 288, (2, 9))
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert again.config == model.config
    assert again.lm_head.weight is again.tok_emb.weight or not model.config.tie_embeddings


def test_bf16_storage_halves_size(tmp_path):
    m = GPT(gpt_config("gpt-nano"))
    m.save_pretrained(tmp_path / "a")
    m.save_pretrained(tmp_path / "b", dtype=torch.bfloat16)
    a, b = (tmp_path / "a/model.safetensors").stat().st_size, (tmp_path / "b/model.safetensors").stat().st_size
    assert b < 0.6 * a
    assert load_model(tmp_path / "b").tok_emb.weight.dtype == torch.float32


def test_corrupt_and_truncated_checkpoints_are_clear_errors(tmp_path):
    m = GPT(gpt_config("gpt-nano"))
    m.save_pretrained(tmp_path / "m")
    w = tmp_path / "m/model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecruitError, match="corrupt or truncated"):
        load_model(tmp_path / "m")
    w.write_bytes(b"\x00" * 100)
    with pytest.raises(RecruitError, match="corrupt or truncated"):
        load_model(tmp_path / "m")
    (tmp_path / "m/config.json").write_text("{not json")
    with pytest.raises(RecruitError, match="corrupt checkpoint config"):
        load_model(tmp_path / "m")
    (tmp_path / "m/config.json").write_text(json.dumps({"model_type": "recruit-gpt", "n_layerz": 2}))
    with pytest.raises(RecruitError, match="valid keys"):
        load_model(tmp_path / "m")
    with pytest.raises(RecruitError, match="no checkpoint directory"):
        load_model(tmp_path / "missing")


def test_shape_mismatch_is_a_clear_error(tmp_path):
    GPT(gpt_config("gpt-nano")).save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    cfg["d_ff"] = 64
    (tmp_path / "m/config.json").write_text(json.dumps(cfg))
    with pytest.raises(RecruitError, match="shape"):
        load_model(tmp_path / "m")


def test_too_long_sequence_is_refused():
    m = GPT(gpt_config("gpt-nano"))
    with pytest.raises(RecruitError, match="longer than the model's context of 64"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(RecruitError, match="exceed the context"):
        m.generate(torch.zeros(1, 60, dtype=torch.long), 10)


def test_generate_greedy_matches_argmax_of_full_forward():
    m = GPT(gpt_config("gpt-nano")).eval()
    prompt = torch.randint(0, 288, (2, 7))
    out = m.generate(prompt, 6, greedy=True)
    for t in range(7, 13):
        torch.testing.assert_close(out[:, t], m(out[:, :t])[:, -1].argmax(-1))


def test_sampling_respects_top_k_and_seed():
    m = GPT(gpt_config("gpt-nano")).eval()
    prompt = torch.randint(0, 288, (1, 5))
    a = m.generate(prompt, 8, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, m.generate(prompt, 8, greedy=True))
    s1 = m.generate(prompt, 8, temperature=2.0, generator=torch.Generator().manual_seed(3))
    s2 = m.generate(prompt, 8, temperature=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2)
    with pytest.raises(RecruitError):
        m.generate(prompt[:, :0], 3)
    with pytest.raises(RecruitError, match="max_new_tokens must be >= 0"):
        m.generate(prompt, -3)
    for bad in (prompt[0], prompt[:0]):  # 1-D ids, an empty batch
        with pytest.raises(RecruitError, match=r"a non-empty prompt of token ids \(B, T\)"):
            m.generate(bad, 3)


@pytest.mark.parametrize(
    "bad",
    [
        dict(d_model=30, n_head=4),
        dict(n_head=3, n_kv_head=2),
        dict(mlp="relu"),
        dict(dropout=1.5),
        dict(rope_theta=0.0),
        dict(rope_theta=float("nan")),
        dict(n_kv_head=-1),
    ],  # fmt: skip
)
def test_invalid_configs_name_the_problem(bad):
    with pytest.raises(RecruitError):
        build_model("gpt-nano", bad)


def test_kv_cache_bytes_are_counted():
    m = GPT(gpt_config("gpt-nano"))
    cache = KVCache(m.config.n_layer)
    m(torch.zeros(2, 10, dtype=torch.long), cache=cache)
    c = m.config
    assert cache.nbytes() == 2 * c.n_layer * 2 * c.n_kv_head * 10 * c.head_dim * 4


def test_cache_growth_truncate_and_keep_stay_consistent():
    m = GPT(gpt_config("gpt-nano")).eval()
    x = torch.randint(0, 288, (1, 40))
    cache = m.new_cache()
    out = [m(x[:, t : t + 1], cache=cache) for t in range(30)]  # many doublings of the buffers
    assert cache.seq_len() == 30 and cache.layers[0].positions.tolist() == list(range(30))
    for bad in (31, -1):  # beyond what it has seen, or before the start
        with pytest.raises(RecruitError, match=f"cannot truncate to {bad} tokens: the cache has seen 30"):
            cache.truncate(bad)
    cache.truncate(20)
    assert cache.seq_len() == 20 and cache.seen_tokens == 20
    again = m(x[:, 20:21], cache=cache)
    torch.testing.assert_close(again, out[20])
    torch.testing.assert_close(m(x[:, 21:22], cache=cache), out[21])


def test_a_tie_broken_after_construction_is_refused_on_save(tmp_path):
    """A config that ties lm_head to the embedding saves one of them; a model whose two differ cannot be saved so."""
    m = GPT(gpt_config("gpt-nano"))
    m.lm_head = torch.nn.Linear(32, 288, bias=False)
    with pytest.raises(RecruitError, match="ties lm_head.weight to tok_emb.weight, but they are different tensors"):
        m.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    m.lm_head.weight = m.tok_emb.weight  # tied again: saved and loaded as it is
    (tmp_path / "m").mkdir()
    stale = tmp_path / "m/.model.safetensors.k9x1.tmp"  # an earlier save that kill -9 cut short
    stale.write_bytes(b"half a model")
    m.save_pretrained(tmp_path / "m")
    assert not stale.exists() and (tmp_path / "m/model.safetensors").exists()
    x = torch.randint(0, 288, (1, 6))
    torch.testing.assert_close(load_model(tmp_path / "m")(x), m(x))

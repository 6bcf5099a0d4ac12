"""Tests of the Hugging Face adapter on tiny random models saved to disk and loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    T5Config,
)

from recruit.data.tokenizer import HFTokenizer
from recruit.errors import RecruitError
from recruit.models.hf import HFCausalLM, load_hf_causal_lm

SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    max_position_embeddings=128,
)
CONFIGS: dict[str, PretrainedConfig] = {
    "llama": LlamaConfig(**SMALL),
    "qwen2": Qwen2Config(**SMALL),
    "mistral": MistralConfig(**SMALL, sliding_window=64),
    "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=128),
}
KV_HEADS = {"llama": 2, "qwen2": 2, "mistral": 2, "gpt2": 4}
ATTN_NAME = {"llama": "self_attn", "qwen2": "self_attn", "mistral": "self_attn", "gpt2": "attn"}
ARCHS = list(CONFIGS)
B, T = 2, 7


def save_tiny(config: PretrainedConfig, root: Path) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hf")
    return {arch: save_tiny(cfg, base / arch) for arch, cfg in CONFIGS.items()}


@pytest.fixture(params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def lm(arch: str, checkpoints: dict[str, Path]) -> HFCausalLM:
    return load_hf_causal_lm(checkpoints[arch])


def ids(n: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 300, (B, n), generator=torch.Generator().manual_seed(seed))


def no_hooks(lm: HFCausalLM) -> bool:
    mods = [m for i in range(lm.n_layers) for m in (lm.layers[i], lm.attention(i), lm.mlp(i))]
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in mods)


def test_structure(lm: HFCausalLM, arch: str) -> None:
    assert lm.n_layers == len(lm.layers) == 2
    assert (lm.hidden_size, lm.num_heads, lm.num_kv_heads, lm.head_dim) == (64, 4, KV_HEADS[arch], 16)
    for i, block in enumerate(lm.layers):
        assert lm.attention(i) is getattr(block, ATTN_NAME[arch])
        assert lm.mlp(i) is block.mlp
    assert lm.tokenizer is None
    assert not lm.model.training


def test_hidden_states_match_hf(lm: HFCausalLM) -> None:
    x = ids()
    with torch.no_grad():
        hs = lm.hidden_states(x)
        ref = lm.model(input_ids=x, output_hidden_states=True).hidden_states
        raw = lm.hidden_states(x, final_norm=False)
    assert len(hs) == len(ref) == lm.n_layers + 1
    for h, r in zip(hs, ref, strict=True):
        assert h.shape == (B, T, lm.hidden_size)
        torch.testing.assert_close(h, r)
    for h, r in zip(hs[:-1], raw[:-1], strict=True):
        torch.testing.assert_close(h, r)
    assert not torch.allclose(hs[-1], raw[-1])  # the final norm is applied only when asked
    assert no_hooks(lm)


def test_incremental_decoding_matches_full_forward(lm: HFCausalLM) -> None:
    x = ids(12)
    with torch.no_grad():
        full = lm.forward(x)  # (B, 12, V)
        cache = lm.new_cache()
        steps = [lm.forward(x[:, :5], cache)]
        for t in range(5, 12):
            steps.append(lm.forward(x[:, t : t + 1], cache))
    assert full.shape == (B, 12, 300)
    torch.testing.assert_close(torch.cat(steps, dim=1), full)

    out, logits = lm.generate_greedy(x[:, :5], max_new_tokens=6)
    assert out.shape == (B, 11) and logits.shape == (B, 6, 300)
    torch.testing.assert_close(out[:, :5], x[:, :5])
    with torch.no_grad():
        ref = lm.forward(out[:, :-1])[:, 4:]  # logits that chose tokens 5..10
    torch.testing.assert_close(logits, ref)
    torch.testing.assert_close(out[:, 5:], ref.argmax(-1))


def test_kv_bytes(lm: HFCausalLM) -> None:
    cache = lm.new_cache()
    assert lm.kv_bytes(cache) == 0
    with torch.no_grad():
        lm.forward(ids(), cache)
    assert cache.layers[0].keys.shape == (B, lm.num_kv_heads, T, lm.head_dim)
    assert lm.kv_bytes(cache) == 2 * lm.n_layers * B * T * lm.num_kv_heads * lm.head_dim * 4


@pytest.mark.parametrize("kind", ["attention", "mlp", "layer"])
def test_capture_records_one_output_per_layer(lm: HFCausalLM, kind: str) -> None:
    with torch.no_grad(), lm.capture(kind) as outs:  # type: ignore[arg-type]
        lm.forward(ids())
    assert len(outs) == lm.n_layers
    for per_layer in outs:
        assert len(per_layer) == 1 and per_layer[0].shape == (B, T, lm.hidden_size)
    assert no_hooks(lm)
    with pytest.raises(ZeroDivisionError), lm.capture(kind):  # type: ignore[arg-type]
        _ = 1 / 0
    assert no_hooks(lm)


def test_capture_rejects_unknown_kind(lm: HFCausalLM) -> None:
    with pytest.raises(RecruitError, match="allowed"), lm.capture("conv"):  # type: ignore[arg-type]
        pass


class Zeros(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_set_mlp_changes_logits(lm: HFCausalLM) -> None:
    x = ids()
    with torch.no_grad():
        before = lm.forward(x)
        lm.set_mlp(1, Zeros())
        after = lm.forward(x)
        with lm.capture("mlp") as outs:
            lm.forward(x)
    assert isinstance(lm.mlp(1), Zeros)
    assert not torch.allclose(before, after)
    assert torch.count_nonzero(outs[1][0]) == 0


def test_set_layer_with_a_hidden_state_map(lm: HFCausalLM) -> None:
    x = ids(9)
    lm.set_layer(1, nn.Identity())
    with torch.no_grad():
        hs = lm.hidden_states(x, final_norm=False)
        full = lm.forward(x)
        cache = lm.new_cache()
        inc = torch.cat([lm.forward(x[:, :4], cache)] + [lm.forward(x[:, t : t + 1], cache) for t in range(4, 9)], 1)
    assert len(hs) == 3
    torch.testing.assert_close(hs[2], hs[1])  # block 1 is now the identity
    torch.testing.assert_close(inc, full)  # block 0 still caches; the replaced block needs none


class Wrapped(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args: object, **kwargs: object) -> object:
        return self.block(*args, **kwargs)


def test_set_layer_raw_keeps_the_calling_convention(lm: HFCausalLM) -> None:
    x = ids()
    with torch.no_grad():
        before = lm.forward(x)
        lm.set_layer(0, Wrapped(lm.layers[0]), raw=True)
        after = lm.forward(x)
    assert isinstance(lm.layers[0], Wrapped)
    torch.testing.assert_close(after, before)


def test_tokenizer_round_trip(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "[EOS]", "hello", "world", "recruit", "only", "what", "matters"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    save_tiny(CONFIGS["llama"], tmp_path)
    fast.save_pretrained(tmp_path)
    tok = load_hf_causal_lm(tmp_path).tokenizer
    assert isinstance(tok, HFTokenizer)
    text = "recruit only what matters"
    assert tok.encode(text) == [5, 6, 7, 8]
    assert tok.decode(tok.encode(text)) == text
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (9, 2, 1)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RecruitError, match="not found"):
        load_hf_causal_lm(tmp_path / "nope")


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(RecruitError, match="no config.json"):
        load_hf_causal_lm(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(RecruitError, match="no config.json"):
        load_hf_causal_lm(tmp_path / "weights.bin")


def test_garbage_safetensors(tmp_path: Path) -> None:
    save_tiny(CONFIGS["gpt2"], tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file" * 8)
    with pytest.raises(RecruitError, match="cannot load the weights"):
        load_hf_causal_lm(tmp_path)


def test_missing_weights(tmp_path: Path) -> None:
    CONFIGS["llama"].save_pretrained(tmp_path)
    with pytest.raises(RecruitError, match="cannot load the weights"):
        load_hf_causal_lm(tmp_path)


def test_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(RecruitError, match="unknown architecture"):
        load_hf_causal_lm(tmp_path)


def test_not_a_causal_lm(tmp_path: Path) -> None:
    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=32, d_kv=8, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(RecruitError, match="unsupported architecture T5Config"):
        load_hf_causal_lm(tmp_path)


def test_unknown_layout_names_the_class(tmp_path: Path) -> None:
    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    cfg.is_decoder = True
    save_tiny(cfg, tmp_path)
    with pytest.raises(RecruitError, match="BertLMHeadModel"):
        load_hf_causal_lm(tmp_path)

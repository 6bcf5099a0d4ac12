"""FFF in Hugging Face decoders (GPT-2, Llama): swap, train, drop, distil (tiny in-process models, no download)."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from recruit.errors import RecruitError  # noqa: E402
from recruit.fff import FastFeedForward  # noqa: E402
from recruit.fff.convert import ZeroFF  # noqa: E402
from recruit.fff.decoder import (  # noqa: E402
    decoder_layers,
    distil_decoder,
    drop_decoder_mlps,
    record_decoder_inputs,
    replace_decoder_mlps,
    save_fff_decoder,
)


def decoder(family: str):
    torch.manual_seed(0)
    if family == "llama":
        cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
        return transformers.LlamaForCausalLM(cfg).eval()
    if family == "neox":
        cfg = transformers.GPTNeoXConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64)  # fmt: skip
        return transformers.GPTNeoXForCausalLM(cfg).eval()
    if family == "falcon":
        cfg = transformers.FalconConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
        return transformers.FalconForCausalLM(cfg).eval()
    cfg = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_replace_trains_and_a_silent_fff_equals_no_mlp(family):
    model = decoder(family)
    assert len(decoder_layers(model)) == 2
    ids = torch.randint(0, 97, (2, 9))
    replace_decoder_mlps(model, depth=3)
    assert not decoder_layers(model)
    ffs = [m for m in model.modules() if isinstance(m, FastFeedForward)]
    assert len(ffs) == 2 and all(f.config.dim_in == f.config.dim_out == 32 for f in ffs)
    model.train()
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 9, 97)
    out.loss.backward()
    assert all(f.w_in.grad is not None and f.w_in.grad.abs().sum() > 0 for f in ffs)
    model.eval()
    silent = copy.deepcopy(model)
    with torch.no_grad():
        for f in silent.modules():
            if isinstance(f, FastFeedForward):
                f.w_out.zero_()
    dropped = drop_decoder_mlps(decoder(family))  # the same attention weights (same seed), no feed-forward
    assert [type(layer.mlp) for layer in dropped.modules() if hasattr(layer, "mlp")] == [ZeroFF, ZeroFF]
    with torch.no_grad():
        torch.testing.assert_close(silent(input_ids=ids).logits, dropped(input_ids=ids).logits)
    with pytest.raises(RecruitError, match="already converted"):
        replace_decoder_mlps(model, depth=3)


def test_record_gives_the_mlp_inputs_of_unmasked_positions():
    model = decoder("gpt2")
    ids = torch.randint(0, 97, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    outputs, keep = [], mask.reshape(-1).bool()
    handles = [layer.mlp.register_forward_hook(lambda m, a, o: outputs.append(o.reshape(-1, 32)[keep]))
               for layer in decoder_layers(model)]  # fmt: skip
    xs = record_decoder_inputs(model, ids, attention_mask=mask)
    for h in handles:
        h.remove()
    assert [tuple(x.shape) for x in xs] == [(10, 32), (10, 32)]
    with torch.no_grad():  # the recorded rows are what each mlp read: it maps them to what it wrote
        for layer, x, y in zip(decoder_layers(model), xs, outputs, strict=True):
            torch.testing.assert_close(layer.mlp(x), y)
    assert all(not layer.mlp._forward_pre_hooks for layer in decoder_layers(model))


def test_distil_lowers_the_error_and_the_model_still_runs():
    model = decoder("llama")
    ids = torch.randint(0, 97, (16, 32))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    reports = distil_decoder(model, ids, depth=4, steps=300, progress=False)
    assert len(reports) == 2 and not decoder_layers(model)
    for r in reports:
        assert r.final_mse < r.initial_mse and r.final_rel_error < 1.0
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert after.shape == before.shape and torch.isfinite(after).all()


def test_models_without_mlp_blocks_are_refused():
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=64))  # fmt: skip
    for fn in (lambda: replace_decoder_mlps(bert, 3), lambda: drop_decoder_mlps(bert),
               lambda: record_decoder_inputs(bert, torch.zeros(1, 4, dtype=torch.long))):  # fmt: skip
        with pytest.raises(RecruitError, match="no decoder block"):
            fn()


def test_an_mlp_that_is_no_plain_feed_forward_is_refused():
    class Experts(torch.nn.Module):  # returns (output, router logits), as a mixture of experts does
        def __init__(self) -> None:
            super().__init__()
            self.router = torch.nn.Linear(32, 4)

        def forward(self, x):
            return x, self.router(x)

    model = decoder("llama")
    model.model.layers[1].mlp = Experts()
    with pytest.raises(RecruitError, match="not a plain feed-forward"):
        distil_decoder(model, torch.zeros(1, 4, dtype=torch.long), depth=2, steps=1, progress=False)
    assert isinstance(model.model.layers[0].mlp, transformers.models.llama.modeling_llama.LlamaMLP)  # untouched
    model.model.layers[1].mlp = torch.nn.Linear(32, 16)  # maps to another width
    with pytest.raises(RecruitError, match="does not map a width d to itself"):
        replace_decoder_mlps(model, depth=2)
    assert isinstance(model.model.layers[0].mlp, transformers.models.llama.modeling_llama.LlamaMLP)  # untouched


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox", "falcon"])  # gpt2 ties its output matrix to the embedding
def test_a_saved_fff_decoder_loads_with_its_fffs(family, tmp_path):
    from recruit.models.hf import load_hf_causal_lm

    model = replace_decoder_mlps(decoder(family), depth=3, n_trees=2).eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        expect = model(ids).logits
    save_fff_decoder(model, tmp_path / "m")
    lm = load_hf_causal_lm(tmp_path / "m")
    ffs = [lm.mlp(i) for i in range(lm.n_layers)]
    assert all(isinstance(f, FastFeedForward) and (f.config.depth, f.config.n_trees) == (3, 2) for f in ffs)
    with torch.no_grad():
        torch.testing.assert_close(lm.forward(ids), expect, rtol=0, atol=0)


def test_save_and_load_refuse_what_is_no_fff_decoder(tmp_path):
    import json

    from recruit.models.hf import load_hf_causal_lm

    with pytest.raises(RecruitError, match="no FFF"):
        save_fff_decoder(decoder("llama"), tmp_path / "dense")
    mixed = decoder("llama")
    mixed.model.layers[0].mlp = FastFeedForward(32, 32, 2)
    with pytest.raises(RecruitError, match="1 dense feed-forwards left"):
        save_fff_decoder(mixed, tmp_path / "mixed")
    out = save_fff_decoder(replace_decoder_mlps(decoder("llama"), depth=2), tmp_path / "ok")
    config = json.loads((out / "config.json").read_text())
    assert config["recruit_fff"] == {"depth": 2, "n_trees": 1, "mode": "hard", "hardening": 0.0}
    (out / "config.json").write_text(json.dumps({**config, "recruit_fff": {"depth": -1}}))
    with pytest.raises(RecruitError, match="recruit_fff must be"):
        load_hf_causal_lm(out)
    (out / "config.json").write_text(json.dumps({**config, "recruit_fff": {"depth": 3, "n_trees": 1}}))
    with pytest.raises(RecruitError, match="do not match an FFF decoder"):  # depth 3's weights are larger
        load_hf_causal_lm(out)
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").unlink()
    with pytest.raises(RecruitError, match="missing weights"):
        load_hf_causal_lm(out)


def byte_level_tokenizer(texts: list[str]):
    """A small byte-level BPE tokenizer trained here (any text encodes; nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    raw.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>")


def test_cli_converts_a_hugging_face_decoder_and_saves_it_with_its_tokenizer(corpus_dir, tmp_path, capsys):
    from recruit.cli import main
    from recruit.data.corpus import Corpus
    from recruit.measure import corpus_texts
    from recruit.models.hf import load_hf_causal_lm
    from recruit.records import read_records

    tok = byte_level_tokenizer(list(corpus_texts(Corpus.load(corpus_dir), "train").values()))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=64)  # fmt: skip
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    args = ["fff", "convert", str(tmp_path / "llama"), "--out", str(tmp_path / "fff"), "--depth", "2", "--steps",
            "20", "--windows", "4", "--corpus", str(corpus_dir), "--max-bytes", "1500", "--finetune-tokens", "1024",
            "-q"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "layer 1: relative error" in out and "dense bpb  fff bpb  fff+ft bpb" in out
    scores = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.splitlines()[-6:-1]
              if line.split()[0] in ("de", "en", "fr")}  # fmt: skip
    assert set(scores) == {"de", "en", "fr"} and all(len(s) == 3 and 0 < min(s) < max(s) < 20 for s in scores.values())
    recs = read_records(tmp_path / "fff" / "fff-convert.jsonl")  # the printed table, as result records
    columns = ("dense", "fff", "fff+ft")
    printed = {(lang, ff): v for lang, vs in scores.items() for ff, v in zip(columns, vs, strict=True)}
    assert {(r.params["lang"], r.params["ff"]): round(r.value, 4) for r in recs} == printed
    lm = load_hf_causal_lm(tmp_path / "fff")
    assert all(isinstance(lm.mlp(i), FastFeedForward) for i in range(lm.n_layers)) and lm.tokenizer is not None
    assert lm.tokenizer.encode("Über die Brücke") == tok.encode("Über die Brücke", add_special_tokens=False)

    (tmp_path / "llama" / "tokenizer.json").unlink()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "llama" / name).unlink(missing_ok=True)
    assert main(args[:3] + ["--out", str(tmp_path / "again")] + args[5:]) != 0
    assert "no tokenizer files" in capsys.readouterr().err and not (tmp_path / "again").exists()


def test_parameters_on_meta_takes_no_memory_for_weights_but_keeps_buffers():
    from recruit.fff.decoder import parameters_on_meta

    class WithBuffer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)
            self.register_buffer("freq", torch.arange(3.0), persistent=False)

    with parameters_on_meta():
        m = WithBuffer()
        ff = FastFeedForward(8, 8, 2)
    assert all(p.is_meta for p in [*m.parameters(), *ff.parameters()])
    assert not m.freq.is_meta and m.freq.tolist() == [0.0, 1.0, 2.0]
    assert m.lin.weight.requires_grad  # parameters keep requires_grad
    assert not torch.nn.Linear(2, 2).weight.is_meta  # outside, modules are built as usual


def test_replaced_feed_forwards_take_the_models_mode():
    """An FFF put into a model in eval mode walks its trees (eval), one put into a training model trains."""
    for training in (False, True):
        model = decoder("llama").train(training)
        replace_decoder_mlps(model, depth=2, mode="soft")
        assert [layer.mlp.training for layer in model.model.layers] == [training, training]


def test_a_saved_fff_decoder_keeps_its_training_settings(tmp_path):
    """Soft routing and its hardening weight come back with the model, so that it fine-tunes as it was set up to."""
    from recruit.models.hf import load_hf_causal_lm

    save_fff_decoder(replace_decoder_mlps(decoder("llama"), depth=2, mode="soft", hardening=0.1), tmp_path / "m")
    lm = load_hf_causal_lm(tmp_path / "m")
    assert {(lm.mlp(i).config.mode, lm.mlp(i).config.hardening) for i in range(lm.n_layers)} == {("soft", 0.1)}

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from recruit.data.tokenizer import ByteTokenizer
from recruit.models.base import load_model
from recruit.models.bdh import BDH, bdh_config
from recruit.models.gpt import GPT, gpt_config
from recruit.models.hf_auto import (
    BDHActivityWarmup,
    RecruitBDHConfig,
    RecruitBDHForCausalLM,
    RecruitByteTokenizer,
    RecruitGPTConfig,
    RecruitGPTForCausalLM,
    from_hf,
    register_auto_classes,
    to_hf,
)
from recruit.models.kv_cache import KVCache


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def saved(request, tmp_path):
    gpt = GPT(gpt_config("gpt-nano", tie_embeddings=request.param, n_kv_head=1)).eval()
    gpt.save_pretrained(tmp_path)
    register_auto_classes()
    register_auto_classes()  # idempotent
    return gpt, tmp_path


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _load(path):
    """Load through the Auto class; HF must log no warning (transformers' logger does not propagate to caplog)."""
    handler, hf_logger = _Records(), logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    finally:
        hf_logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]
    assert not caught, [str(w.message) for w in caught]
    return model


def test_auto_config_reads_checkpoint(saved):
    gpt, path = saved
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    assert isinstance(cfg, RecruitGPTConfig)
    assert cfg.to_gpt_config() == gpt.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (32, 2, 2)
    assert cfg.num_key_value_heads == 1 and cfg.tie_embeddings == gpt.config.tie_embeddings


def test_logits_and_loss_match_gpt(saved):
    gpt, path = saved
    model = _load(path)
    assert isinstance(model, RecruitGPTForCausalLM) and model.name_or_path == str(path)
    assert (model.lm_head.weight is model.tok_emb.weight) == gpt.config.tie_embeddings
    ids = torch.randint(0, gpt.config.vocab_size, (2, 12))
    with torch.no_grad():
        ref = gpt(ids)
        out = model(input_ids=ids, labels=ids, output_hidden_states=True)
    torch.testing.assert_close(out.logits, ref)
    assert len(out.hidden_states) == gpt.config.n_layer + 1
    expected = F.cross_entropy(ref[:, :-1].reshape(-1, ref.shape[-1]), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_matches_gpt_greedy(saved, use_cache):
    gpt, path = saved
    model = _load(path)
    ids = torch.randint(0, gpt.config.vocab_size, (2, 7))
    out = model.generate(ids, do_sample=False, max_new_tokens=5, use_cache=use_cache)
    assert torch.equal(out, gpt.generate(ids, max_new_tokens=5, greedy=True))


def test_recruit_kv_cache_in_forward(saved):
    gpt, path = saved
    model = _load(path)
    ids = torch.randint(0, gpt.config.vocab_size, (1, 10))
    cache = KVCache(gpt.config.n_layer)
    with torch.no_grad():
        model(input_ids=ids[:, :6], past_key_values=cache)
        step = model(input_ids=ids[:, 6:], past_key_values=cache).logits
    torch.testing.assert_close(step, gpt(ids)[:, 6:])


def test_padding_is_rejected(saved):
    _, path = saved
    model = _load(path)
    with pytest.raises(ValueError, match="padding"):
        model(input_ids=torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1]]))


@pytest.mark.parametrize(
    "make",
    [lambda: GPT(gpt_config("gpt-nano", mlp="swiglu", norm="rmsnorm", bias=True)),
     lambda: GPT(gpt_config("gpt-nano", tie_embeddings=False)),
     lambda: BDH(bdh_config("bdh-nano", dropout=0.0))],
    ids=["gpt", "gpt-untied", "bdh"],
)  # fmt: skip
def test_conversions_round_trip(tmp_path, make):
    native = make().eval()
    ids = torch.randint(0, native.config.vocab_size, (1, 9))
    model = to_hf(native)
    assert not model.training
    back = from_hf(model)
    assert type(back) is type(native) and back.config == native.config
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, native(ids))
        torch.testing.assert_close(back(ids), native(ids))
    model.config.pad_token_id, model.config.output_attentions = 256, True  # HF keys that HF's save then writes
    model.save_pretrained(tmp_path / "hf")  # HF's own save loads back through the Auto classes
    register_auto_classes()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(again) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, native(ids))
    native.save_pretrained(tmp_path / "recruit")
    assert type(load_model(tmp_path / "recruit")) is type(native)  # the recruit loader is unaffected
    loaded = load_model(tmp_path / "hf")  # and reads HF's save too, its bookkeeping keys dropped
    assert type(loaded) is type(native) and loaded.config == native.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), native(ids))


def test_fresh_model_init_matches_gpt_scheme():
    model = RecruitGPTForCausalLM(RecruitGPTConfig.from_gpt_config(gpt_config("gpt-medium", n_layer=8)))
    std = model.blocks[0].attn.o_proj.weight.std().item()
    assert abs(std - 0.02 / 4) < 1e-3  # 0.02 / sqrt(2 * n_layer)
    assert abs(model.blocks[0].attn.q_proj.weight.std().item() - 0.02) < 2e-3
    assert torch.equal(model.norm_f.weight, torch.ones_like(model.norm_f.weight))


# ---- BDH --------------------------------------------------------------------------------------------------------


@pytest.fixture
def saved_bdh(tmp_path):
    torch.manual_seed(0)
    bdh = BDH(bdh_config("bdh-nano", dropout=0.0, max_seq_len=32)).eval()
    bdh.save_pretrained(tmp_path)
    register_auto_classes()
    return bdh, tmp_path


def test_bdh_checkpoint_loads_with_logits_loss_and_hidden_states_of_the_parallel_form(saved_bdh):
    bdh, path = saved_bdh
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    assert isinstance(cfg, RecruitBDHConfig) and cfg.to_bdh_config() == bdh.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (32, 2, 2)
    model = _load(path)
    assert isinstance(model, RecruitBDHForCausalLM)
    ids = torch.randint(0, bdh.config.vocab_size, (2, 12))
    with torch.no_grad():
        ref = bdh(ids)
        out = model(input_ids=ids, labels=ids, output_hidden_states=True)
    torch.testing.assert_close(out.logits, ref)
    assert out.cache_params is None and len(out.hidden_states) == bdh.config.n_layer + 1
    expected = F.cross_entropy(ref[:, :-1].reshape(-1, ref.shape[-1]), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_bdh_cache_params_run_the_recurrent_form_in_pieces(saved_bdh):
    """Given a state, forward feeds the tokens into it: the logits equal the parallel form's, piece by piece."""
    bdh, path = saved_bdh
    model = _load(path)
    ids = torch.randint(0, bdh.config.vocab_size, (2, 12))
    state = model.new_state(2)
    with torch.no_grad():
        first = model(input_ids=ids[:, :5], cache_params=state)
        assert first.cache_params is state and state.pos == 5
        rest = model(input_ids=ids[:, 5:], cache_params=state, logits_to_keep=1)
        ref = bdh(ids)
    torch.testing.assert_close(first.logits, ref[:, :5], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rest.logits, ref[:, -1:], rtol=1e-4, atol=1e-4)
    assert state.pos == 12
    with pytest.raises(ValueError, match="parallel form"):
        model(input_ids=ids, cache_params=model.new_state(2), output_hidden_states=True)


def test_bdh_generate_is_recurrent_past_the_training_length(saved_bdh):
    """HF's generate with the state equals BDH.generate beyond max_seq_len (32), without HF warnings; without
    the cache it re-runs the prefix in the parallel form, the same tokens within max_seq_len."""
    bdh, path = saved_bdh
    model = _load(path)
    ids = torch.randint(0, bdh.config.vocab_size, (2, 12))
    handler, hf_logger = _Records(), logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        out = model.generate(ids, do_sample=False, max_new_tokens=40)  # 52 tokens: past max_seq_len
    finally:
        hf_logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]
    expected = bdh.generate(ids, 40, greedy=True)
    assert torch.equal(out, expected)
    assert torch.equal(model.generate(ids, do_sample=False, max_new_tokens=15, use_cache=False), expected[:, :27])
    with pytest.raises(ValueError, match="use_cache=True"):
        model.generate(ids, do_sample=False, max_new_tokens=30, use_cache=False)  # past max_seq_len (32)
    sampled = model.generate(ids, do_sample=True, top_k=5, max_new_tokens=4, num_return_sequences=3)
    assert sampled.shape == (6, 16) and torch.equal(sampled[::3, :12], ids)
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(ids, num_beams=2, max_new_tokens=3)
    assert model.generate(ids, num_beams=2, max_new_tokens=3, use_cache=False).shape == (2, 15)


def test_bdh_wrapper_runs_with_the_parameters_it_holds(saved_bdh):
    """HF may replace a parameter object when it loads weights, and a DataParallel replica holds its weights as plain
    attributes: the forward must use whichever the module holds, and a replica must leave the original alone."""
    bdh, path = saved_bdh
    model = _load(path)
    ids = torch.randint(0, bdh.config.vocab_size, (1, 6))
    zeros = torch.zeros(1, 6, bdh.config.vocab_size)
    replica = model._replicate_for_data_parallel()  # what nn.parallel.replicate makes, before it sets the weights
    for name, param in model.named_parameters(recurse=False):
        setattr(replica, name, torch.zeros_like(param) if name == "lm_head" else param.detach().clone())
    with torch.no_grad():
        assert torch.equal(replica(input_ids=ids).logits, zeros)
        torch.testing.assert_close(model(input_ids=ids).logits, bdh(ids))
    model.lm_head = torch.nn.Parameter(torch.zeros_like(model.lm_head))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, zeros)
    with pytest.raises(ValueError, match="fixed at 288"):
        model.resize_token_embeddings(300)
    assert model.embed.num_embeddings == 288


# ---- the byte tokenizer -----------------------------------------------------------------------------------------


def test_auto_tokenizer_of_a_recruit_checkpoint_is_the_byte_tokenizer(saved, tmp_path):
    """Same ids as ByteTokenizer, specials written in the text included; decoding is lossless UTF-8."""
    _, path = saved
    tok = AutoTokenizer.from_pretrained(path)
    assert isinstance(tok, RecruitByteTokenizer) and len(tok) == tok.vocab_size == 288
    bt = ByteTokenizer()
    text = "<lang:pl><kind:prose>Zażółć gęślą jaźń <task:3>€"
    ids = tok(text).input_ids
    expected = [bt.lang_id("pl"), bt.kind_id("prose"), *bt.encode("Zażółć gęślą jaźń "), bt.special_id("<task:3>")]
    assert ids == expected + bt.encode("€")
    assert tok.decode(ids) == text and tok.decode(ids, skip_special_tokens=True) == "Zażółć gęślą jaźń €"
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (bt.pad_id, bt.eos_id, bt.bos_id)
    assert tok.decode([0xC5, 0x7A]) == "\ufffdz"  # a broken UTF-8 sequence, as ByteTokenizer.decode gives it
    assert tok.convert_ids_to_tokens([65, bt.eos_id]) == ["<0x41>", "<eos>"]
    tok.save_pretrained(tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(tmp_path / "tok")(text).input_ids == ids


def test_text_generation_pipeline_runs_a_bdh_checkpoint(saved_bdh):
    """Nothing recruit-specific after register_auto_classes(): HF's pipeline tokenizes, generates and decodes."""
    from transformers import pipeline

    bdh, path = saved_bdh
    tok = AutoTokenizer.from_pretrained(path)
    generate = pipeline("text-generation", model=_load(path), tokenizer=tok)
    prompt = "<lang:en><kind:manual>ls"
    text = generate(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    bt = ByteTokenizer()
    ids = torch.tensor([[bt.lang_id("en"), bt.kind_id("manual"), *bt.encode("ls")]])
    assert text == tok.decode(bdh.generate(ids, 8, greedy=True)[0])


def test_bdh_training_loss_includes_the_activity_penalty():
    """In training mode with activity_l1 > 0, the HF loss is BDH's language-model loss plus its activity penalty."""
    bdh = BDH(bdh_config("bdh-nano", dropout=0.0, activity_l1=0.5)).train()
    model = to_hf(bdh)
    ids = torch.randint(0, bdh.config.vocab_size, (2, 12))
    logits = bdh(ids)
    lm = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    expected = lm + bdh.activity_loss()
    out = model(input_ids=ids, labels=ids)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.encoder.grad is not None and model.encoder.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids, labels=ids).loss, lm)  # evaluation: the LM loss


def test_bdh_activity_warmup_ramps_the_penalty_under_hf_trainer_callbacks():
    """activity_warmup 0.5: HF's Trainer, through BDHActivityWarmup, scales the penalty by min(1, progress / 0.5)."""
    from transformers import TrainerControl, TrainerState

    bdh = BDH(bdh_config("bdh-nano", dropout=0.0, activity_l1=0.5, activity_warmup=0.5)).train()
    model = to_hf(bdh).train()
    ids = torch.randint(0, bdh.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = bdh(ids)
    lm = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    penalty = bdh.activity_loss()
    torch.testing.assert_close(model(input_ids=ids, labels=ids).loss, lm + penalty)  # no progress reported: full
    wrapped = torch.nn.Sequential(model)  # the callback finds the BDH inside whatever HF's Trainer holds
    for step, weight in ((0, 0.0), (10, 0.25), (20, 0.5), (40, 1.0), (80, 1.0)):
        state = TrainerState(global_step=step, max_steps=80)
        BDHActivityWarmup().on_step_begin(None, state, TrainerControl(), model=wrapped)
        torch.testing.assert_close(model(input_ids=ids, labels=ids).loss, lm + weight * penalty)

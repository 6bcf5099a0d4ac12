"""FFF in Hugging Face BERT-style encoders: swap, train, distil (tiny in-process models, no download)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from recruit.errors import RecruitError  # noqa: E402
from recruit.fff import FastFeedForward  # noqa: E402
from recruit.fff.encoder import (  # noqa: E402
    dense_feed_forward,
    distil_encoder,
    encoder_layers,
    record_encoder_inputs,
    replace_encoder_mlps,
)

SMALL = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip


def bert():
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(transformers.BertConfig(**SMALL)).eval()


def test_layers_found_and_dense_map_matches_the_layer():
    model = bert()
    layers = encoder_layers(model)
    assert len(layers) == 2 and all(type(layer).__name__ == "BertLayer" for layer in layers)
    h = torch.randn(3, 5, 32)
    ff = dense_feed_forward(layers[0])
    expect = layers[0].output.dense(layers[0].intermediate(h))
    torch.testing.assert_close(ff(h), expect)
    with pytest.raises(RecruitError, match="no dense"):
        dense_feed_forward(model.bert.embeddings)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_replace_keeps_residual_and_norm_and_trains(family):
    torch.manual_seed(0)
    if family == "bert":
        model = bert().train()
    else:
        cfg = transformers.RobertaConfig(**SMALL, pad_token_id=1)
        model = transformers.RobertaForMaskedLM(cfg).train()
    ids = torch.randint(3, 101, (2, 9))
    replace_encoder_mlps(model, depth=3)
    assert not encoder_layers(model)
    ffs = [m for m in model.modules() if isinstance(m, FastFeedForward)]
    assert len(ffs) == 2 and all(f.config.dim_in == f.config.dim_out == 32 for f in ffs)
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 9, 101)
    out.loss.backward()
    assert all(f.w_in.grad is not None and f.w_in.grad.abs().sum() > 0 for f in ffs)
    # the layer still adds the residual and normalises: with the FFF's output zeroed, output = LN(h)
    layer = [m for m in model.modules() if hasattr(m, "intermediate")][0]
    h = torch.randn(2, 4, 32)
    with torch.no_grad():
        ffs[0].w_out.zero_()
    torch.testing.assert_close(layer.output(layer.intermediate(h), h), layer.output.LayerNorm(h))
    with pytest.raises(RecruitError, match="already converted"):
        replace_encoder_mlps(model, depth=3)


def test_record_keeps_unmasked_positions_only():
    model = bert()
    ids = torch.randint(3, 101, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    xs = record_encoder_inputs(model, ids, attention_mask=mask)
    assert [tuple(x.shape) for x in xs] == [(10, 32), (10, 32)]
    assert encoder_layers(model), "recording leaves the model unchanged"
    assert all(not layer.intermediate._forward_pre_hooks for layer in encoder_layers(model))


def test_distil_lowers_the_error_and_the_model_still_runs():
    model = bert()
    ids = torch.randint(3, 101, (16, 32))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    reports = distil_encoder(model, ids, depth=4, steps=300, progress=False)
    assert len(reports) == 2 and not encoder_layers(model)
    for r in reports:
        assert r.final_mse < r.initial_mse and r.final_rel_error < 1.0
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert after.shape == before.shape and torch.isfinite(after).all()


def test_replaced_feed_forwards_take_the_models_mode():
    for training in (False, True):
        model = bert().train(training)
        replace_encoder_mlps(model, depth=2)
        assert [layer.intermediate.training for layer in model.bert.encoder.layer] == [training, training]

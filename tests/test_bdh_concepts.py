import numpy as np
import pytest
import torch

from recruit.errors import RecruitError
from recruit.interp.concepts import CURRENCY, concept_sentences, cross_language_concept, sentence_synapses
from recruit.interp.stats import mann_whitney
from recruit.models import BDH, bdh_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BDH(bdh_config("bdh-nano", dropout=0.0, max_seq_len=64)).eval()


@pytest.mark.parametrize("lang", list(CURRENCY))
def test_sentence_sets_differ_only_in_the_concept_word(lang):
    with_, without = concept_sentences(lang)
    templates, cur, units = CURRENCY[lang]
    assert len(with_) == len(without) == len(templates) * len(cur) and len(cur) == len(units)
    for i, (a, b) in enumerate(zip(with_, without, strict=True)):
        t = templates[i // len(cur)]
        assert a == t.format(x=cur[i % len(cur)]) and b == t.format(x=units[i % len(cur)])


def test_heldout_statistics_are_those_of_the_picked_features(model):
    feats = cross_language_concept(model, ("en", "de"), ("pl",), which="x", top=4)
    assert len(feats) == 4
    assert [f.effect_select for f in feats] == sorted((f.effect_select for f in feats), reverse=True)
    from recruit.interp.concepts import _features

    w, wo = (_features(model, s, "pl", "x", None) for s in concept_sentences("pl"))
    direct = mann_whitney(w, wo)
    for f in feats:
        assert -1 <= f.effect_select <= 1 and 0 <= f.p_heldout <= 1
        assert f.effect_heldout == pytest.approx(direct.effect[f.feature])
        assert f.p_heldout == pytest.approx(direct.p[f.feature])


def test_synapse_features_are_the_state_after_the_sentence(model):
    ids = [3, 70, 80, 90]
    s = sentence_synapses(model, ids, layer=1)
    cfg = model.config
    assert s.shape == (cfg.n_head * cfg.n_neurons * cfg.d_model,)
    state = model.new_state(1)
    for t in ids:
        model.step(torch.tensor([t]), state)
    np.testing.assert_allclose(s, state.synapses[1].flatten().double().numpy(), rtol=1e-5, atol=1e-6)
    feats = cross_language_concept(model, ("en",), ("ru",), which="synapse", layer=0, top=2)
    assert all(0 <= f.feature < s.size for f in feats)


def test_bad_arguments_are_clear_errors(model):
    with pytest.raises(RecruitError, match="disjoint"):
        cross_language_concept(model, ("en",), ("en",))
    with pytest.raises(RecruitError, match="which"):
        cross_language_concept(model, which="z")
    with pytest.raises(RecruitError, match="language"):
        concept_sentences("xx")

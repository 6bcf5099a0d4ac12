import pytest
from hypothesis import given
from hypothesis import strategies as st

from recruit.data.tokenizer import KINDS, LANGUAGES, SPECIALS, ByteTokenizer
from recruit.errors import RecruitError

tok = ByteTokenizer()


@given(st.text())
def test_round_trip_any_unicode(text):
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


@given(st.binary())
def test_bytes_map_to_ids_one_to_one(data):
    assert bytes(tok.encode_bytes(data)) == data


@given(st.text(), st.sampled_from(LANGUAGES), st.sampled_from(KINDS))
def test_document_tags_are_dropped_on_decode(text, lang, kind):
    ids = tok.document(text, lang, kind)
    assert ids[0] == tok.lang_id(lang) and ids[1] == tok.kind_id(kind) and ids[-1] == tok.eos_id
    assert tok.decode(ids) == text


def test_vocabulary_layout():
    assert tok.vocab_size == 256 + len(SPECIALS) == 288
    ids = {tok.special_id(s) for s in SPECIALS}
    assert len(ids) == len(SPECIALS) and min(ids) == 256
    assert tok.lang_id("klingon") == tok.lang_id("xx")


def test_unknown_names_are_clear_errors():
    with pytest.raises(RecruitError, match="allowed"):
        tok.kind_id("poetry")
    with pytest.raises(RecruitError, match="known"):
        tok.special_id("<nope>")

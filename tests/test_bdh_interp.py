from itertools import product

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TEXTS

from recruit.data.probes import ProbeMixStream, _utf8_cut, make_probe, probe_accuracy
from recruit.data.stream import TokenStream
from recruit.data.tokenizer import ByteTokenizer
from recruit.errors import RecruitError
from recruit.interp import (
    activation_density,
    concept_neurons,
    language_neurons,
    mann_whitney,
    neuron_graph_degrees,
    rankdata,
)
from recruit.models import BDH, bdh_config
from recruit.models.bdh import rope, rope_tables


def nano(**kw) -> BDH:
    torch.manual_seed(0)
    return BDH(bdh_config("bdh-nano", dropout=0.0, **kw)).eval()


# ---- probes ---------------------------------------------------------------------------------------
def test_probe_layout_is_exact_and_deterministic(corpus):
    prompt, answer = make_probe(corpus, 300, seed=3)
    tok = ByteTokenizer()
    assert prompt[0] in [tok.lang_id(x) for x in TEXTS] and prompt[1] == tok.kind_id("text")
    body = bytes(prompt[2:])
    key = answer.decode()
    assert len(key) == 6 and key.isalnum() and key.upper() == key
    head, tail = f"The secret key is {key}. ".encode(), b" The secret key is "
    assert body.startswith(head) and body.endswith(tail)
    filler = body[len(head) : -len(tail)]
    assert len(filler) == 300  # exactly the distance
    assert filler.strip().decode("utf-8")[:40] in corpus.text("test", corpus.docs("test")[0]) + "".join(
        corpus.text("test", d) for d in corpus.docs("test")
    )
    assert make_probe(corpus, 300, seed=3) == (prompt, answer)
    assert make_probe(corpus, 300, seed=4)[1] != answer
    assert make_probe(corpus, 50, seed=3)[1] == answer  # same key at another distance
    assert bytes(make_probe(corpus, 0, seed=3)[0][2:]) == head + tail


def test_probe_mix_stream_writes_whole_episodes_into_real_text():
    text = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz" * 40, dtype=np.uint8)
    plain = TokenStream(text, 80, 16, seed=2)
    mixed = ProbeMixStream(text, 80, 16, seed=2, mix=0.5)
    x, y = mixed.batch(7)
    px, py = plain.batch(7)
    assert x.shape == px.shape == (16, 80) and torch.equal(x[:, 1:], y[:, :-1])  # targets still shift by one
    episodes = 0
    for row, orig in zip(torch.cat([x, y[:, -1:]], 1).tolist(), torch.cat([px, py[:, -1:]], 1).tolist(), strict=True):
        body = bytes(row)
        if b"The secret key is " not in body:
            assert row == orig  # windows without an episode are untouched
            continue
        episodes += 1
        start = body.index(b"The secret key is ")
        key = body[start + 18 : start + 24]
        question = body.index(b" The secret key is ", start + 25)
        assert body[start + 24 : start + 26] == b". " and body[question + 19 : question + 25] == key
        assert key.isalnum() and key.upper() == key
        filler = body[start + 26 : question]  # real text, continuing the window's own text after the episode
        assert bytes(orig)[:start] == body[:start] and bytes(orig)[start : start + len(filler)] == filler
    assert 2 <= episodes <= 14  # about half of 16
    assert torch.equal(mixed.batch(7)[0], x) and not torch.equal(mixed.batch(8)[0], x)  # deterministic per step
    assert all(b"The secret key" in bytes(r) for r in ProbeMixStream(text, 80, 4, mix=1.0).batch(0)[0].tolist())
    with pytest.raises(RecruitError, match="mix"):
        ProbeMixStream(text, 80, 4, mix=0.0)
    with pytest.raises(RecruitError, match="episode needs 51 tokens"):
        ProbeMixStream(text, 40, 4)


def test_utf8_cut_never_splits_a_character():
    data = "żółw ü €".encode()
    for n in range(len(data) + 1):
        cut = _utf8_cut(data, n)
        assert cut.decode("utf-8") == data[: len(cut)].decode("utf-8")
        assert n - 3 <= len(cut) <= n


def _oracle(prompt, k):
    body = bytes(prompt[2:])
    start = body.index(b"is ") + 3
    return list(body[start : start + k])


def test_probe_scoring_oracle_wrong_and_half(corpus):
    dists = [16, 200]
    perfect = probe_accuracy(_oracle, corpus, dists, n=4)
    assert [(s.distance, s.n, s.exact, s.char) for s in perfect] == [(16, 4, 1.0, 1.0), (200, 4, 1.0, 1.0)]
    assert perfect[1].prompt_tokens == 2 + len("The secret key is XXXXXX. ") + 200 + len(" The secret key is ")

    def wrong(prompt, k):
        return [b ^ 1 for b in _oracle(prompt, k)]  # every character changed

    def half(prompt, k):
        good = _oracle(prompt, k)
        return good[: k // 2] + [ord("-")] * (k - k // 2)

    assert all(s.exact == 0 and s.char == 0 for s in probe_accuracy(wrong, corpus, dists, n=4))
    assert all(s.exact == 0 and s.char == 0.5 for s in probe_accuracy(half, corpus, dists, n=4))
    assert probe_accuracy(lambda p, k: [], corpus, [16], n=2)[0].char == 0


# ---- statistics -----------------------------------------------------------------------------------
def test_rankdata_averages_ties():
    ranks, ties = rankdata(np.array([[3, 1], [1, 1], [3, 1], [2, 5]]))
    np.testing.assert_array_equal(ranks[:, 0], [3.5, 1, 3.5, 2])
    np.testing.assert_array_equal(ranks[:, 1], [2, 2, 2, 4])
    np.testing.assert_array_equal(ties, [6, 24])  # (2³ − 2) and (3³ − 3)


def test_mann_whitney_u_equals_brute_force_count_and_effect_sign():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, (9, 40)), rng.integers(0, 5, (7, 40))  # many ties
    a[:, 0] += 10  # column 0: "with" always larger
    b[:, 1] += 10  # column 1: "without" always larger
    mw = mann_whitney(a, b)
    brute = np.array([sum((x > y) + 0.5 * (x == y) for x, y in product(a[:, j], b[:, j])) for j in range(a.shape[1])])
    np.testing.assert_allclose(mw.u, brute)
    np.testing.assert_allclose(mw.effect, 1 - 2 * (9 * 7 - brute) / (9 * 7))
    assert mw.effect[0] == 1.0 and mw.effect[1] == -1.0
    assert mw.p[0] < 0.01 and mw.p[1] < 0.01 and np.all((mw.p >= 0) & (mw.p <= 1))
    same = mann_whitney(np.ones((4, 1)), np.ones((5, 1)))
    assert same.p[0] == 1.0 and same.effect[0] == 0.0


def test_mann_whitney_p_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 6, (12, 5)), rng.integers(1, 7, (10, 5))
    mw = mann_whitney(a, b)
    for j in range(5):
        ref = stats.mannwhitneyu(a[:, j], b[:, j], alternative="two-sided", method="asymptotic")
        assert mw.u[j] == ref.statistic
        assert mw.p[j] == pytest.approx(ref.pvalue, rel=1e-9)


# ---- activations ----------------------------------------------------------------------------------
def test_density_in_unit_interval_and_equal_to_a_manual_count(corpus):
    model = nano()
    toks = corpus.tokens("test")
    dens = activation_density(model, toks, seq_len=40, max_windows=3, batch_size=2)
    last = (len(toks) - 1) // 40 - 1  # the windows are spread over the split: the first, the middle, the last
    starts = [0, last // 2 * 40, last * 40]
    idx = torch.from_numpy(np.stack([np.asarray(toks[s : s + 40], dtype=np.int64) for s in starts]))  # (3, 40)
    cfg = model.config
    with torch.no_grad():
        _, hidden = model(idx, return_hidden=True)
        cos, sin = rope_tables(torch.arange(40), cfg.n_neurons, cfg.rope_theta)
        for layer, v in enumerate(hidden[:-1]):  # the layer's input stream -> its x and y, written out again
            x = torch.relu(torch.einsum("btd,hdn->bhtn", v, model.encoder))
            xr = rope(x, cos, sin)
            a = torch.einsum("bhts,bsd->bhtd", (xr @ xr.mT).tril(-1), v)
            y = torch.relu(torch.einsum("bhtd,hdn->bhtn", F.layer_norm(a, (cfg.d_model,)), model.encoder_v))
            for k, t in (("x", x), ("y", y), ("xy", x * y)):
                assert 0.0 <= dens[k][layer] <= 1.0
                assert dens[k][layer] == pytest.approx((t > 0).float().mean().item(), abs=1e-6)
    assert len(dens["x"]) == cfg.n_layer


def _plant(model: BDH, byte: int, head: int = 1, index: int = 7) -> int:
    """Make neuron (head, index) of layer 0's x respond to ``byte``: its D_x column = the byte's input stream."""
    with torch.no_grad():
        v = F.layer_norm(model.embed.weight[byte], (model.config.d_model,))
        model.encoder[head, :, index] = 0.5 * v
    return head * model.config.n_neurons + index


def test_concept_neurons_find_a_planted_neuron():
    model = nano()
    planted = _plant(model, ord("$"))
    rng = np.random.default_rng(0)
    pool = "apple river stone cloud green table mouse light paper north costs five seven today the of".split()

    def sentence(dollars: int) -> str:
        words = list(rng.choice(pool, 8)) + ["$"] * dollars
        return " ".join(rng.permutation(words))

    with_, without = [sentence(4) for _ in range(10)], [sentence(0) for _ in range(10)]
    top = concept_neurons(model, with_, without, which="x", layer=0, top=5)
    assert top[0].neuron == planted and (top[0].head, top[0].index) == (1, 7)
    assert top[0].effect == 1.0 and top[0].mean_with > top[0].mean_without
    assert [s.effect for s in top] == sorted((s.effect for s in top), reverse=True)
    flipped = concept_neurons(model, without, with_, which="x", layer=0, top=model.config.n_head * 64)
    assert next(s for s in flipped if s.neuron == planted).effect == -1.0


def test_language_neurons_find_a_planted_german_neuron(corpus):
    model = nano()
    planted = _plant(model, "ü".encode()[1], head=0, index=3)  # 0xBC: only in the German text
    res = language_neurons(model, corpus, "test", which="x", layer=0, top=3, chunks=6, chunk_bytes=48)
    assert sorted(res) == ["de", "en", "fr"] and all(len(v) == 3 for v in res.values())
    assert res["de"][0].neuron == planted and res["de"][0].effect == 1.0
    assert all(-1 <= s.effect <= 1 and 0 <= s.p <= 1 for v in res.values() for s in v)


# ---- the neuron graph -----------------------------------------------------------------------------
def _dense_graphs(model: BDH) -> list[np.ndarray]:
    E, D = model.decoder.detach().numpy(), model.encoder.detach().numpy()
    N = model.config.n_neurons
    out = []
    for h in range(model.config.n_head):
        g = E[h * N : (h + 1) * N] @ D[h]  # (N, N)
        np.fill_diagonal(g, -np.inf)
        out.append(g)
    return out


def test_graph_degrees_equal_a_dense_numpy_computation():
    model = nano()
    gs = _dense_graphs(model)
    thr = float(np.quantile(np.concatenate([g[np.isfinite(g)] for g in gs]), 0.9))
    deg = neuron_graph_degrees(model, threshold=thr, block=24)  # 64 rows in blocks of 24, 24, 16
    np.testing.assert_array_equal(deg.out_degree, np.concatenate([(g > thr).sum(1) for g in gs]))
    np.testing.assert_array_equal(deg.in_degree, np.concatenate([(g > thr).sum(0) for g in gs]))
    assert deg.edges == sum(int((g > thr).sum()) for g in gs) == int(deg.in_degree.sum())
    top = neuron_graph_degrees(model, top_k=5, block=24)
    ref_in = np.concatenate([np.bincount(np.argsort(-g, axis=1)[:, :5].ravel(), minlength=64) for g in gs])
    np.testing.assert_array_equal(top.in_degree, ref_in)
    assert (top.out_degree == 5).all()
    auto = neuron_graph_degrees(model, z=2.0)
    fin = np.concatenate([g[np.isfinite(g)] for g in gs]).astype(np.float64)
    assert auto.threshold == pytest.approx(fin.mean() + 2.0 * fin.std(), rel=1e-5)
    s = deg.summary()
    assert s["out_max"] == deg.out_degree.max() and s["in_median"] == np.median(deg.in_degree)
    assert np.isfinite(s["out_ccdf_slope"]) and s["out_ccdf_slope"] < 0

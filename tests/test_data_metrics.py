"""Data readers and metrics, on small files the tests write."""

import numpy as np
import pytest

from sentmtl_cli.config import DataConfig
from sentmtl_cli.data.examples import split_examples, to_conll_tags, token_examples
from sentmtl_cli.data.readers import read_sentence_data, read_token_data
from sentmtl_cli.errors import SentmtlError
from sentmtl_cli.heads.bio import bio_tags
from sentmtl_cli.metrics import classification_report, entity_report, pearson, spearman

LABELS = ["negative", "neutral", "positive"]


def test_tsv_with_header_names_and_label_map(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text('sentence\tlabel\n"quoted" fine\t1\nbad movie\t0\n', encoding="utf-8")
    d = read_sentence_data(
        DataConfig(path=p, text_column="sentence", label_column="label", label_map={"0": "negative", "1": "positive"}),
        LABELS,
    )
    assert d.texts == ['"quoted" fine', "bad movie"] and d.labels == [2, 0]


def test_csv_jsonl_and_parallel_text_files(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"a, b",neutral\nc,positive\n', encoding="utf-8")
    d = read_sentence_data(DataConfig(path=tmp_path / "d.csv", text_column="text", label_column="label"), LABELS)
    assert d.texts == ["a, b", "c"] and d.labels == [1, 2]
    (tmp_path / "d.jsonl").write_text('{"text": "x", "label": "negative"}\n\n{"text": "y", "label": "neutral"}\n')
    d = read_sentence_data(DataConfig(path=tmp_path / "d.jsonl", text_column="text", label_column="label"), LABELS)
    assert d.labels == [0, 1]
    (tmp_path / "t.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "l.txt").write_text("2\n0\n1\n")
    cfg = DataConfig(
        path=tmp_path / "t.txt",
        format="text",
        labels_path=tmp_path / "l.txt",
        label_map={"0": "negative", "1": "neutral", "2": "positive"},
        skip=1,
        limit=1,
    )
    d = read_sentence_data(cfg, LABELS)
    assert d.texts == ["two"] and d.labels == [0]
    (tmp_path / "l.txt").write_text("2\n0\n")
    with pytest.raises(SentmtlError, match="has 3 lines but"):
        read_sentence_data(cfg, LABELS)


def test_conll_with_prefix_and_bad_tags(tmp_path):
    p = tmp_path / "d.conll"
    p.write_text("en:John\tB-PER\nen:lives\tO\n\nen:R.H.\tB-ORG\nen:Co\tI-ORG\n\nen:x\tB-MISC\n", encoding="utf-8")
    tags = bio_tags(["PER", "ORG", "LOC"])
    with pytest.raises(SentmtlError, match="1 of 3 rows .* tag outside"):
        read_token_data(DataConfig(path=p), tags)
    d = read_token_data(DataConfig(path=p, token_prefix="en:", max_bad_fraction=0.5), tags)
    assert d.words == [["John", "lives"], ["R.H.", "Co"]]
    ex = token_examples(d.words, d.tags, tags)
    # "R.H." is split the way predict splits words; its pieces continue the entity
    assert [ex.texts[1][s:e] for s, e in ex.spans[1]] == ["R", ".", "H", ".", "Co"]
    assert [tags[t] for t in ex.tags[1]] == ["B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG"]
    assert to_conll_tags(ex.owner[1], 2, ["B-ORG", "O", "O", "O", "I-ORG"]) == ["B-ORG", "I-ORG"]


def test_split_is_seeded_and_disjoint(tmp_path):
    from sentmtl_cli.data.examples import SentenceExamples

    ex = SentenceExamples([f"t{i}" for i in range(100)], np.arange(100) % 3)
    a_tr, a_va = split_examples(ex, 0.2, seed=1, max_val=None)
    b_tr, b_va = split_examples(ex, 0.2, seed=1, max_val=None)
    c_tr, c_va = split_examples(ex, 0.2, seed=2, max_val=15)
    assert a_va.texts == b_va.texts and len(a_va) == 20 and len(c_va) == 15
    assert not set(a_tr.texts) & set(a_va.texts) and a_va.texts != c_va.texts[:20]


def test_classification_metrics():
    rep = classification_report([0, 0, 1, 2], [0, 1, 1, 2], ["a", "b", "c"])
    assert rep["accuracy"] == 0.75
    assert rep["per_label"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert rep["macro_recall"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_entity_metrics_exact_span():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]
    rep = entity_report(gold, pred, ["PER", "ORG", "LOC"])
    assert rep["per_type"]["PER"]["f1"] == 0.0  # a partial span is wrong
    assert rep["per_type"]["LOC"]["f1"] == 1.0
    assert rep["precision"] == pytest.approx(2 / 3) and rep["recall"] == pytest.approx(2 / 3)


def test_spearman_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)
    b = a + rng.normal(0, 2, 200)
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-10)
    assert pearson(a, b) == pytest.approx(scipy_stats.pearsonr(a, b).statistic, abs=1e-10)


def test_expected_calibration_error():
    from sentmtl_cli.metrics import expected_calibration_error

    conf = np.full(10, 0.9)
    assert expected_calibration_error(conf, np.array([1] * 9 + [0])) == pytest.approx(0.0)
    assert expected_calibration_error(conf, np.array([1] * 5 + [0] * 5)) == pytest.approx(0.4)
    # two bins, each weighted by its share: |1.0 - 0.95| * 0.5 + |0.0 - 0.55| * 0.5
    both = expected_calibration_error(np.array([0.95, 0.95, 0.55, 0.55]), np.array([1, 1, 0, 0]))
    assert both == pytest.approx(0.5 * 0.05 + 0.5 * 0.55)


def test_validation_phrases_exclude_what_training_saw(tmp_path):
    """bench/validate.py's SST-2 check keeps only phrases that no training phrase contains or
    mostly covers (SST-2 holds many phrases of each sentence)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("validate", Path(__file__).parent.parent / "bench" / "validate.py")
    validate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validate)
    rows = [
        ("a gorgeous , witty , seductive movie", 1),  # trained on (the first 2 rows)
        ("dull", 0),
        ("witty , seductive", 1),  # inside a training phrase: out
        ("a gorgeous , witty , seductive movie with heart", 1),  # a training phrase covers most of it: out
        ("the plot is dull and the acting worse", 0),  # "dull" covers little of it: kept
        ("an unexpected delight", 1),  # unseen: kept
    ]
    src = tmp_path / "train.tsv"
    src.write_text("sentence\tlabel\n" + "".join(f"{t} \t{lab}\n" for t, lab in rows), encoding="utf-8")
    out = tmp_path / "unseen.tsv"
    assert validate.sst2_unseen(src, out, n_trained=2) == 2
    assert out.read_text(encoding="utf-8").splitlines() == [
        "the plot is dull and the acting worse\t0",
        "an unexpected delight\t1",
    ]

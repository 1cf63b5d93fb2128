"""Tokenization with the `tokenizers` library alone (no torch, no transformers).

Both backends (torch and ONNX) take their inputs from here, so they see identical ids.
Truncation is done by hand so that we know, per text, how many tokens were dropped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SentmtlError
from .windows import truncate as truncate_item


@dataclass
class Batch:
    input_ids: np.ndarray  # [B, T] int64
    attention_mask: np.ndarray  # [B, T] int64
    token_type_ids: np.ndarray  # [B, T] int64
    offsets: list[list[tuple[int, int]]]  # per text, per kept token: char span (0, 0) for specials
    special: list[list[int]]  # per text, per kept token: 1 for special tokens
    dropped: list[int]  # per text: tokens cut by truncation


class Tokenizer:
    def __init__(self, folder: Path, max_seq_length: int):
        from tokenizers import Tokenizer as _Tok

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise SentmtlError(f"not a model folder: {folder} has no tokenizer.json")
        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on a bad file
            raise SentmtlError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_seq_length = max_seq_length
        pad = self._tok.token_to_id("[PAD]")
        if pad is None:
            pad = self._tok.token_to_id("<pad>")
        self.pad_id = 0 if pad is None else pad

    def piece_ids(self, pieces: list[str]) -> np.ndarray:
        """The vocabulary ids of these word-pieces; one that is not in the vocabulary is an error."""
        ids = [self._tok.token_to_id(p) for p in pieces]
        missing = [p for p, i in zip(pieces, ids) if i is None]
        if missing:
            shown = ", ".join(repr(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise SentmtlError(f"word_pieces not in the backbone's vocabulary: {shown}")
        return np.asarray(ids, dtype=np.int64)

    def piece_names(self, ids: list[int]) -> list[str]:
        """The word-pieces these vocabulary ids stand for."""
        return [str(self._tok.id_to_token(int(i))) for i in ids]

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode_raw(
        self, texts: list[str], truncate: bool = True
    ) -> list[tuple[list[int], list[tuple[int, int]], list[int], int]]:
        """Per text, unpadded: ids, char offsets, special-token mask, tokens dropped by truncation
        (`truncate`: cut to max_seq_length; otherwise every token, for windows)."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=True)
        out = []
        for enc in encs:
            item = (list(enc.ids), [(int(a), int(b)) for a, b in enc.offsets], list(enc.special_tokens_mask), 0)
            out.append(truncate_item(item, self.max_seq_length) if truncate else item)
        return out

    def pad(self, items) -> Batch:
        """A padded batch from encode_raw items."""
        T = max((len(it[0]) for it in items), default=0)
        input_ids = np.full((len(items), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(items), T), dtype=np.int64)
        for b, it in enumerate(items):
            input_ids[b, : len(it[0])] = it[0]
            mask[b, : len(it[0])] = 1
        return Batch(
            input_ids,
            mask,
            np.zeros_like(input_ids),
            [it[1] for it in items],
            [it[2] for it in items],
            [it[3] for it in items],
        )

    def encode(self, texts: list[str]) -> Batch:
        return self.pad(self.encode_raw(texts))


def warn_truncated(batch: Batch, indices: list[int], max_len: int) -> None:
    """One stderr line per cut text: which input, how many tokens were dropped."""
    for b, cut in enumerate(batch.dropped):
        if cut:
            print(
                f"warning: input {indices[b] + 1} is longer than max_seq_length={max_len}: "
                f"{cut} token(s) dropped from its end",
                file=sys.stderr,
            )

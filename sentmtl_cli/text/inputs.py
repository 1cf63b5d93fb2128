"""Checks on input texts, shared by the API, the CLI and the file readers."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import SentmtlError


def check_texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise SentmtlError("no input text given (an empty list of texts)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise SentmtlError(f"input {i + 1} is not a string")
        if not t.strip():
            raise SentmtlError(f"input {i + 1} is empty or whitespace only")
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: undecodable bytes in argv, or a bad decoder
                raise SentmtlError(
                    f"input {i + 1} is not valid Unicode text (it holds a lone surrogate, as undecodable bytes become)"
                ) from None
    return texts

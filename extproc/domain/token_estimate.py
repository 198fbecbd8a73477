"""How many tokens a text may cost, without the model's tokenizer (pure).

The rule (README "Token estimates"): ASCII text at four bytes a token, rounded up, and every
UTF-8 byte of non-ASCII text as a token of its own. Byte-level BPE tokenizers (GPT, Llama 3,
Claude's) and SentencePiece with byte fallback never make more tokens than bytes, so the
non-ASCII part is an upper bound: a Japanese or Chinese prompt (three bytes a character, about
one token a character in practice) is reserved up to three times what it will cost, never less.
Counting characters instead (the old rule) reserved a quarter of a CJK prompt, and concurrent
requests overshot token budgets by 3-4x. The over-reservation lasts only until the request
settles against the usage the provider reports.
"""

from __future__ import annotations

import json
from typing import Any

#: English-like ASCII text: about four bytes a token.
ASCII_BYTES_PER_TOKEN = 4


def tokens_of(ascii_bytes: int, other_bytes: int) -> int:
    """The rule: ASCII bytes / 4, rounded up, plus a token per non-ASCII byte."""
    return -(-ascii_bytes // ASCII_BYTES_PER_TOKEN) + other_bytes


def text_tokens(text: str) -> int:
    """The estimate for one text (0 for an empty one)."""
    if text.isascii():
        return tokens_of(len(text), 0)
    ascii_chars = len(text.encode("ascii", "ignore"))
    return tokens_of(ascii_chars, len(text.encode("utf-8", "surrogatepass")) - ascii_chars)


def value_tokens(value: Any) -> int:
    """The estimate for a request field: a string as it is, anything else as its JSON text."""
    if isinstance(value, str):
        return text_tokens(value)
    return text_tokens(json.dumps(value, ensure_ascii=False, separators=(",", ":")))

"""Character spans of tokens, and the groups in which two tokenisations of one text align.

Why: a teacher with another tokenizer cuts the same response text into other tokens ("12345" is
``1 2 3 4 5`` for SmolLM2 and ``123 45`` for GPT-2/Whisper). Its rows can only be compared with
the student's where both sides cover the same characters, so each token gets the span of
characters it decodes to, and the two token sequences are cut into groups at the character
positions where both have a token boundary (one-to-one, one-to-many, many-to-one groups).

Spans come from each token's bytes, not from a tokenizer's offset mapping (whose trimming of
spaces differs between tokenizers): byte-level BPE writes byte b as GPT-2's printable stand-in
(``Ġ`` = space), SentencePiece writes the space as ``▁`` and unknown bytes as ``<0xNN>``; both
come out as the same UTF-8 bytes here. Special tokens decode to nothing (zero-width spans).
A token that ends inside a multi-byte character covers that whole character (start rounds down,
end rounds up), so the two tokens sharing a character overlap, and ``align_spans`` never cuts
between them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from distill.errors import DistillError

Span = tuple[int, int]
BYTE_LEVEL, SENTENCEPIECE = "byte_level", "sentencepiece"
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class SpanError(DistillError, ValueError):
    """Tokens whose bytes do not spell the text they are said to encode."""


def _gpt2_byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's table

    return {char: byte for byte, char in bytes_to_unicode().items()}


def piece_bytes(token: str, scheme: str, byte_decoder: dict[str, int] | None = None) -> bytes:
    """The UTF-8 bytes one vocabulary entry stands for, under ``scheme``.

    byte_level: each character is GPT-2's stand-in for one byte (``Ġ`` = 0x20).
    sentencepiece: ``▁`` is a space, ``<0xNN>`` is byte NN, anything else is its own UTF-8.
    """
    if scheme == BYTE_LEVEL:
        decoder = byte_decoder or _gpt2_byte_decoder()
        try:
            return bytes(decoder[char] for char in token)
        except KeyError:  # not a byte-level stand-in (e.g. an added token): its own text
            return token.encode("utf-8")
    if scheme == SENTENCEPIECE:
        match = _BYTE_FALLBACK.match(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace("\u2581", " ").encode("utf-8")
    raise ValueError(f"unknown token scheme {scheme!r} (expected {BYTE_LEVEL} or {SENTENCEPIECE})")


def token_scheme(tokenizer: Any) -> str:
    """byte_level or sentencepiece, read from a fast tokenizer's decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    if backend is None:
        raise SpanError(f"tokenizer {name!r} is not a fast (tokenizers) tokenizer: its token "
                        "bytes cannot be read")
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = [d.get("type") for d in decoder.get("decoders", [decoder])]
    if "ByteLevel" in kinds:
        return BYTE_LEVEL
    if {"Metaspace", "ByteFallback", "Replace"} & set(kinds):
        return SENTENCEPIECE
    raise SpanError(f"tokenizer {name!r}: decoder {kinds} is neither byte-level BPE nor "
                    "SentencePiece; cross-tokenizer alignment cannot read its token bytes")


def vocab_pieces(tokenizer: Any) -> list[bytes | None]:
    """Bytes of every id in ``len(tokenizer)``; None for special tokens (they spell no text)."""
    scheme = token_scheme(tokenizer)
    decoder = _gpt2_byte_decoder() if scheme == BYTE_LEVEL else None
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {int(i) for i, token in added.items() if getattr(token, "special", False)}
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    pieces: list[bytes | None] = []
    for i, token in enumerate(tokens):
        if token is None or i in special:
            pieces.append(None)
        elif i in added:  # an added ordinary token is stored as its text
            pieces.append(str(token).encode("utf-8"))
        else:
            pieces.append(piece_bytes(str(token), scheme, decoder))
    return pieces


def char_spans(pieces: Sequence[bytes | None]) -> tuple[str, list[Span]]:
    """(text, [start, end) character span of each token) for tokens given as their bytes.

    Raises SpanError when the bytes are not valid UTF-8 as a whole.
    """
    data = b"".join(p or b"" for p in pieces)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpanError(f"the tokens' bytes are not UTF-8 text ({err})") from None
    # starts[b] = characters that begin before byte b (a byte begins a character unless it is
    # a UTF-8 continuation byte 10xxxxxx).
    starts = [0]
    for byte in data:
        starts.append(starts[-1] + ((byte & 0xC0) != 0x80))
    spans, offset = [], 0
    for piece in pieces:
        size = len(piece or b"")
        if size == 0:
            spans.append((starts[offset], starts[offset]))
        else:
            spans.append((starts[offset + 1] - 1, starts[offset + size]))
        offset += size
    return text, spans


def spans_in_text(pieces: Sequence[bytes | None], text: str, *, prefix: bool = False
                  ) -> list[Span]:
    """Character spans of the tokens within ``text``.

    The tokens may spell ``text`` with extra whitespace around it (SentencePiece's leading
    space, an answer that was stripped); spans are shifted and clipped to ``text``.
    ``prefix``: the tokens may spell only the start of ``text`` (a target cut at a maximum
    length).
    """
    decoded, spans = char_spans(pieces)
    start = decoded.find(text) if text else 0
    if prefix and start < 0:
        start = len(decoded) - len(decoded.lstrip())
        if not text.startswith(decoded[start:].rstrip()):
            start = -1
        text = text[: len(decoded) - start]
    elif start >= 0 and decoded[start + len(text):].strip():
        start = -1
    if start < 0 or decoded[:start].strip():
        raise SpanError(f"the tokens spell {decoded[:60]!r}, not the text {text[:60]!r}")
    length = len(text)
    return [(min(max(a - start, 0), length), min(max(b - start, 0), length)) for a, b in spans]


def align_spans(left: Sequence[Span], right: Sequence[Span]) -> list[tuple[range, range]]:
    """Cut two tokenisations of one text into groups that cover the same characters.

    Returns (left token range, right token range) pairs in order. A group closes at a position
    both sides reach with no token of either side starting before it (so tokens sharing a
    multi-byte character stay together); a zero-width token (a special such as the end token)
    at a cut starts the next group, so end tokens pair with end tokens. When one side runs
    out, the other side's remaining tokens form a last group with an empty partner range.
    """
    out: list[tuple[range, range]] = []
    i = j = 0
    while i < len(left) and j < len(right):
        first_i, first_j = i, j
        reach_l, reach_r = left[i][1], right[j][1]
        i, j = i + 1, j + 1
        while True:
            cut = max(reach_l, reach_r)
            if i < len(left) and (reach_l < cut or left[i][0] < cut):
                reach_l, i = max(reach_l, left[i][1]), i + 1
            elif j < len(right) and (reach_r < cut or right[j][0] < cut):
                reach_r, j = max(reach_r, right[j][1]), j + 1
            else:
                break
        out.append((range(first_i, i), range(first_j, j)))
    if i < len(left) or j < len(right):
        out.append((range(i, len(left)), range(j, len(right))))
    return out

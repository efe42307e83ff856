"""The soft-target cache's on-disk encoding: meta record and records.

Why a format of our own: a top-k row per target token for a million samples is large, and the
trainer reads one sample at a time by id. Version 3 range-codes each record's top-k block
(coding.py, refcoding.py: about 2.1 B per top-k entry on real rows at k=64); versions 1 and 2
bit-packed it at fixed width (ceil(log2 V) bits per id, 12-bit logprobs: 3.6 B per entry at
V=128256) and stay readable. A per-record layout with an index lets a reader seek straight to
one sample. See README.md here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from distill.errors import DistillError
from teachers.cache.coding import CodingError, TopKCodec
from teachers.cache.refcoding import default_topk_coding

FORMAT_NAME = "distill-teacher-cache"
# 2 added a rest block per record (the mass outside the top-k); 3 range-codes the top-k block
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
RECORD_MAGIC = b"DTC1"
NO_TEXT = 0xFFFFFFFF  # length marker for an absent (None) text field

# Logprob codec defaults: 12 bits over [-40, 0] nats -> step 0.00978, |error| <= 0.0049 nats.
LOGPROB_BITS = 12
LOGPROB_FLOOR = -40.0


class CacheFormatError(DistillError, ValueError):
    """Bytes that do not decode as a record of this format (corruption or a foreign file)."""


class CachedSample(NamedTuple):
    """One sample's soft targets, as the trainer reads them.

    ``topk_ids[t]`` and ``topk_logprobs[t]`` are the teacher's k most likely next tokens at
    response position t (the distribution that predicts ``response_ids[t]``), best first.
    """

    response_ids: np.ndarray  # int64 [T]
    topk_ids: np.ndarray  # int64 [T, k]
    topk_logprobs: np.ndarray  # float32 [T, k]
    rationale: str | None = None
    text: str | None = None
    # float32 [T]: log of the teacher's mass outside its top-k at each position. Written from
    # the unrounded log-probs (computed by the writer when absent); None in version-1 caches.
    rest_logprobs: np.ndarray | None = None
    # int64 [T, 2]: [start, end) character span in ``text`` of each response token; only in
    # caches whose meta has ``teacher_tokens`` (the response is then in the teacher's tokens).
    spans: np.ndarray | None = None


# ------------------------------------------------------------------------------------ meta
@dataclass(frozen=True)
class CacheMeta:
    """What produced a cache: two runs may share a cache only if every field is equal."""

    teacher: str
    teacher_revision: str | None
    tokenizer_fingerprint: str  # the teacher's tokenizer (fingerprint.py)
    target_tokenizer_fingerprint: str  # the student's: it tokenised the score-mode targets
    mode: str  # "score" or "generate": the default of every task not in task_modes
    k: int
    logprob_mode: str
    temperature: float
    prompt_template_hash: str
    vocab_size: int
    max_new_tokens: int | None = None
    rationale_as_target: bool = False
    # teacher -> student id map applied to every row (teachers/token_map.py): {"mapped":
    # [[teacher id, student id], ...], "folded": [teacher ids], "student_end": id}; {} = none
    token_map: dict = dataclasses.field(default_factory=dict)
    task_modes: dict = dataclasses.field(default_factory=dict)  # {task: mode} overrides
    # Cross-tokenizer caches: response ids and rows are in the TEACHER's tokens (no token map),
    # each record adds a block with the character span of every response token in ``text``,
    # and the trainer aligns them with the student's tokens of ``text``. False: student ids.
    teacher_tokens: bool = False

    def mode_for(self, task: str | None) -> str:
        return self.task_modes.get(task, self.mode) if task is not None else self.mode
    logprob_bits: int = LOGPROB_BITS  # versions 1-2: every logprob; version 3: the rest only
    logprob_floor: float = LOGPROB_FLOOR
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    # version 3: the top-k block's codec and models (its "name": "range-ref-1", refcoding.py,
    # for new caches, defaults by k: default_topk_coding; "range-zipf-1", coding.py, in caches
    # begun before it); {} in versions 1-2
    topk_coding: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.version < 3 and self.topk_coding:
            object.__setattr__(self, "topk_coding", {})
        elif self.version >= 3 and not self.topk_coding:
            object.__setattr__(self, "topk_coding", default_topk_coding(self.k))

    @property
    def id_bits(self) -> int:
        return id_bits_for(self.vocab_size)

    @property
    def has_rest(self) -> bool:
        """Records carry the rest block (format version 2 on)."""
        return self.version >= 2

    @property
    def codec(self) -> LogprobCodec:
        """The fixed-width logprob code: every logprob in versions 1-2, the rest in 3."""
        return LogprobCodec(self.logprob_bits, self.logprob_floor)

    @functools.cached_property
    def topk_codec(self) -> TopKCodec:
        """Version 3's top-k block coder (its built models are shared per distinct meta)."""
        return TopKCodec.from_meta(self.topk_coding, self.k, self.vocab_size, self.logprob_floor,
                                   self.logprob_bits)

    @property
    def max_logprob_error(self) -> float:
        """Largest |stored - true| of a top-k logprob above the floor: half the step."""
        return self.topk_codec.step / 2 if self.version >= 3 else self.codec.max_error

    def to_json(self) -> str:
        # students/card.py's cache_meta_digest re-creates this text from the fields: keep both
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CacheMeta:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CacheFormatError(f"meta record is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise CacheFormatError(f"meta record must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME:
            raise CacheFormatError(f"not a {FORMAT_NAME} meta record (format={data.get('format')!r})")
        if data.get("version") not in READABLE_VERSIONS:
            raise CacheFormatError(
                f"cache format version {data.get('version')} is not supported (this code reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CacheFormatError(f"meta record has unknown fields: {', '.join(unknown)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if data["version"] >= 3 and not data.get("topk_coding"):
            missing.append("topk_coding")
        if missing:
            raise CacheFormatError(f"meta record lacks required fields: {', '.join(missing)}")
        meta = cls(**data)
        if meta.version >= 3:
            try:
                meta.topk_codec  # noqa: B018 - validates the models once, at open
            except CodingError as err:
                raise CacheFormatError(str(err)) from None
        return meta

    def differences(self, other: CacheMeta) -> list[str]:
        """Human-readable ``field: this != other`` lines (empty when the metas agree)."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return [f"{key}: {mine[key]!r} != {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]


def id_bits_for(vocab_size: int) -> int:
    """Bits per token id: ceil(log2 V), at least 1."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return max(1, math.ceil(math.log2(vocab_size)))


# ----------------------------------------------------------------------------- bit packing
def pack_uints(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers into ``bits`` bits each (big-endian bit order), byte-padded."""
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return b""
    if flat.min() < 0 or int(flat.max()) >= (1 << bits):
        raise ValueError(f"values must lie in [0, 2**{bits}); got [{flat.min()}, {flat.max()}]")
    as_bytes = flat.astype(">u4").view(np.uint8).reshape(-1, 4)
    bit_rows = np.unpackbits(as_bytes, axis=1)[:, 32 - bits :]
    return np.packbits(bit_rows.reshape(-1)).tobytes()


def unpack_uints(data: bytes | memoryview, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_uints``: ``count`` integers as int64."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(data, dtype=np.uint8)
    needed = packed_size(count, bits)
    if raw.size < needed:
        raise CacheFormatError(f"packed block too short: {raw.size} bytes, need {needed}")
    bit_rows = np.unpackbits(raw[:needed], count=count * bits).reshape(count, bits)
    full = np.zeros((count, 32), dtype=np.uint8)
    full[:, 32 - bits :] = bit_rows
    return np.packbits(full, axis=1).view(">u4").reshape(-1).astype(np.int64)


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


# ------------------------------------------------------------------------ logprob codec
@dataclass(frozen=True)
class LogprobCodec:
    """Uniform quantiser of logprobs on [floor, 0] with ``bits`` bits.

    Error: at most half a step, ``-floor / (2**bits - 1) / 2`` (0.0049 nats at 12 bits over
    [-40, 0]); values below ``floor`` (probability < 4e-18 at -40) are stored as ``floor``.
    """

    bits: int = LOGPROB_BITS
    floor: float = LOGPROB_FLOOR

    @property
    def step(self) -> float:
        return -self.floor / ((1 << self.bits) - 1)

    @property
    def max_error(self) -> float:
        return self.step / 2

    def encode(self, logprobs: np.ndarray) -> np.ndarray:
        values = np.asarray(logprobs, dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError("logprobs contain NaN")
        clipped = np.clip(values, self.floor, 0.0)
        return np.rint(-clipped / self.step).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return (-np.asarray(codes, dtype=np.float64) * self.step).astype(np.float32)


# --------------------------------------------------------------------------------- records
_HEADER = struct.Struct("<4sHIH")  # magic, id length, response length T, k
_SPAN = np.dtype("<u4")  # span block (teacher-token caches): [T, 2] little-endian u32


_CODED_LENGTH = struct.Struct("<I")  # version 3: bytes of the range-coded top-k block


def encode_record(sample_id: str, sample: CachedSample, meta: CacheMeta) -> bytes:
    """One sample as bytes: header, id, top-k block (coded or packed by version), texts."""
    response = np.asarray(sample.response_ids, dtype=np.int64).reshape(-1)
    topk_ids = np.asarray(sample.topk_ids, dtype=np.int64)
    topk_lp = np.asarray(sample.topk_logprobs, dtype=np.float32)
    length = response.size
    if topk_ids.ndim != 2 or topk_ids.shape != topk_lp.shape or topk_ids.shape[0] != length:
        raise ValueError(
            f"{sample_id}: shapes disagree: response [{length}], top-k ids {list(topk_ids.shape)}, "
            f"top-k logprobs {list(topk_lp.shape)}"
        )
    k = topk_ids.shape[1]
    if k != meta.k:
        raise ValueError(f"{sample_id}: top-k width {k} != the cache's k={meta.k}")
    name = sample_id.encode("utf-8")
    if len(name) > 0xFFFF:
        raise ValueError(f"sample id too long ({len(name)} bytes)")
    parts = [_HEADER.pack(RECORD_MAGIC, len(name), length, k), name]
    if meta.has_rest:
        rest = sample.rest_logprobs
        rest = rest_from_topk(topk_lp) if rest is None else np.asarray(rest, dtype=np.float64)
        if rest.shape != (length,):
            raise ValueError(f"{sample_id}: rest log-masses {list(rest.shape)} != [{length}]")
    if meta.version >= 3:
        try:
            block = meta.topk_codec.encode(response, topk_ids, topk_lp, meta.codec.encode(rest))
        except ValueError as err:
            raise ValueError(f"{sample_id}: {err}") from None
        parts += [_CODED_LENGTH.pack(len(block)), block]
    else:
        bits = meta.id_bits
        parts += [
            pack_uints(response, bits),
            pack_uints(topk_ids, bits),
            pack_uints(meta.codec.encode(topk_lp), meta.logprob_bits),
        ]
        if meta.has_rest:
            parts.append(pack_uints(meta.codec.encode(rest), meta.logprob_bits))
    if meta.teacher_tokens:
        spans = None if sample.spans is None else np.asarray(sample.spans, dtype=np.int64)
        if spans is None or spans.shape != (length, 2) or (length and spans.min() < 0):
            raise ValueError(f"{sample_id}: a teacher-token cache needs a [start, end) span per "
                             f"response token: [{length}, 2], got "
                             f"{None if spans is None else list(spans.shape)}")
        parts.append(spans.astype(_SPAN).tobytes())
    parts += [_encode_text(sample.text), _encode_text(sample.rationale)]
    return b"".join(parts)


def rest_from_topk(topk_logprobs: np.ndarray) -> np.ndarray:
    """log(1 - sum(exp(top-k))) per row [T], in float64 from the unrounded log-probs.

    Why before quantisation: after rounding (up to 0.0049 nats per entry) the kept mass of a
    peaked row can reach 1 while the true rest is several percent. A row whose kept mass is
    1 within float precision gets log 0 = -inf, stored as the codec's floor.
    """
    kept = np.exp(np.asarray(topk_logprobs, dtype=np.float64)).sum(-1)
    with np.errstate(divide="ignore"):
        return np.log(np.clip(1.0 - kept, 0.0, 1.0))


def decode_record(data: bytes | memoryview, meta: CacheMeta) -> tuple[str, CachedSample]:
    """Inverse of ``encode_record``; raises CacheFormatError on any inconsistency."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise CacheFormatError("record shorter than its header")
    magic, name_len, length, k = _HEADER.unpack_from(view, 0)
    if magic != RECORD_MAGIC:
        raise CacheFormatError(f"bad record magic {bytes(magic)!r}")
    if k != meta.k:
        raise CacheFormatError(f"record has k={k}, the cache's meta says k={meta.k}")
    pos = _HEADER.size
    try:
        sample_id = bytes(view[pos : pos + name_len]).decode("utf-8")
    except UnicodeDecodeError as err:
        raise CacheFormatError(f"sample id is not UTF-8: {err}") from None
    pos += name_len
    if meta.version >= 3:
        response, ids, logprobs, rest, pos = _decode_coded_block(view, pos, length, meta, sample_id)
    else:
        response, ids, logprobs, rest, pos = _decode_packed_block(view, pos, length, meta, sample_id)
    spans = None
    if meta.teacher_tokens:
        size = length * 2 * _SPAN.itemsize
        if pos + size > len(view):
            raise CacheFormatError(f"{sample_id}: record truncated in the span block")
        spans = np.frombuffer(view[pos : pos + size], dtype=_SPAN).reshape(length, 2)
        spans = spans.astype(np.int64)
        pos += size
    text, pos = _decode_text(view, pos, sample_id)
    rationale, pos = _decode_text(view, pos, sample_id)
    if pos != len(view):
        raise CacheFormatError(f"{sample_id}: {len(view) - pos} unexpected bytes after the record")
    sample = CachedSample(
        response_ids=response,
        topk_ids=ids,
        topk_logprobs=logprobs,
        rationale=rationale,
        text=text,
        rest_logprobs=meta.codec.decode(rest) if rest is not None else None,
        spans=spans,
    )
    return sample_id, sample


def _decode_packed_block(view: memoryview, pos: int, length: int, meta: CacheMeta, sample_id: str):
    """Versions 1-2: fixed-width arrays; returns (response, ids, logprobs, rest codes, end)."""
    bits, k = meta.id_bits, meta.k
    blocks = []
    layout = [(length, bits), (length * k, bits), (length * k, meta.logprob_bits)]
    if meta.has_rest:
        layout.append((length, meta.logprob_bits))
    for count, width in layout:
        size = packed_size(count, width)
        if pos + size > len(view):
            raise CacheFormatError(f"{sample_id}: record truncated")
        blocks.append(unpack_uints(view[pos : pos + size], width, count))
        pos += size
    response, ids, codes = blocks[:3]
    rest = blocks[3] if meta.has_rest else None
    return response, ids.reshape(length, k), meta.codec.decode(codes).reshape(length, k), rest, pos


def _decode_coded_block(view: memoryview, pos: int, length: int, meta: CacheMeta, sample_id: str):
    """Version 3: u32 length + range-coded block; returns (response, ids, logprobs, rest, end)."""
    if pos + _CODED_LENGTH.size > len(view):
        raise CacheFormatError(f"{sample_id}: record truncated")
    (size,) = _CODED_LENGTH.unpack_from(view, pos)
    pos += _CODED_LENGTH.size
    if pos + size > len(view):
        raise CacheFormatError(f"{sample_id}: record truncated")
    try:
        response, ids, logprobs, rest = meta.topk_codec.decode(view[pos : pos + size], length)
    except CodingError as err:
        raise CacheFormatError(f"{sample_id}: {err}") from None
    return response, ids, logprobs, rest, pos + size


def _encode_text(text: str | None) -> bytes:
    if text is None:
        return struct.pack("<I", NO_TEXT)
    raw = text.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


def _decode_text(view: memoryview, pos: int, sample_id: str) -> tuple[str | None, int]:
    if pos + 4 > len(view):
        raise CacheFormatError(f"{sample_id}: record truncated in a text field")
    (size,) = struct.unpack_from("<I", view, pos)
    pos += 4
    if size == NO_TEXT:
        return None, pos
    if pos + size > len(view):
        raise CacheFormatError(f"{sample_id}: record truncated in a text field")
    try:
        return bytes(view[pos : pos + size]).decode("utf-8"), pos + size
    except UnicodeDecodeError as err:
        raise CacheFormatError(f"{sample_id}: text is not UTF-8: {err}") from None

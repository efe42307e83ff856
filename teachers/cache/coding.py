"""Format version 3's top-k block: range-coded logprob gaps and ids against fixed models.

Why: fixed-width records (version 2) spend ceil(log2 V) bits on every id and 12 bits on every
logprob: 3.5-3.63 B per top-k entry. The information is much less. Each row is kept best
first, so its quantised logprobs only grow in distance from 0: the gaps between neighbours are
small non-negative integers, cheap under a fitted model. Top-k ids of a BPE vocabulary are
skewed to low ids (an id's position is its merge order, roughly its frequency), so a Zipf
model over the id, p(id) proportional to (id + offset)^-alpha, codes them below log2 V bits.
The target token is usually in the row, so its rank replaces its id. All symbols of a record are
coded with ``constriction``'s range coder (native code, whole numpy arrays per call): a sample
is still one ``pread``, decoded in a few hundred microseconds (17 rows of 64, busy 2-core CPU;
BENCHMARKS.md "Cache format").

The models are fixed per cache: their parameters live in ``meta.json``'s ``topk_coding`` (defaults
fitted on real SmolLM2-135M-Instruct top-64 rows by ``benchmarks/bench_cache.py``), so a later
change of the defaults never changes how an existing cache decodes. A teacher whose rows differ
from the fit pays a few more bits, never an error.

Error: each logprob is rounded to a multiple of ``step`` (|error| <= step / 2, mean step / 4 =
0.00975 nats at the default 0.039). The rest mass keeps version 2's 12-bit code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

CODEC_NAME = "range-zipf-1"

# Fitted on 1347 real SmolLM2-135M-Instruct top-64 rows (score mode; benchmarks/bench_cache.py
# --fit prints them). gap_tables[c][g]: relative frequency of the logprob-code gap g in slot
# context c (columns [0], [1, 4), [4, 16), [16, k); column 0's "gap" is its own code); the last
# symbol stands for "this or larger", whose value follows uniformly. rank_table[r]: the target
# token at rank r of its row, the last symbol "rank >= 16 or absent". Integers summing to ~2^20.
DEFAULT_CODEC: dict = {
    "name": CODEC_NAME,
    "logprob_step": 0.039,
    "slot_bounds": [1, 4, 16],
    "gap_tables": [
    [
        244376, 148602, 78672, 30785, 42186, 23183, 19383, 16342, 9501, 9501, 14822, 5701,
        15582, 10262, 14062, 11022, 14062, 11782, 19383, 16342, 14062, 14822, 13302, 7221, 9501,
        4941, 7221, 8741, 9501, 9501, 7221, 8741, 9501, 4181, 3421, 4181, 2660, 10262, 5701,
        7981, 4941, 8741, 4181, 1900, 3421, 2660, 2660, 8741, 4941, 7221, 4941, 7221, 4181,
        6461, 4181, 3421, 4941, 3421, 4181, 2660, 1140, 1140, 2660, 2660, 27744
    ],
    [
        21494, 41058, 36939, 37711, 34880, 33593, 26900, 29216, 25098, 28959, 24583, 23039,
        25870, 19177, 20207, 17118, 16088, 17633, 15059, 18148, 17118, 16861, 16861, 15316,
        13257, 10168, 11970, 8623, 12999, 8366, 13772, 8623, 7851, 7851, 7594, 6564, 6049, 7079,
        5792, 6049, 6049, 4247, 6307, 5277, 4762, 5534, 4762, 3733, 3733, 2445, 2960, 3990,
        5792, 2188, 5020, 2703, 2703, 3218, 3475, 4247, 2960, 2445, 4247, 901, 233346
    ],
    [
        130032, 212383, 157935, 109444, 87692, 65162, 49753, 39589, 30655, 25476, 20232, 17059,
        14211, 12268, 10715, 7931, 6312, 4111, 4694, 4888, 3917, 4046, 3205, 2622, 2298, 2234,
        1910, 1521, 1198, 1198, 1327, 1003, 1003, 745, 809, 809, 809, 615, 291, 809, 486, 291,
        486, 421, 356, 227, 227, 227, 32, 356, 97, 97, 227, 97, 32, 162, 97, 162, 32, 162, 97,
        97, 32, 97, 1068
    ],
    [
        411716, 396706, 136331, 52997, 22734, 11971, 6200, 3639, 1986, 1191, 948, 754, 381, 251,
        89, 73, 57, 41, 41, 41, 24, 8, 8, 24, 8, 8, 8, 8, 8, 41, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8,
        8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8
    ],
    ],
    "rank_table": [
        766222, 79291, 27462, 10443, 8896, 11990, 7349, 5802, 5802, 1934, 4255, 5802, 387, 387,
        3481, 2707, 106366
    ],
    "id_alpha": 1.1,
    "id_offset": 300.0,
}


class CodingError(ValueError):
    """Bytes that the range decoder cannot turn into a record (corruption)."""


@dataclass(frozen=True)
class TopKCodec:
    """Encoder/decoder of one record's top-k block under fixed models (the cache's ``codec``).

    Arrays: ``response`` int64 [T], ``ids`` int64 [T, k] and ``logprobs`` float [T, k]
    (any order within a row; stored best first), ``rest_codes`` int64 [T] (12-bit codes).
    """

    k: int
    vocab_size: int
    floor: float
    rest_bits: int
    step: float
    slot_bounds: tuple[int, ...]
    gap_tables: tuple[tuple[float, ...], ...]
    rank_table: tuple[float, ...]
    id_alpha: float
    id_offset: float

    @classmethod
    def from_meta(cls, codec: dict, k: int, vocab_size: int, floor: float, rest_bits: int) -> TopKCodec:
        """The coder ``codec`` (a meta's ``topk_coding``) names: ``range-zipf-1`` (this class)
        or ``range-ref-1`` (refcoding.py); CodingError naming what is wrong otherwise."""
        name = codec.get("name") if isinstance(codec, dict) else None
        if name == "range-ref-1":
            from teachers.cache.refcoding import RefTopKCodec

            return RefTopKCodec.build(codec, k, vocab_size, floor, rest_bits)
        if name != CODEC_NAME:
            raise CodingError(f"meta codec is malformed (unknown codec name {name!r}; this code "
                              f"reads {CODEC_NAME!r} and 'range-ref-1')")
        try:
            coder = _codec(
                k, vocab_size, float(floor), int(rest_bits), float(codec["logprob_step"]),
                tuple(int(b) for b in codec["slot_bounds"]),
                tuple(tuple(float(x) for x in t) for t in codec["gap_tables"]),
                tuple(float(x) for x in codec["rank_table"]),
                float(codec["id_alpha"]), float(codec["id_offset"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CodingError(f"meta codec is malformed ({err!r})") from None
        tables = (*coder.gap_tables, coder.rank_table)
        problems = [
            "logprob_step must be positive" if not coder.step > 0 else "",
            "gap_tables needs one table per slot context (len(slot_bounds) + 1)"
            if len(coder.gap_tables) != len(coder.slot_bounds) + 1 else "",
            "every table needs at least 2 positive entries"
            if any(len(t) < 2 or min(t) <= 0 for t in tables) else "",
            "id_offset must be positive" if not coder.id_offset > 0 else "",
        ]
        if any(problems):
            raise CodingError(f"meta codec is malformed ({'; '.join(p for p in problems if p)})")
        return coder

    # ---------------------------------------------------------------- quantiser
    @property
    def max_code(self) -> int:
        return int(np.rint(-self.floor / self.step))

    def quantise(self, logprobs: np.ndarray) -> np.ndarray:
        values = np.asarray(logprobs, dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError("logprobs contain NaN")
        return np.rint(-np.clip(values, self.floor, 0.0) / self.step).astype(np.int64)

    def dequantise(self, codes: np.ndarray) -> np.ndarray:
        # the floor's code rounds to just below it (-40.014 at 0.039): clamp back to the floor
        return np.maximum(-codes.astype(np.float64) * self.step, self.floor).astype(np.float32)

    def slot_context(self) -> np.ndarray:
        """int [k]: the gap model each column uses."""
        return np.searchsorted(np.asarray(self.slot_bounds), np.arange(self.k), side="right")

    # ---------------------------------------------------------------- models
    @functools.cached_property
    def _models(self):
        import constriction

        Categorical = constriction.stream.model.Categorical
        gaps = [Categorical(np.asarray(t, np.float64), perfect=False) for t in self.gap_tables]
        ranks = Categorical(np.asarray(self.rank_table, np.float64), perfect=False)
        ids = Categorical(id_class_probabilities(self.vocab_size, self.id_alpha, self.id_offset),
                          perfect=False)
        n_classes = id_class_probabilities(self.vocab_size, 1.0, 1.0).size
        base, widths = id_class_ranges(np.arange(n_classes))
        # per class: first id, and the Uniform size of its low bits (1: none)
        return gaps, ranks, ids, (base, (1 << widths).astype(np.int32))

    def _encode_ids(self, enc, ids: np.ndarray, model) -> None:
        import constriction

        classes, low, widths = id_classes(ids)
        enc.encode(classes.astype(np.int32), model)
        wide = widths > 0
        if wide.any():
            enc.encode(low[wide].astype(np.int32), constriction.stream.model.Uniform(),
                       (1 << widths[wide]).astype(np.int32))

    def _decode_ids(self, dec, count: int, model) -> np.ndarray:
        import constriction

        class_base, class_sizes = self._models[3]
        classes = dec.decode(model, count)
        base, sizes = class_base[classes], class_sizes[classes]
        wide = sizes > 1
        if wide.any():
            base[wide] += dec.decode(constriction.stream.model.Uniform(), sizes[wide])
        if base.size and base.max() >= self.vocab_size:
            raise CodingError(f"decoded id {base.max()} >= vocab size {self.vocab_size}")
        return base

    # ---------------------------------------------------------------- coding
    def encode(self, response: np.ndarray, ids: np.ndarray, logprobs: np.ndarray,
               rest_codes: np.ndarray) -> bytes:
        import constriction

        Uniform, RangeEncoder = constriction.stream.model.Uniform, constriction.stream.queue.RangeEncoder

        length, k = ids.shape
        if length == 0:
            return b""
        ids, codes = self._best_first(ids, logprobs)
        enc = RangeEncoder()
        self._encode_ranks_and_gaps(enc, np.asarray(response, np.int64), ids, codes)
        # 3. ids, 4. rest codes
        self._encode_ids(enc, ids.ravel(), self._models[2])
        enc.encode(np.asarray(rest_codes, np.int32), Uniform(1 << self.rest_bits))
        return enc.get_compressed().astype("<u4").tobytes()

    def _best_first(self, ids: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, quantised codes) [T, k], each row sorted best first (ties keep their order);
        ValueError for an id outside the vocabulary."""
        codes = self.quantise(logprobs)
        order = np.argsort(codes, axis=1, kind="stable")  # best first; ties keep their order
        codes = np.take_along_axis(codes, order, 1)
        ids = np.take_along_axis(np.asarray(ids, np.int64), order, 1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"top-k ids must lie in [0, {self.vocab_size})")
        return ids, codes

    def _encode_ranks_and_gaps(self, enc, response: np.ndarray, ids: np.ndarray,
                               codes: np.ndarray) -> None:
        """Symbols 1-2 of a record: target ranks (and absent targets' ids), logprob-code gaps.
        ``ids`` and ``codes`` [T, k] are already best first."""
        import constriction

        Uniform = constriction.stream.model.Uniform
        k = ids.shape[1]
        gaps = np.diff(codes, axis=1, prepend=0)
        gap_models, rank_model, id_model, _ = self._models
        # 1. the target token's rank in its row (k: not in the row, its id follows)
        ranks = rank_in_row(ids, response)
        rank_escape = len(self.rank_table) - 1
        enc.encode(np.minimum(ranks, rank_escape).astype(np.int32), rank_model)
        escaped = ranks[ranks >= rank_escape] - rank_escape
        if escaped.size and k + 1 - rank_escape > 1:  # ranks R..k beyond the table: uniform
            enc.encode(escaped.astype(np.int32), Uniform(k + 1 - rank_escape))
        absent = response[ranks == k]
        if absent.size:
            if absent.min() < 0 or absent.max() >= self.vocab_size:
                raise ValueError(f"response ids must lie in [0, {self.vocab_size})")
            self._encode_ids(enc, absent, id_model)
        # 2. logprob gaps, column context by column context
        context = self.slot_context()
        for c, model in enumerate(gap_models):
            values = gaps[:, context == c].ravel()
            if not values.size:
                continue
            escape = len(self.gap_tables[c]) - 1
            enc.encode(np.minimum(values, escape).astype(np.int32), model)
            big = values[values >= escape]
            if big.size:
                enc.encode(big.astype(np.int32), Uniform(self.max_code + 1))

    def decode(self, data: bytes | memoryview, length: int):
        """(response int64 [T], ids int64 [T, k], logprobs float32 [T, k], rest codes int64 [T])."""
        import constriction

        Uniform, RangeDecoder = constriction.stream.model.Uniform, constriction.stream.queue.RangeDecoder

        if len(data) % 4:
            raise CodingError("coded block is not a whole number of 32-bit words")
        k = self.k
        if length == 0:
            empty = np.zeros((0, k), np.int64)
            return np.zeros(0, np.int64), empty, empty.astype(np.float32), np.zeros(0, np.int64)
        try:
            dec = RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
            ranks, absent_ids, gaps = self._decode_ranks_and_gaps(dec, length)
            ids = self._decode_ids(dec, length * k, self._models[2]).reshape(length, k)
            rest = dec.decode(Uniform(1 << self.rest_bits), length).astype(np.int64)
            if not dec.maybe_exhausted():
                raise CodingError("coded block has data after its last symbol")
        except CodingError:
            raise
        except (ValueError, RuntimeError, AssertionError, IndexError, OverflowError) as err:
            raise CodingError(f"coded block does not decode ({err})") from None
        return self._finish(ranks, absent_ids, gaps, ids, rest)

    def _decode_ranks_and_gaps(self, dec, length: int):
        """Inverse of ``_encode_ranks_and_gaps``: (ranks [T], absent targets' ids or None,
        gaps [T, k]); raises CodingError or the decoder's own errors."""
        import constriction

        Uniform = constriction.stream.model.Uniform
        k = self.k
        gap_models, rank_model, id_model, _ = self._models
        rank_escape = len(self.rank_table) - 1
        ranks = dec.decode(rank_model, length).astype(np.int64)
        escaped = ranks == rank_escape
        if escaped.any() and k + 1 - rank_escape > 1:
            ranks[escaped] += dec.decode(Uniform(k + 1 - rank_escape), int(escaped.sum()))
        if ranks.size and ranks.max() > k:
            raise CodingError(f"decoded target rank {ranks.max()} > k={k}")
        absent = ranks == k
        absent_ids = self._decode_ids(dec, int(absent.sum()), id_model) if absent.any() else None
        context = self.slot_context()
        gaps = np.zeros((length, k), np.int64)
        for c, model in enumerate(gap_models):
            columns = context == c
            count = length * int(columns.sum())
            if not count:
                continue
            values = dec.decode(model, count).astype(np.int64)
            escape = len(self.gap_tables[c]) - 1
            big = values == escape
            if big.any():
                values[big] = dec.decode(Uniform(self.max_code + 1), int(big.sum()))
            gaps[:, columns] = values.reshape(length, -1)
        return ranks, absent_ids, gaps

    def _finish(self, ranks, absent_ids, gaps, ids, rest):
        """(response, ids, logprobs, rest) from decoded parts; checks the codes' range."""
        codes = np.cumsum(gaps, axis=1)
        if codes.size and codes[:, -1].max() > self.max_code:
            raise CodingError("decoded logprob codes exceed the floor (corrupted block)")
        length = len(ranks)
        absent = ranks == self.k
        response = np.empty(length, np.int64)
        rows = np.arange(length)
        present = ~absent
        response[present] = ids[rows[present], ranks[present]]
        if absent_ids is not None:
            response[absent] = absent_ids
        return response, ids, self.dequantise(codes), rest


@functools.lru_cache(maxsize=16)
def _codec(*args) -> TopKCodec:
    """One codec (and its built models) per distinct meta: building the id model costs ~ms."""
    return TopKCodec(*args)


def rank_in_row(ids: np.ndarray, response: np.ndarray) -> np.ndarray:
    """int64 [T]: first column of row t holding ``response[t]``, or k when absent."""
    length, k = ids.shape
    hit = ids == np.asarray(response, np.int64).reshape(-1, 1)
    return np.where(hit.any(1), hit.argmax(1), k).astype(np.int64)


ID_CLASS_MANTISSA = 2  # bits of an id, after its leading 1, that its class names


def id_classes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ids into (class, low bits, number of low bits), each int64 [n].

    Ids below 2^(m+1) (m = ID_CLASS_MANTISSA) are their own class; a larger id with bit length
    b is named by b and the m bits after its leading 1, and its b - 1 - m low bits follow
    uniformly. So the classes are a log scale with 2^m steps per octave: a 16-bit vocabulary
    has 60 classes, a 17-bit one 64, and a Zipf model over classes costs a few hundred floats.
    """
    ids = np.asarray(ids, np.int64).ravel()
    small = 1 << (ID_CLASS_MANTISSA + 1)
    length = np.zeros(ids.shape, np.int64)
    nz = ids > 0
    length[nz] = np.floor(np.log2(ids[nz])).astype(np.int64) + 1
    widths = np.maximum(length - 1 - ID_CLASS_MANTISSA, 0)
    top = (ids >> widths) & ((1 << ID_CLASS_MANTISSA) - 1)
    classes = np.where(ids < small, ids,
                       small + (length - ID_CLASS_MANTISSA - 2) * (1 << ID_CLASS_MANTISSA) + top)
    low = ids & ((1 << widths) - 1)
    return classes, low, widths


def id_class_ranges(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``id_classes`` up to the low bits: (first id of the class, low-bit count)."""
    classes = np.asarray(classes, np.int64)
    small = 1 << (ID_CLASS_MANTISSA + 1)
    rel = np.maximum(classes - small, 0)
    length = rel // (1 << ID_CLASS_MANTISSA) + ID_CLASS_MANTISSA + 2
    top = rel % (1 << ID_CLASS_MANTISSA)
    widths = np.where(classes < small, 0, length - 1 - ID_CLASS_MANTISSA)
    base = np.where(classes < small, classes,
                    ((1 << ID_CLASS_MANTISSA) + top) << np.maximum(widths, 0))
    return base.astype(np.int64), widths.astype(np.int64)


def id_class_probabilities(vocab_size: int, alpha: float, offset: float) -> np.ndarray:
    """float64 [classes]: the Zipf model's mass of each id class (ids >= vocab_size excluded)."""
    classes, _low, _widths = id_classes(np.arange(vocab_size))
    return np.bincount(classes, weights=zipf_probabilities(vocab_size, alpha, offset))


def zipf_probabilities(vocab_size: int, alpha: float, offset: float) -> np.ndarray:
    """float64 [V]: p(id) proportional to (id + offset)^-alpha (BPE ids ~ frequency order)."""
    weights = (np.arange(vocab_size, dtype=np.float64) + offset) ** -alpha
    return weights / weights.sum()


def fit_tables(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], vocab_size: int, step: float,
               floor: float, slot_bounds=(1, 4, 16), gap_symbols: int = 64, rank_symbols: int = 16) -> dict:
    """Model parameters fitted on (response [T], ids [T, k], logprobs [T, k]) samples.

    Tables are counts + 1/2 (never zero), scaled to integers summing to about 2^20, so the
    meta stays short and exact. The Zipf parameters are picked from a small grid by the ids'
    total code length.
    """
    ids = np.concatenate([r[1] for r in rows])
    lp = np.concatenate([r[2] for r in rows])
    codes = np.rint(-np.clip(lp, floor, 0.0) / step).astype(np.int64)
    codes = np.sort(codes, axis=1)
    gaps = np.diff(codes, axis=1, prepend=0)
    context = np.searchsorted(np.asarray(slot_bounds), np.arange(ids.shape[1]), side="right")
    tables = []
    for c in range(len(slot_bounds) + 1):
        values = np.minimum(gaps[:, context == c].ravel(), gap_symbols)
        tables.append(_scaled(np.bincount(values, minlength=gap_symbols + 1)))
    ranks = np.concatenate([rank_in_row(r[1], r[0]) for r in rows])
    rank_table = _scaled(np.bincount(np.minimum(ranks, rank_symbols), minlength=rank_symbols + 1))
    flat = ids.ravel()
    best = None
    for alpha in (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2):
        for offset in (10.0, 30.0, 100.0, 300.0, 1000.0):
            p = id_class_probabilities(vocab_size, alpha, offset)
            classes, _low, widths = id_classes(flat)
            bits = -np.log2(p[classes]).sum() + widths.sum()
            if best is None or bits < best[0]:
                best = (bits, alpha, offset)
    return {"name": CODEC_NAME, "logprob_step": step, "slot_bounds": list(slot_bounds),
            "gap_tables": tables, "rank_table": rank_table, "id_alpha": best[1],
            "id_offset": best[2]}


def _scaled(counts: np.ndarray) -> list[int]:
    weights = counts.astype(np.float64) + 0.5
    return [max(1, int(x)) for x in np.rint(weights / weights.sum() * (1 << 20))]

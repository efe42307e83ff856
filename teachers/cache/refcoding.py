"""Codec ``range-ref-1`` of format version 3's top-k block: ids coded as references into the record.

Why: under ``range-zipf-1`` (coding.py) an id costs about 13.8 bits, 85 % of a top-k entry. Half
of the ids of a record (one sample, ~17 rows of k = 64) already occurred in an earlier row of
the same record: the teacher's tail at neighbouring positions keeps the same common tokens. Such
an id is coded as a reference: how many rows back its most recent occurrence is (b) and its rank
there relative to its own (delta); an id never seen in the record falls back to the Zipf model.
On real SmolLM2 top-64 rows this costs ~12.9 bits per id on rows the tables were not fitted on
(BENCHMARKS.md "Cache format": 2.07 B per entry in records against 2.17).

Why this and not the other ideas measured there: the previous row plus a move-to-front list of
the record's ids codes about as well (12.7 bits in-sample against 12.8 for b + delta), but the
list changes with every symbol, so it decodes symbol by symbol in Python (milliseconds a sample);
sorting a row by id and delta-coding it needs the row's order back (log2 of 64!/ties: ~4.2 bits
per entry); a unigram table fitted on the cache's own rows (12.0 bits alone, 11.3 mixed with
in-record counts symbol by symbol) needs the rows before the first record is coded: every cache
would be re-coded after its run, or each shard buffered until it is finished. References use
fixed tables (in ``meta.json``, like the other models), so a cache is still coded record by
record as the teacher delivers it, a rerun resumes where it stopped, nothing is rewritten, and a
sample is one ``pread`` (about 280 µs of CPU to decode 17 rows of 64, 1.7x ``range-zipf-1``).

Decoding stays vectorised: every symbol stream is decoded with one ``constriction`` call per
context (the models never depend on decoded values), then references are resolved by pointer
doubling over the record's flat entry index (a reference always points to an earlier row, so
ceil(log2 T) + 1 rounds of ``ptr = ptr[ptr]`` reach an id that was coded as new).

Stream of one record (after the ranks, the absent targets and the logprob gaps, as in
``range-zipf-1``): for rows 1..T-1, per reference context, a ``back`` symbol per entry (0: new
id; 1..B-1: the id's most recent occurrence is that many rows back; B: b >= B, then b - B
uniformly over the row's t - B + 1 possibilities); per context, a ``delta`` symbol per reference
(delta + D for |delta| <= D, else 2D + 1 then the earlier rank uniformly over k); the new ids
(all of row 0 and every back = 0), by the Zipf class model; the rest codes.

Error and logprob coding: as ``range-zipf-1`` (rounded to a multiple of ``logprob_step``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import numpy as np

from teachers.cache.coding import (
    DEFAULT_CODEC,
    CodingError,
    TopKCodec,
    _scaled,
    fit_tables,
    id_class_probabilities,
    id_classes,
    rank_in_row,
)

REF_CODEC_NAME = "range-ref-1"
BACK_SYMBOLS = 8  # back symbol B: 0 = new, 1..7 rows back, 8 = 8 or more (then uniform)
DELTA_HALF_WIDTH = 16  # delta symbol: rank delta in [-16, 16], then escape (uniform over k)

# Fitted on 1347 real SmolLM2-135M-Instruct top-64 rows (score mode; python
# benchmarks/bench_cache.py --fit prints them). Integers summing to ~2^20.
DEFAULT_REF_CODEC: dict = {
    "name": REF_CODEC_NAME,
    "logprob_step": 0.039,
    "slot_bounds": [1, 4, 16],
    "gap_tables": [],  # set below: coding.DEFAULT_CODEC's (fitted on the same texts)
    "rank_table": [],
    "ref_slot_bounds": [1, 4, 16],
    "back_tables": [
        [
            279153, 490270, 89477, 63912, 25977, 16081, 16906, 7834, 58964
        ],
        [
            293590, 404358, 120550, 75361, 38438, 18599, 16670, 10057, 70952
        ],
        [
            390480, 273477, 108763, 80564, 41816, 28096, 19271, 11066, 95043
        ],
        [
            549291, 146898, 71108, 60557, 40558, 25335, 17818, 14542, 122468
        ],
    ],
    "delta_tables": [
        [
            554, 554, 554, 554, 554, 554, 554, 554, 554, 554, 554, 554, 554, 554, 554, 554,
            83687, 121373, 64843, 42675, 47108, 46000, 31590, 28265, 38241, 29373, 26048, 13855,
            20506, 19398, 20506, 20506, 24940, 360794
        ],
        [
            190, 190, 190, 190, 190, 190, 190, 190, 190, 190, 190, 190, 190, 9713, 19616, 42850,
            54276, 42469, 34470, 40564, 32185, 32947, 29138, 28376, 22663, 21901, 24948, 19616,
            24567, 19996, 16188, 19616, 19996, 490008
        ],
        [
            55, 1920, 3565, 4553, 6747, 10916, 10367, 11903, 16182, 15414, 20131, 21886, 25836,
            27920, 28249, 29347, 29127, 27372, 27262, 23971, 21667, 22435, 18595, 18156, 22654,
            19692, 18815, 17937, 18595, 16511, 15085, 14317, 16072, 465321
        ],
        [
            17245, 16521, 17318, 18295, 16992, 16558, 17462, 17426, 17969, 18982, 16956, 18801,
            17860, 19670, 16920, 18982, 16775, 18041, 16847, 16485, 15327, 14603, 15074, 15038,
            14024, 14712, 12794, 14133, 13554, 13011, 11780, 11961, 11418, 519040
        ],
    ],
    "new_id_alpha": 1.2,
    "new_id_offset": 1000.0,
}
DEFAULT_REF_CODEC["gap_tables"] = [list(t) for t in DEFAULT_CODEC["gap_tables"]]
DEFAULT_REF_CODEC["rank_table"] = list(DEFAULT_CODEC["rank_table"])


# The same rows cut to their best 8 (python benchmarks/bench_cache.py --fit): tables for small k
# (a top-8 record has fewer references and more common new ids; the top-64 tables cost a top-8
# cache ~4 % more than range-zipf-1, these ~5 % less; BENCHMARKS.md "Cache format").
DEFAULT_REF_CODEC_SMALL_K: dict = {
    "name": REF_CODEC_NAME,
    "logprob_step": 0.039,
    "slot_bounds": [1, 4],
    "gap_tables": [
        [
            244376, 148602, 78672, 30785, 42186, 23183, 19383, 16342, 9501, 9501, 14822, 5701,
            15582, 10262, 14062, 11022, 14062, 11782, 19383, 16342, 14062, 14822, 13302, 7221,
            9501, 4941, 7221, 8741, 9501, 9501, 7221, 8741, 9501, 4181, 3421, 4181, 2660, 10262,
            5701, 7981, 4941, 8741, 4181, 1900, 3421, 2660, 2660, 8741, 4941, 7221, 4941, 7221,
            4181, 6461, 4181, 3421, 4941, 3421, 4181, 2660, 1140, 1140, 2660, 2660, 27744
        ],
        [
            21494, 41058, 36939, 37711, 34880, 33593, 26900, 29216, 25098, 28959, 24583, 23039,
            25870, 19177, 20207, 17118, 16088, 17633, 15059, 18148, 17118, 16603, 17118, 15316,
            13257, 10425, 11712, 8623, 12999, 8366, 13772, 8623, 7851, 7851, 7594, 6564, 6049,
            7079, 5792, 6049, 6049, 4247, 6307, 5277, 4762, 5534, 4762, 3733, 3733, 2445, 2960,
            3990, 5792, 2188, 5020, 2703, 2703, 3218, 3475, 4247, 2960, 2445, 4247, 901, 233346
        ],
        [
            80184, 136090, 123902, 96046, 75347, 71285, 58131, 52714, 38399, 39366, 29887, 29501,
            23697, 24664, 20989, 15186, 12477, 8995, 9189, 10543, 8415, 8802, 8221, 6674, 5320,
            5320, 4739, 3772, 2998, 3192, 3772, 2418, 2805, 1838, 2031, 1451, 2418, 1644, 871,
            2031, 1257, 871, 1451, 1257, 871, 484, 677, 484, 97, 677, 290, 290, 677, 290, 97,
            290, 290, 484, 97, 484, 290, 290, 97, 290, 871
        ],
    ],
    "rank_table": [
        766222, 79291, 27462, 10443, 8896, 11990, 7349, 5802, 128026, 387, 387, 387, 387, 387,
        387, 387, 387
    ],
    "ref_slot_bounds": [1, 4],
    "back_tables": [
        [
            497692, 234620, 52367, 70510, 37523, 19380, 22679, 9484, 104322
        ],
        [
            586492, 110079, 51113, 72330, 45051, 28519, 23283, 11711, 119999
        ],
        [
            676071, 71834, 36899, 50129, 36899, 22015, 17468, 13953, 123307
        ],
    ],
    "delta_tables": [
        [
            770, 770, 770, 770, 770, 770, 770, 770, 770, 770, 770, 770, 770, 770, 770, 770,
            210177, 219416, 147047, 100854, 105474, 97775, 73139, 74678, 770, 770, 770, 770, 770,
            770, 770, 770, 770, 770
        ],
        [
            310, 310, 310, 310, 310, 310, 310, 310, 310, 310, 310, 310, 310, 38779, 72904,
            145498, 170937, 143016, 131848, 131848, 102686, 66699, 36917, 310, 310, 310, 310,
            310, 310, 310, 310, 310, 310, 310
        ],
        [
            289, 289, 289, 289, 289, 289, 289, 289, 289, 26864, 64994, 83482, 117568, 122767,
            135477, 139521, 137210, 119301, 64417, 30331, 289, 289, 289, 289, 289, 289, 289, 289,
            289, 289, 289, 289, 289, 289
        ],
    ],
    "new_id_alpha": 1.2,
    "new_id_offset": 300.0,
}
SMALL_K = 24  # k below this: DEFAULT_REF_CODEC_SMALL_K (fitted at k = 8); else DEFAULT_REF_CODEC (64)


def default_topk_coding(k: int) -> dict:
    """A fresh copy of the ``range-ref-1`` models a new cache of width ``k`` starts with."""
    return json.loads(json.dumps(DEFAULT_REF_CODEC_SMALL_K if k < SMALL_K else DEFAULT_REF_CODEC))


@dataclass(frozen=True)
class RefTopKCodec(TopKCodec):
    """``range-ref-1``: ``TopKCodec``'s ranks and gaps, ids as in-record references (module doc).

    Arrays as ``TopKCodec``: ``response`` int64 [T], ``ids`` int64 [T, k], ``logprobs`` float
    [T, k], ``rest_codes`` int64 [T]. Extra models: ``ref_slot_bounds`` (column contexts of the
    back and delta symbols), ``back_tables[c]`` (B + 1 symbols), ``delta_tables[c]`` (2D + 2).
    ``id_alpha``/``id_offset`` are the new ids' Zipf model (meta keys ``new_id_alpha``,
    ``new_id_offset``: a reader that knows only ``range-zipf-1`` refuses the meta as malformed
    instead of misreading the records).
    """

    ref_slot_bounds: tuple[int, ...] = (1, 4, 16)
    back_tables: tuple[tuple[float, ...], ...] = ()
    delta_tables: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def build(cls, codec: dict, k: int, vocab_size: int, floor: float, rest_bits: int) -> RefTopKCodec:
        try:
            coder = _ref_codec(
                k, vocab_size, float(floor), int(rest_bits), float(codec["logprob_step"]),
                tuple(int(b) for b in codec["slot_bounds"]),
                tuple(tuple(float(x) for x in t) for t in codec["gap_tables"]),
                tuple(float(x) for x in codec["rank_table"]),
                float(codec["new_id_alpha"]), float(codec["new_id_offset"]),
                tuple(int(b) for b in codec["ref_slot_bounds"]),
                tuple(tuple(float(x) for x in t) for t in codec["back_tables"]),
                tuple(tuple(float(x) for x in t) for t in codec["delta_tables"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CodingError(f"meta codec is malformed ({err!r})") from None
        contexts = len(coder.ref_slot_bounds) + 1
        tables = (*coder.back_tables, *coder.delta_tables)
        problems = [
            f"back_tables and delta_tables need one table per reference context ({contexts})"
            if len(coder.back_tables) != contexts or len(coder.delta_tables) != contexts else "",
            f"back tables need {BACK_SYMBOLS + 1} entries, delta tables {2 * DELTA_HALF_WIDTH + 2}"
            if any(len(t) != BACK_SYMBOLS + 1 for t in coder.back_tables)
            or any(len(t) != 2 * DELTA_HALF_WIDTH + 2 for t in coder.delta_tables) else "",
            "every table needs positive entries" if any(min(t) <= 0 for t in tables if t) else "",
            "ref_slot_bounds must increase from above 0"
            if any(b <= a for a, b in zip((0, *coder.ref_slot_bounds), coder.ref_slot_bounds,
                                          strict=False)) else "",
        ]
        if any(problems):
            raise CodingError(f"meta codec is malformed ({'; '.join(p for p in problems if p)})")
        return coder

    def ref_context(self) -> np.ndarray:
        """int [k]: the back/delta model each column uses."""
        return np.searchsorted(np.asarray(self.ref_slot_bounds), np.arange(self.k), side="right")

    @functools.cached_property
    def _ref_columns(self) -> list[slice]:
        """Per reference context, its columns (contiguous: the bounds increase)."""
        edges = [0, *(min(b, self.k) for b in self.ref_slot_bounds), self.k]
        return [slice(lo, max(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]

    @functools.cached_property
    def _ref_models(self):
        import constriction

        Categorical = constriction.stream.model.Categorical
        return ([Categorical(np.asarray(t, np.float64), perfect=False) for t in self.back_tables],
                [Categorical(np.asarray(t, np.float64), perfect=False) for t in self.delta_tables])

    # ---------------------------------------------------------------- coding
    def encode(self, response: np.ndarray, ids: np.ndarray, logprobs: np.ndarray,
               rest_codes: np.ndarray) -> bytes:
        import constriction

        Uniform = constriction.stream.model.Uniform
        length, k = ids.shape
        if length == 0:
            return b""
        ids, codes = self._best_first(ids, logprobs)
        enc = constriction.stream.queue.RangeEncoder()
        self._encode_ranks_and_gaps(enc, np.asarray(response, np.int64), ids, codes)
        back, earlier_rank = references(ids)
        back_models, delta_models = self._ref_models
        rows = np.broadcast_to(np.arange(length)[:, None], (length, k))
        refs = back > 0
        delta = earlier_rank - np.arange(k)
        for c, columns in enumerate(self._ref_columns):
            symbols = np.minimum(back[1:, columns], BACK_SYMBOLS).ravel()
            if symbols.size:
                enc.encode(symbols.astype(np.int32), back_models[c])
        far = (back >= BACK_SYMBOLS) & (rows > BACK_SYMBOLS)  # row B: b = B is the only choice
        if far.any():
            enc.encode((back[far] - BACK_SYMBOLS).astype(np.int32), Uniform(),
                       (rows[far] - BACK_SYMBOLS + 1).astype(np.int32))
        escape = 2 * DELTA_HALF_WIDTH + 1
        for c, columns in enumerate(self._ref_columns):
            sub = delta[:, columns][refs[:, columns]]
            if sub.size:
                symbols = np.where(np.abs(sub) <= DELTA_HALF_WIDTH, sub + DELTA_HALF_WIDTH, escape)
                enc.encode(symbols.astype(np.int32), delta_models[c])
        wide = refs & (np.abs(delta) > DELTA_HALF_WIDTH)
        if wide.any():
            enc.encode(earlier_rank[wide].astype(np.int32), Uniform(k))
        self._encode_ids(enc, ids[~refs], self._models[2])
        enc.encode(np.asarray(rest_codes, np.int32), Uniform(1 << self.rest_bits))
        return enc.get_compressed().astype("<u4").tobytes()

    def decode(self, data: bytes | memoryview, length: int):
        """(response int64 [T], ids int64 [T, k], logprobs float32 [T, k], rest codes int64 [T])."""
        import constriction

        Uniform = constriction.stream.model.Uniform
        if len(data) % 4:
            raise CodingError("coded block is not a whole number of 32-bit words")
        k = self.k
        if length == 0:
            empty = np.zeros((0, k), np.int64)
            return np.zeros(0, np.int64), empty, empty.astype(np.float32), np.zeros(0, np.int64)
        back_models, delta_models = self._ref_models
        try:
            dec = constriction.stream.queue.RangeDecoder(
                np.frombuffer(data, dtype="<u4").astype(np.uint32))
            ranks, absent_ids, gaps = self._decode_ranks_and_gaps(dec, length)
            rows = np.arange(length)[:, None]
            back = np.zeros((length, k), np.int64)
            for c, columns in enumerate(self._ref_columns):
                count = (length - 1) * (columns.stop - columns.start)
                if count:
                    back[1:, columns] = dec.decode(back_models[c], count).reshape(length - 1, -1)
            if length > BACK_SYMBOLS + 1:
                far = back[BACK_SYMBOLS + 1:] == BACK_SYMBOLS  # b >= B: the rest follows
                if far.any():
                    sizes = np.broadcast_to(rows[BACK_SYMBOLS + 1:] - BACK_SYMBOLS + 1, far.shape)
                    back[BACK_SYMBOLS + 1:][far] += dec.decode(Uniform(), sizes[far].astype(np.int32))
            if (back > rows).any():  # names more rows back than there are
                raise CodingError("a reference points before the record's first row")
            refs = back > 0
            delta = np.zeros((length, k), np.int64)
            escape = 2 * DELTA_HALF_WIDTH + 1
            for c, columns in enumerate(self._ref_columns):
                mask = refs[:, columns]
                count = int(mask.sum())
                if count:
                    delta[:, columns][mask] = dec.decode(delta_models[c], count)
            wide = refs & (delta == escape)
            earlier_rank = delta - DELTA_HALF_WIDTH + np.arange(k)
            if wide.any():
                if k < 2:  # the encoder never escapes a delta within a 1-wide row
                    raise CodingError("a reference names a rank outside the row")
                earlier_rank[wide] = dec.decode(Uniform(k), int(wide.sum()))
            if refs.any() and (earlier_rank[refs].min() < 0 or earlier_rank[refs].max() >= k):
                raise CodingError("a reference names a rank outside the row")
            new_ids = self._decode_ids(dec, int((~refs).sum()), self._models[2])
            rest = dec.decode(Uniform(1 << self.rest_bits), length).astype(np.int64)
            if not dec.maybe_exhausted():
                raise CodingError("coded block has data after its last symbol")
        except CodingError:
            raise
        except (ValueError, RuntimeError, AssertionError, IndexError, OverflowError) as err:
            raise CodingError(f"coded block does not decode ({err})") from None
        ids = resolve_references(back, earlier_rank, new_ids)
        return self._finish(ranks, absent_ids, gaps, ids, rest)


@functools.lru_cache(maxsize=16)
def _ref_codec(k, vocab_size, floor, rest_bits, step, slot_bounds, gap_tables, rank_table,
               alpha, offset, ref_slot_bounds, back_tables, delta_tables) -> RefTopKCodec:
    """One codec (and its built models) per distinct meta."""
    return RefTopKCodec(k, vocab_size, floor, rest_bits, step, slot_bounds, gap_tables, rank_table,
                        alpha, offset, ref_slot_bounds, back_tables, delta_tables)


def references(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(back, earlier rank), each int64 [T, k], of a record's rows (best first).

    back[t, j] > 0: ``ids[t, j]`` occurred in row t - back (its most recent earlier row, never
    row t itself) at rank ``earlier rank``; back 0: no earlier row holds it (earlier rank 0).
    """
    length, k = ids.shape
    _, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(length, k)
    last = np.full(int(inverse.max()) + 1 if inverse.size else 0, -1, np.int64)
    positions = np.arange(length * k, dtype=np.int64).reshape(length, k)
    back = np.zeros((length, k), np.int64)
    earlier = np.zeros((length, k), np.int64)
    for t in range(length):
        previous = last[inverse[t]]
        seen = previous >= 0
        back[t, seen] = t - previous[seen] // k
        earlier[t, seen] = previous[seen] % k
        last[inverse[t]] = positions[t]  # duplicates within a row: any of them will do
    return back, earlier


def resolve_references(back: np.ndarray, earlier_rank: np.ndarray, new_ids: np.ndarray) -> np.ndarray:
    """int64 [T, k] ids from references (back > 0) and the new ids (row-major, back == 0).

    Pointer doubling over flat entry indices: each reference points into an earlier row, so
    after ceil(log2 T) + 1 rounds every pointer ends on an entry coded as new.
    """
    length, k = back.shape
    flat = np.arange(length * k, dtype=np.int64)
    pointer = flat.copy()
    refs = back.ravel() > 0
    pointer[refs] = ((np.arange(length)[:, None] - back) * k + earlier_rank).ravel()[refs]
    for _ in range(max(1, math.ceil(math.log2(max(length, 1)))) + 1):
        pointer = pointer[pointer]
    values = np.zeros(length * k, np.int64)
    values[~refs] = new_ids
    return values[pointer].reshape(length, k)


def fit_ref_tables(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], vocab_size: int,
                   step: float, floor: float, slot_bounds=(1, 4, 16),
                   ref_slot_bounds=(1, 4, 16)) -> dict:
    """``range-ref-1`` models fitted on (response [T], ids [T, k], logprobs [T, k]) samples:
    ``fit_tables``' gap and rank tables, back and delta tables per reference context (counts +
    1/2), and the Zipf parameters of the ids coded as new."""
    base = fit_tables(rows, vocab_size, step, floor, slot_bounds)
    k = rows[0][1].shape[1]
    context = np.searchsorted(np.asarray(ref_slot_bounds), np.arange(k), side="right")
    contexts = len(ref_slot_bounds) + 1
    back_counts = np.zeros((contexts, BACK_SYMBOLS + 1))
    delta_counts = np.zeros((contexts, 2 * DELTA_HALF_WIDTH + 2))
    new = []
    for _response, ids, logprobs in rows:
        codes = np.rint(-np.clip(np.asarray(logprobs, np.float64), floor, 0.0) / step)
        ids = np.take_along_axis(np.asarray(ids, np.int64), np.argsort(codes, 1, kind="stable"), 1)
        back, earlier = references(ids)
        delta = earlier - np.arange(k)
        symbols = np.where(np.abs(delta) <= DELTA_HALF_WIDTH, delta + DELTA_HALF_WIDTH,
                           2 * DELTA_HALF_WIDTH + 1)
        for c in range(contexts):
            columns = context == c
            back_counts[c] += np.bincount(np.minimum(back[1:, columns], BACK_SYMBOLS).ravel(),
                                          minlength=BACK_SYMBOLS + 1)
            refs = back[:, columns] > 0
            delta_counts[c] += np.bincount(symbols[:, columns][refs],
                                           minlength=2 * DELTA_HALF_WIDTH + 2)
        new.append(ids[back == 0])
    new = np.concatenate(new)
    best = None
    classes, _low, widths = id_classes(new)
    for alpha in (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2):
        for offset in (10.0, 30.0, 100.0, 300.0, 1000.0):
            p = id_class_probabilities(vocab_size, alpha, offset)
            bits = -np.log2(p[classes]).sum() + widths.sum()
            if best is None or bits < best[0]:
                best = (bits, alpha, offset)
    return {"name": REF_CODEC_NAME, "logprob_step": step, "slot_bounds": list(slot_bounds),
            "gap_tables": base["gap_tables"], "rank_table": base["rank_table"],
            "ref_slot_bounds": list(ref_slot_bounds),
            "back_tables": [_scaled(c) for c in back_counts],
            "delta_tables": [_scaled(c) for c in delta_counts],
            "new_id_alpha": best[1], "new_id_offset": best[2]}


__all__ = ["DEFAULT_REF_CODEC", "DEFAULT_REF_CODEC_SMALL_K", "REF_CODEC_NAME", "default_topk_coding", "RefTopKCodec", "fit_ref_tables",
           "references", "resolve_references", "rank_in_row"]

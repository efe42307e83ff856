"""Ideal code lengths (bits per top-k entry) of ways to code a cache's ids and logprobs.

Used by ``bench_cache.py --ideas``. Each idea is measured as the empirical code length
-log2 p(symbol) under its model; a model with fitted tables is fitted on the even samples and
measured on the odd ones ("held out") unless the label says "in-sample". Nothing here is a
format: the shipped codecs are in teachers/cache/coding.py and refcoding.py.

Rows: list of dicts with ``ids`` int [T, k], ``logprobs`` float [T, k], ``response`` int [T],
as ``bench_cache.load_rows`` gives them.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from teachers.cache.coding import id_class_probabilities, id_classes
from teachers.cache.refcoding import BACK_SYMBOLS, DELTA_HALF_WIDTH, references

SLOT_BOUNDS = (1, 4, 16)
FLOOR = -40.0


def best_first(r: dict, step: float = 0.039) -> tuple[np.ndarray, np.ndarray]:
    """(ids, codes) [T, k] sorted by the rounded logprob, as the codecs store them."""
    codes = np.rint(-np.clip(r["logprobs"].astype(np.float64), FLOOR, 0) / step).astype(np.int64)
    order = np.argsort(codes, 1, kind="stable")
    return np.take_along_axis(r["ids"].astype(np.int64), order, 1), np.take_along_axis(codes, order, 1)


def conditional_bits(train: list[tuple], test: list[tuple], alphabet: int) -> float:
    """Total -log2 p(symbol | context) over ``test``; keys are (context..., symbol); p from
    ``train`` counts + 1/2 over an alphabet of ``alphabet`` symbols per context."""
    joint, marginal = Counter(train), Counter(key[:-1] for key in train)
    return sum(-math.log2((joint.get(key, 0) + 0.5) / (marginal.get(key[:-1], 0) + 0.5 * alphabet))
               for key in test)


def entropy_by_context(symbols: np.ndarray, contexts: np.ndarray) -> float:
    """In-sample total code length of ``symbols`` under one fitted table per context (bits)."""
    total = 0.0
    for context in np.unique(contexts):
        _, counts = np.unique(symbols[contexts == context], return_counts=True)
        total += float(-(counts * np.log2(counts / counts.sum())).sum())
    return total


def id_ideas(rows: list[dict], vocab: int, alpha: float, offset: float) -> list[tuple[str, float]]:
    k = rows[0]["ids"].shape[1]
    even, odd = rows[::2], rows[1::2]
    sorted_rows = [best_first(r)[0] for r in rows]
    ids = np.concatenate(sorted_rows)
    flat, entries = ids.ravel(), ids.size
    odd_ids = np.concatenate(sorted_rows[1::2])
    odd_entries = odd_ids.size
    classes_all, _low, widths_all = id_classes(np.arange(vocab))
    zipf = id_class_probabilities(vocab, alpha, offset)[classes_all] / (1 << widths_all)
    out = [("ids: fixed width ceil(log2 V) (version 2)", float(math.ceil(math.log2(vocab)))),
           ("ids: Zipf classes + uniform low bits (range-zipf-1)",
            float(-np.log2(zipf[flat]).mean()))]
    counts = np.bincount(np.concatenate([r["ids"] for r in even]).ravel(), minlength=vocab)
    unigram = (counts + 1e4 * zipf) / (counts.sum() + 1e4)
    out.append(("ids: unigram table of the cache (fit even, held out odd; + Zipf prior)",
                float(-np.log2(unigram[odd_ids.ravel()]).mean())))
    _, counts_in = np.unique(flat, return_counts=True)
    out.append(("ids: unigram table, in-sample (what a table could reach at best)",
                float(-(counts_in * np.log2(counts_in / counts_in.sum())).sum() / entries)))
    slot = np.searchsorted(SLOT_BOUNDS, np.arange(k), side="right")
    out.append(("ids: unigram table per rank context [0] [1,4) [4,16) [16,k), in-sample",
                entropy_by_context(flat, np.broadcast_to(slot, ids.shape).ravel()) / entries))
    # dictionary of the 2048 ids most frequent in the even samples (index by frequency), else
    # an escape and the Zipf model over the other ids: a table of ~4 KB in meta.json
    order = np.argsort(-counts, kind="stable")[:2048]
    order = order[counts[order] > 0]
    in_dict = np.zeros(vocab, bool)
    in_dict[order] = True
    p_dict = (counts[order].sum() + 0.5) / (counts.sum() + 1.0)
    table = np.zeros(vocab)
    table[order] = (counts[order] + 0.5) / (counts[order].sum() + 0.5 * order.size)
    rest = np.where(in_dict, 0.0, zipf)
    rest /= rest.sum()
    test = odd_ids.ravel()
    bits = np.where(in_dict[test], -np.log2(np.maximum(p_dict * table[test], 1e-300)),
                    -np.log2(np.maximum((1 - p_dict) * rest[test], 1e-300)))
    out.append(("ids: 2048-id dictionary of the cache + Zipf escape (fit even, held out odd)",
                float(bits.mean())))

    # in-record context: symbols per entry, row-major within each record
    def ref_symbols(subset):
        keys = []
        for r in subset:
            ids_r = best_first(r)[0]
            back, earlier = references(ids_r)
            for t in range(ids_r.shape[0]):
                for j in range(k):
                    keys.append((int(slot[j]), t, int(back[t, j]), int(earlier[t, j]) - j,
                                 int(ids_r[t, j])))
        return keys

    train, test = ref_symbols(even), ref_symbols(odd)

    def back_key(e):
        return (e[0], min(e[2], BACK_SYMBOLS))

    def delta_key(e):
        return (e[0], e[3] + DELTA_HALF_WIDTH if abs(e[3]) <= DELTA_HALF_WIDTH else 2 * DELTA_HALF_WIDTH + 1)

    back_bits = conditional_bits([back_key(e) for e in train if e[1] > 0],
                                 [back_key(e) for e in test if e[1] > 0], BACK_SYMBOLS + 1)
    back_bits += sum(math.log2(e[1] - BACK_SYMBOLS + 1) for e in test if e[2] >= BACK_SYMBOLS)
    delta_bits = conditional_bits([delta_key(e) for e in train if e[2]],
                                  [delta_key(e) for e in test if e[2]], 2 * DELTA_HALF_WIDTH + 2)
    delta_bits += math.log2(k) * sum(1 for e in test if e[2] and abs(e[3]) > DELTA_HALF_WIDTH)
    new = np.array([e[4] for e in test if not e[2]])
    refs = sum(1 for e in test if e[2])
    previous_row = sum(1 for e in test if e[2] == 1) / max(refs, 1)
    out.append((f"ids: fraction (not bits) of held-out entries whose id is in an earlier row of "
                f"the record ({previous_row:.0%} of them in the row just before)",
                refs / len(test)))
    for name, fallback in (("Zipf", zipf), ("the unigram table (fit even)", unigram)):
        new_bits = float(-np.log2(fallback[new]).sum())
        out.append((f"ids: back b + rank delta to the most recent earlier row holding the id, "
                    f"else {name} (range-ref-1's model; tables fit even, held out odd)",
                    (back_bits + delta_bits + new_bits) / odd_entries))
    out.append(("  of which: back symbols (incl. 0 = new)", back_bits / odd_entries))
    out.append(("  of which: rank deltas", delta_bits / odd_entries))
    out.append(("  of which: new ids under Zipf", float(-np.log2(zipf[new]).sum()) / odd_entries))
    # move-to-front list of the record's distinct ids for ids not in the previous row
    kinds, deltas, mtf_classes, mtf_widths, new_bits = [], [], [], [], 0.0
    for ids_r in sorted_rows:
        recent: list[int] = []
        for t, row in enumerate(ids_r):
            previous = {int(x): j for j, x in enumerate(ids_r[t - 1])} if t else {}
            for j, x in enumerate(int(v) for v in row):
                if x in previous:
                    kinds.append((slot[j], 0))
                    deltas.append((slot[j], previous[x] - j))
                elif x in recent:
                    kinds.append((slot[j], 1))
                    c, _, w = id_classes(np.array([recent.index(x)]))
                    mtf_classes.append(int(c[0]))
                    mtf_widths.append(int(w[0]))
                else:
                    kinds.append((slot[j], 2))
                    new_bits += float(-np.log2(zipf[x]))
            for x in (int(v) for v in row[::-1]):
                if x in recent:
                    recent.remove(x)
                recent.insert(0, x)
    kind = conditional_bits(kinds, kinds, 3)
    mtf_bits = conditional_bits([(c,) for c in mtf_classes], [(c,) for c in mtf_classes], 64) \
        + sum(mtf_widths)
    out.append(("ids: previous row (rank delta), else a move-to-front index over the record's "
                "ids, else Zipf; in-sample", (kind + conditional_bits(deltas, deltas, 2 * k) + mtf_bits
                                    + new_bits) / entries))
    # adaptive mixture: in-record counts + previous-row kernel + unigram (not one call per
    # stream: each symbol's model depends on the ids before it)
    mix = 0.0
    for ids_r in sorted_rows[1::2]:
        seen: defaultdict[int, float] = defaultdict(float)
        total = 0.0
        for t, row in enumerate(ids_r):
            previous = {int(x): j for j, x in enumerate(ids_r[t - 1])} if t else {}
            for j, x in enumerate(int(v) for v in row):
                p_prev = 0.5 ** (abs(previous[x] - j) / 4) / 8 if x in previous else 0.0
                p_rec = seen[x] / total if total else 0.0
                w_prev, w_rec = (0.1 if previous else 0.0), (0.3 if total else 0.0)
                mix += -math.log2(w_prev * p_prev + w_rec * p_rec
                                  + (1 - w_prev - w_rec) * unigram[x])
            for x in row:
                seen[int(x)] += 1.0
            total += k
    out.append(("ids: mixture of in-record counts, previous row and the unigram table "
                "(held out odd; symbol-by-symbol model)", mix / odd_entries))
    # sorting a row by id: the order of the entries must then be coded instead
    permutation = ties = 0.0
    for r in rows:
        codes = best_first(r)[1]
        for row in codes:
            _, m = np.unique(row, return_counts=True)
            ties += sum(math.lgamma(x + 1) for x in m) / math.log(2)
            permutation += math.lgamma(k + 1) / math.log(2)
    out.append(("ids sorted within a row: the row's order to code back (log2 k!/ties)",
                (permutation - ties) / entries))
    out.append(("ids of tied entries (equal codes) sorted: saving", ties / entries))
    return out


def logprob_ideas(rows: list[dict]) -> list[tuple[str, float]]:
    k = rows[0]["ids"].shape[1]
    lp = np.sort(np.concatenate([r["logprobs"] for r in rows]).astype(np.float64), 1)[:, ::-1]
    values = np.clip(lp, FLOOR, 0)
    entries = values.size
    slot = np.broadcast_to(np.searchsorted(SLOT_BOUNDS, np.arange(k), side="right"), values.shape)
    out = []
    for step in (0.02, 0.039, 0.06):
        codes = np.rint(-values / step).astype(np.int64)
        error = np.abs(-codes * step - values).mean()
        gaps = np.diff(codes, axis=1, prepend=0)
        out.append((f"logprobs: gaps at step {step} (mean error {error:.4f}), 4 slot contexts "
                    "(range-zipf-1 / range-ref-1), in-sample",
                    entropy_by_context(gaps.ravel(), slot.ravel()) / entries))
    step = 0.039
    codes = np.rint(-values / step).astype(np.int64)
    gaps = np.diff(codes, axis=1, prepend=0)
    column = np.minimum(np.arange(k), 8) + (np.arange(k) >= 16) * (1 + np.arange(k) // 16)
    out.append(("logprobs: step 0.039, columns 0-7 each their own context",
                entropy_by_context(gaps.ravel(), np.broadcast_to(column, gaps.shape).ravel())
                / entries))
    top = np.minimum(np.log2(1 + codes[:, :1]).astype(int), 7)
    out.append(("logprobs: step 0.039, slot x the row's top logprob (8 buckets)",
                entropy_by_context(gaps.ravel(), (slot * 10 + top).ravel()) / entries))
    previous = np.minimum(np.concatenate([np.zeros((len(gaps), 1), int), gaps[:, :-1]], 1), 6)
    previous[:, 1] = np.minimum(previous[:, 1] // 8, 6)
    out.append(("logprobs: step 0.039, slot x the previous gap of the row",
                entropy_by_context(gaps.ravel(), (slot * 10 + previous).ravel()) / entries))
    for head, tail in ((0.035, 0.042), (0.03, 0.045)):
        steps = np.where(np.arange(k) < 16, head, tail)
        reconstructed = np.zeros(len(values))
        symbols = np.zeros(values.shape, np.int64)
        errors = np.zeros(values.shape)
        for j in range(k):  # each value rounded relative to the previous reconstruction
            q = np.maximum(np.rint((reconstructed - values[:, j]) / steps[j]), 0).astype(np.int64)
            reconstructed = reconstructed - q * steps[j]
            symbols[:, j], errors[:, j] = q, np.abs(reconstructed - values[:, j])
        out.append((f"logprobs: step {head} in columns < 16, {tail} after (mean error "
                    f"{errors.mean():.4f}, max {errors.max():.4f})",
                    entropy_by_context(symbols.ravel(), slot.ravel()) / entries))
    # rate-distortion rounding: each value rounded up or down, whichever costs fewer bits +
    # lambda * error under the gap tables (refitted 3 times); the decoder is unchanged
    step, lam = 0.036, 100.0

    def rounded(tables):
        reconstructed = np.zeros(len(values))
        symbols = np.zeros(values.shape, np.int64)
        errors = np.zeros(values.shape)
        for j in range(k):
            x = (reconstructed - values[:, j]) / step
            low = np.maximum(np.floor(x), 0).astype(np.int64)
            if tables is None:
                q = np.maximum(np.rint(x), 0).astype(np.int64)
            else:
                t = tables[slot[0, j]]
                cost_low = t[np.minimum(low, 200)] + lam * np.abs(x - low) * step
                cost_high = t[np.minimum(low + 1, 200)] + lam * np.abs(x - low - 1) * step
                q = np.where(cost_low <= cost_high, low, low + 1)
            reconstructed = reconstructed - q * step
            symbols[:, j], errors[:, j] = q, np.abs(reconstructed - values[:, j])
        tables = []
        for c in range(len(SLOT_BOUNDS) + 1):
            n = np.bincount(np.minimum(symbols[slot == c], 200), minlength=201) + 0.5
            tables.append(-np.log2(n / n.sum()))
        return symbols, errors, tables

    symbols, errors, tables = rounded(None)
    for _ in range(3):
        symbols, errors, tables = rounded(tables)
    out.append((f"logprobs: step {step}, each value rounded to the cheaper neighbour (bits + "
                f"{lam:g} x error; mean error {errors.mean():.4f}, max {errors.max():.4f})",
                entropy_by_context(symbols.ravel(), slot.ravel()) / entries))
    return out

"""Which teacher row each student target row learns from, when the two tokenizers differ.

Why per group: after ``align_spans`` cuts both tokenisations of the response into groups that
cover the same characters, a group of one student token and one teacher token spelling the same
bytes is a position where both predict the same next text after the same prefix: the teacher's
top-k, carried into student ids by the exact string map (``VocabMap``), goes through the
ordinary KD loss, its unmapped mass in the tail ("map" rows). So is a group whose tokens pair
one to one with the same bytes (a character split into the same bytes on both sides): starting
at a common boundary, equal bytes keep every boundary in common. Any other group (one-to-many,
many-to-one) has no token-to-token correspondence: its rows are paired in order (student row
i of the group with teacher row i, as far as both have rows) and compared by ULD's sorted
probabilities, which need no shared vocabulary ("uld" rows). Student rows left without a
teacher row learn from CE alone ("none").

Modes (the recipe's ``loss.cross_tokenizer``): auto = map + uld as above; map = map rows only;
uld = every paired row by ULD, one-to-one groups included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distill.data.char_spans import Span, align_spans
from distill.data.vocab_map import VocabMap

CROSS_MODES = ("auto", "map", "uld")


@dataclass
class CrossRows:
    """Per student row [S]: ``mapped`` rows carry ``ids/logprobs/rest`` in student ids, ``uld``
    rows carry ``uld_ids/uld_logprobs/uld_rest`` in teacher ids (rows in student order)."""

    mapped: np.ndarray  # bool [S]
    ids: np.ndarray  # int64 [mapped rows, k], student ids
    logprobs: np.ndarray  # float32 [mapped rows, k]
    rest: np.ndarray  # float32 [mapped rows]
    uld: np.ndarray  # bool [S]
    uld_ids: np.ndarray  # int64 [uld rows, k], teacher ids
    uld_logprobs: np.ndarray
    uld_rest: np.ndarray

    @property
    def counts(self) -> tuple[int, int, int]:
        """(map rows, uld rows, rows without a teacher)."""
        n_map, n_uld = int(self.mapped.sum()), int(self.uld.sum())
        return n_map, n_uld, len(self.mapped) - n_map - n_uld


def pair_rows(student_spans: Sequence[Span], teacher_spans: Sequence[Span], mode: str,
              student_ids: Sequence[int], teacher_ids: Sequence[int], lookup: np.ndarray,
              ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(map pairs, uld pairs) of (student row, teacher row) for ``mode`` (see above).

    ``student_ids`` / ``teacher_ids``: the response tokens; ``lookup``: VocabMap.lookup.
    """
    if mode not in CROSS_MODES:
        raise ValueError(f"cross-tokenizer mode {mode!r}: expected one of {', '.join(CROSS_MODES)}")

    def same(s: int, t: int) -> bool:
        token = int(teacher_ids[t])
        return 0 <= token < len(lookup) and int(lookup[token]) == int(student_ids[s])

    mapped, uld = [], []
    for left, right in align_spans(student_spans, teacher_spans):
        one_to_one = (len(left) == len(right) > 0
                      and all(same(s, t) for s, t in zip(left, right, strict=True)))
        if one_to_one and mode != "uld":
            mapped += list(zip(left, right, strict=True))
        elif mode != "map":
            uld += list(zip(left, right, strict=False))
    return mapped, uld


def cross_rows(student_spans: Sequence[Span], teacher_spans: Sequence[Span],
               student_ids: Sequence[int], teacher_ids: Sequence[int],
               topk_ids: np.ndarray, topk_logprobs: np.ndarray,
               teacher_rest: np.ndarray | None, vocab_map: VocabMap, *, mode: str,
               floor: float) -> CrossRows:
    """The teacher's rows [T, k] (its own ids) placed on the student's rows (see above).

    ``student_ids`` [S] / ``teacher_ids`` [T]: the response tokens of each side.
    ``floor``: the log-prob a filler id gets in a mapped row (the cache codec's floor).
    """
    top_ids = np.asarray(topk_ids, dtype=np.int64)
    teacher_logprobs = np.asarray(topk_logprobs, dtype=np.float32)
    k = top_ids.shape[-1]
    if teacher_rest is None:
        with np.errstate(divide="ignore"):
            teacher_rest = np.log(np.clip(1 - np.exp(teacher_logprobs.astype(np.float64)).sum(-1),
                                          0.0, 1.0))
    teacher_rest = np.asarray(teacher_rest, dtype=np.float32)
    map_pairs, uld_pairs = pair_rows(student_spans, teacher_spans, mode, student_ids,
                                     teacher_ids, vocab_map.lookup)
    n = len(student_spans)
    mapped, uld = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    s_map = [s for s, _ in map_pairs]
    t_map = [t for _, t in map_pairs]
    mapped[s_map] = True
    ids, logprobs, rest = vocab_map.apply_rows(top_ids[t_map].reshape(-1, k),
                                               teacher_logprobs[t_map].reshape(-1, k),
                                               teacher_rest[t_map], floor)
    order = np.argsort(s_map, kind="stable")  # rows in student order, as the collator reads them
    t_uld = [t for _, t in sorted(uld_pairs)]
    uld[[s for s, _ in uld_pairs]] = True
    return CrossRows(
        mapped, ids[order], logprobs[order], rest[order], uld,
        top_ids[t_uld].reshape(-1, k), teacher_logprobs[t_uld].reshape(-1, k),
        teacher_rest[t_uld],
    )

"""The exact string map from a teacher's vocabulary to a student's, and its use on top-k rows.

Why exact: a teacher token can stand for a student token only when both spell the same bytes
(after reading the byte-level and SentencePiece space markers, ``char_spans.vocab_pieces``);
anything looser would teach the student a token the teacher did not mean. The teacher's end
token maps onto the student's end id (both spell nothing). Everything else the teacher keeps
in a row, unmapped, moves into the row's rest (the tail), so mass is conserved.

Used by the trainer for rows where one teacher token and one student token cover the same
characters (``align_spans``); the rows then go through the ordinary same-vocabulary KD loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.data.char_spans import vocab_pieces
from distill.data.targets import end_token_id


@dataclass(frozen=True)
class VocabMap:
    """``lookup[teacher id]`` = student id, or -1 where the teacher's token has no exact match.

    ``fillers``: student ids (specials first) that take a freed slot of a row, at the log-prob
    floor, so a row keeps its width k with distinct ids (as teachers/token_map.py does).
    """

    lookup: np.ndarray  # int64 [teacher vocab]
    student_vocab: int
    fillers: tuple[int, ...]

    @property
    def mapped(self) -> int:
        return int((self.lookup >= 0).sum())

    def is_identity(self) -> bool:
        return bool(np.array_equal(self.lookup, np.arange(len(self.lookup))))

    def apply_rows(self, ids: np.ndarray, logprobs: np.ndarray, rest: np.ndarray | None,
                   floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k rows [T, k] in teacher ids (+ rest log-mass [T]) -> the same in student ids.

        A mapped id's mass moves to its student id (merged when two teacher ids spell the same
        bytes); an unmapped id's mass joins the rest; freed slots hold fillers at ``floor``.
        Rows stay sorted best first. ``rest`` None: 1 - sum p of the row (an old cache).
        """
        ids = np.asarray(ids, dtype=np.int64)
        logprobs = np.asarray(logprobs, dtype=np.float64)
        if rest is None:
            with np.errstate(divide="ignore"):
                rest = np.log(np.clip(1 - np.exp(logprobs).sum(-1), 0.0, 1.0))
        rest = np.asarray(rest, dtype=np.float64)
        inside = (ids >= 0) & (ids < len(self.lookup))
        student = np.where(inside, self.lookup[np.where(inside, ids, 0)], -1)
        out_ids, out_lp, out_rest = student.copy(), logprobs.copy(), rest.copy()
        k = ids.shape[-1]
        for t in range(ids.shape[0]):
            row = student[t]
            if (row >= 0).all() and len(set(row.tolist())) == k:
                continue  # every id maps, none merges: the row as it is
            kept: dict[int, float] = {}
            lost = [rest[t]]
            for s, value in zip(row.tolist(), logprobs[t].tolist(), strict=True):
                if s < 0:
                    lost.append(value)
                else:
                    kept[s] = float(np.logaddexp(kept[s], value)) if s in kept else value
            spare = (f for f in (*self.fillers, *range(self.student_vocab)) if f not in kept)
            while len(kept) < k:
                kept[next(spare)] = floor
            order = sorted(kept.items(), key=lambda pair: -pair[1])
            out_ids[t] = [s for s, _ in order]
            out_lp[t] = [v for _, v in order]
            out_rest[t] = float(np.logaddexp.reduce(np.array(lost)))
        return out_ids, out_lp.astype(np.float32), out_rest.astype(np.float32)


def exact_string_map(teacher: Any, student: Any) -> VocabMap:
    """Map every teacher id whose bytes some student token spells exactly, every teacher
    special onto the student's special of the same name, and the teacher's end onto the
    student's end.

    When several student ids spell the same bytes (SentencePiece's ``<0x41>`` and ``A``), the
    lowest id that is not a byte-fallback entry wins (the one its tokenizer produces).
    """
    student_pieces = vocab_pieces(student)
    teacher_pieces = vocab_pieces(teacher)
    tokens = student.convert_ids_to_tokens(list(range(len(student_pieces))))
    by_bytes: dict[bytes, int] = {}
    for i in sorted(range(len(student_pieces)),
                    key=lambda i: (str(tokens[i]).startswith("<0x"), i)):
        piece = student_pieces[i]
        if piece:
            by_bytes.setdefault(piece, i)
    lookup = np.array([by_bytes.get(p, -1) if p else -1 for p in teacher_pieces], dtype=np.int64)
    # Specials spell no text: one maps onto the student's special of the same name, if any.
    student_specials = {str(tokens[i]): i for i, p in enumerate(student_pieces) if p is None}
    teacher_tokens = teacher.convert_ids_to_tokens(list(range(len(teacher_pieces))))
    for i, piece in enumerate(teacher_pieces):
        if piece is None and str(teacher_tokens[i]) in student_specials:
            lookup[i] = student_specials[str(teacher_tokens[i])]
    student_end = end_token_id(student)
    if teacher.eos_token_id is not None:
        lookup[int(teacher.eos_token_id)] = student_end
    specials = [i for i, p in enumerate(student_pieces) if p is None and i != student_end]
    return VocabMap(lookup, len(student_pieces), tuple(specials))

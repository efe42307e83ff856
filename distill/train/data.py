"""Training data: manifests -> audio -> augmentation -> prompt + target ids -> cached teacher rows.

Why keyed by (epoch, index): a sample's augmentation and instruction are drawn from its id and the
epoch, and the order from (seed, epoch), so a resumed run reads exactly the batches an
uninterrupted one would have, whatever the number of workers.

The teacher cache is joined by sample id; its mode is per task (cache meta). In score mode the
cached response ids must equal the student's tokenised target (else a clear error naming the
id). In generate mode the teacher's answer carries the KD rows, and ``teacher.generate_ce_target``
says what CE trains on: the teacher's answer (CE + KD on one sequence), the reference (a second
sequence of the same sample, CE only; the answer's rows KD only), or both. A sample without cached
targets is an error, or CE-only when the recipe allows it (counted).
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from distill.config import Recipe
from distill.data.audio import AudioLoader
from distill.data.augment import Augmenter
from distill.errors import DistillError
from distill.train.sampling import WeightedEpochSampler


class TrainingDataError(DistillError, ValueError):
    """A sample that cannot be trained on, named by id, with what was expected."""


@dataclass
class Example:
    sample_id: str
    waveform: torch.Tensor
    instruction: str
    target_ids: list[int]
    teacher_ids: np.ndarray | None = None  # [T, k] aligned with target_ids
    teacher_logprobs: np.ndarray | None = None
    teacher_rest: np.ndarray | None = None  # [T] log mass outside the top-k (None: old cache)
    ce: bool = True  # CE on these target rows (False: a generate-mode answer with CE elsewhere)
    # Cross-tokenizer caches (distill.data.cross_rows): teacher_ids/logprobs/rest hold only the
    # rows marked in ``teacher_rows`` (None: every row); ``uld_*`` the teacher's own rows for
    # the rows marked in ``uld_rows``, compared by ULD.
    teacher_rows: np.ndarray | None = None  # bool [T]
    uld_rows: np.ndarray | None = None  # bool [T]
    uld_ids: np.ndarray | None = None  # [uld rows, k], teacher ids
    uld_logprobs: np.ndarray | None = None
    uld_rest: np.ndarray | None = None


@dataclass
class Skipped:
    sample_id: str
    reason: str


@dataclass
class DataStats:
    """Counted in the main process from what the workers return."""

    examples: int = 0
    ce_only: int = 0
    skipped: Counter = field(default_factory=Counter)

    def state_dict(self) -> dict:  # for Accelerator.register_for_checkpointing
        return {"examples": self.examples, "ce_only": self.ce_only, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.examples, self.ce_only = state["examples"], state["ce_only"]
        self.skipped = Counter(state["skipped"])

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return f"{self.examples} examples ({self.ce_only} CE-only, no cached targets); skipped: {skipped}"


def _stable_index(*parts: object) -> int:
    key = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


class TrainingSet(Dataset):
    """Map-style dataset over several manifests; ``dataset[(epoch, index)]`` -> Example|Skipped."""

    cross: CrossTokenizer | None = None  # the join of a cache in the teacher's own tokens

    def __init__(self, recipe: Recipe, processor, *, split: str = "train", cache=None,
                 augment: bool | None = None, cross: CrossTokenizer | None = None):
        from distill.data.manifest import load_manifest

        specs = recipe.data.train if split == "train" else recipe.data.valid
        if not specs:
            raise TrainingDataError(f"recipe {recipe.name!r}: data.{split} names no manifests")
        self.recipe, self.processor, self.cache = recipe, processor, cache
        self.manifests = []
        for spec in specs:
            manifest = load_manifest(spec.path, check_audio=recipe.data.check_audio_files)
            if spec.tasks is not None:
                keep = set(spec.tasks)
                manifest = manifest.filter(lambda r, keep=keep: r["task"] in keep)
            if len(manifest) == 0:
                raise TrainingDataError(f"{spec.path}: no records for this run (tasks filter?)")
            self.manifests.append(manifest)
        self.weights = [s.weight for s in specs]
        self.offsets = np.cumsum([0] + [len(m) for m in self.manifests])
        self.loader = AudioLoader.from_config(recipe.data.audio)
        use_augment = recipe.data.augment.enabled if augment is None else augment
        self.augmenter = Augmenter.from_config(recipe.data.augment) if use_augment else None
        self.meta = cache.meta if cache is not None else None
        self.ce_target = recipe.teacher.generate_ce_target
        self.cross = cross
        if self.meta is not None and self.meta.teacher_tokens and cross is None:
            raise TrainingDataError(f"{cache.directory}: its rows are in the teacher's own "
                                    "tokens; the data join needs the cross-tokenizer map")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def sampler(self, seed: int) -> WeightedEpochSampler:
        return WeightedEpochSampler([len(m) for m in self.manifests], self.weights, seed)

    def record(self, index: int) -> dict:
        source = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.manifests[source][int(index - self.offsets[source])]

    def __getitem__(self, key: tuple[int, int]) -> Example | list[Example] | Skipped:
        epoch, index = key
        record = self.record(index)
        sample_id = record["id"]
        clip = self.loader.load(record["audio"])
        if clip is None:
            return Skipped(sample_id, "undecodable audio")
        waveform = clip.waveform
        if self.augmenter is not None:
            waveform, _ = self.augmenter(waveform, sample_id, epoch)
        instruction = self.processor.instruction_for(
            record, index=_stable_index("prompt", sample_id, epoch))
        return self._with_targets(record, Example(sample_id, waveform, instruction, []))

    def _with_targets(self, record: dict, example: Example) -> Example | list[Example]:
        encode = self.processor.encode_targets
        expected = encode([record["text"]], None)[0]
        if self.cache is None:
            example.target_ids = expected
            return example
        if record["id"] not in self.cache:
            if self.recipe.data.missing_targets == "ce_only":
                example.target_ids = expected
                return example
            raise TrainingDataError(
                f"sample {record['id']!r}: no teacher targets in {self.cache.directory} "
                "(run `distill generate-teacher`, or set data.missing_targets: ce_only)"
            )
        cached = self.cache.get(record["id"])
        if self.cross is not None:
            return self._with_cross_targets(record, example, cached, expected)
        response = encode(None, [cached.response_ids.tolist()])[0]
        score = self.meta.mode_for(record["task"]) == "score"
        if score and response != expected:
            raise TrainingDataError(
                f"sample {record['id']!r}: cached response ids differ from the student's "
                f"tokenised target ({len(response)} vs {len(expected)} ids, first difference at "
                f"position {_first_difference(response, expected)}); the cache was made with "
                "another tokenizer or target text: regenerate it"
            )
        example.target_ids = response
        example.teacher_ids = cached.topk_ids[: len(response)]
        example.teacher_logprobs = cached.topk_logprobs[: len(response)]
        if cached.rest_logprobs is not None:
            example.teacher_rest = cached.rest_logprobs[: len(response)]
        if score or self.ce_target == "teacher_answer":
            return example
        example.ce = self.ce_target == "both"
        reference = Example(example.sample_id, example.waveform, example.instruction, expected)
        return [example, reference]


    def _with_cross_targets(self, record: dict, example: Example, cached,
                            expected: list[int]) -> Example | list[Example]:
        """A cache in the teacher's tokens: the student's tokens of the same text, aligned by
        character spans (distill.data.cross_rows). Score mode: the text is the reference; generate
        mode: the teacher's answer, re-tokenised by the student."""
        from distill.data.char_spans import SpanError, spans_in_text
        from distill.data.cross_rows import cross_rows

        score = self.meta.mode_for(record["task"]) == "score"
        text = record["text"] if score else cached.text
        if score and cached.text != record["text"]:
            raise TrainingDataError(
                f"sample {record['id']!r}: the cache scored another text than the manifest's "
                "(the manifest changed since generate-teacher): regenerate the cache")
        target = expected if score else self.processor.encode_targets([text], None)[0]
        example.target_ids = target
        cross = self.cross
        try:
            spans = spans_in_text([cross.student_pieces[i] for i in target], text,
                                  prefix=True)  # the target may be cut at max_text_length
        except SpanError:  # the student cannot spell the text (normalisation): CE only
            spans = None
        if spans is not None:
            rows = cross_rows(spans, cached.spans.tolist(), target, cached.response_ids,
                              cached.topk_ids, cached.topk_logprobs, cached.rest_logprobs,
                              cross.vocab_map, mode=cross.mode, floor=self.meta.logprob_floor)
            example.teacher_rows, example.teacher_ids = rows.mapped, rows.ids
            example.teacher_logprobs, example.teacher_rest = rows.logprobs, rows.rest
            example.uld_rows, example.uld_ids = rows.uld, rows.uld_ids
            example.uld_logprobs, example.uld_rest = rows.uld_logprobs, rows.uld_rest
        if score or self.ce_target == "teacher_answer":
            return example
        example.ce = self.ce_target == "both"
        reference = Example(example.sample_id, example.waveform, example.instruction, expected)
        return [example, reference]


@dataclass
class CrossTokenizer:
    """What the data join needs for a cache in the teacher's own tokens (picklable: it goes to
    the DataLoader workers): the mode, the exact string map, the student's token bytes."""

    mode: str  # auto | map | uld (distill.data.cross_rows)
    vocab_map: object  # distill.data.vocab_map.VocabMap
    student_pieces: list


class EpochSampler(Sampler):
    """Yields (epoch, index) keys from global position ``start`` on, epoch after epoch (forever).

    The key stream is one sequence across epochs; with several processes, rank r takes keys
    r, r + world, r + 2 world, ... of it, so ranks never share a sample and after each rank read
    n keys exactly n * world of the stream were consumed (``start`` stays a global position).
    """

    def __init__(self, order: WeightedEpochSampler, epoch: int = 0, start: int = 0,
                 rank: int = 0, world: int = 1):
        self.order, self.epoch, self.start = order, epoch, start
        self.rank, self.world = rank, world

    def _stream(self):
        epoch, start = self.epoch, self.start
        while True:
            for index in self.order.iterate(epoch, start):
                yield (epoch, index)
            epoch, start = epoch + 1, 0

    def __iter__(self):
        for position, key in enumerate(self._stream()):
            if position % self.world == self.rank:
                yield key


@dataclass
class Batch:
    """A collated micro-batch: the processor's tensors plus the teacher rows per target token."""

    inputs: dict[str, torch.Tensor]
    sample_ids: list[str]
    teacher_ids: torch.Tensor | None  # [rows with a teacher, k]
    teacher_logprobs: torch.Tensor | None
    teacher_rest: torch.Tensor | None  # [rows with a teacher] or None (a version-1 cache)
    has_teacher: torch.Tensor  # [total target tokens] bool, in label order
    has_ce: torch.Tensor  # [total target tokens] bool: rows CE trains on
    num_target_tokens: int
    num_with_teacher: int  # examples that had cached targets
    skipped: list[Skipped]
    num_read: int  # keys consumed from the sampler (skipped ones included)
    # Cross-tokenizer rows compared by ULD (teacher ids); None when no example has any.
    has_uld: torch.Tensor | None = None  # [total target tokens] bool
    uld_ids: torch.Tensor | None = None  # [uld rows, k]
    uld_logprobs: torch.Tensor | None = None
    uld_rest: torch.Tensor | None = None
    # Samples drawn: a generate-mode reference pair is one, the same clip drawn twice is two.
    num_samples: int = 0


class Collator:
    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items: list[Example | list[Example] | Skipped]) -> Batch:
        flat = [x for item in items for x in (item if isinstance(item, list) else [item])]
        examples = [x for x in flat if isinstance(x, Example)]
        skipped = [x for x in flat if isinstance(x, Skipped)]
        if not examples:
            empty = torch.zeros(0, dtype=torch.bool)
            return Batch({}, [], None, None, None, empty, empty, 0, 0, skipped, len(items))
        inputs = self.processor([e.waveform for e in examples], [e.instruction for e in examples],
                                target_ids=[e.target_ids for e in examples])
        has_teacher = torch.cat([_rows(e, e.teacher_ids is not None, e.teacher_rows)
                                 for e in examples])
        has_ce = torch.cat([torch.full((len(e.target_ids),), e.ce) for e in examples])
        with_teacher = [e for e in examples if e.teacher_ids is not None]
        ids = logprobs = rest = None
        if with_teacher:
            ids = torch.from_numpy(np.concatenate([e.teacher_ids for e in with_teacher]))
            logprobs = torch.from_numpy(np.concatenate([e.teacher_logprobs for e in with_teacher]))
            if all(e.teacher_rest is not None for e in with_teacher):  # one cache: all or none
                rest = torch.from_numpy(np.concatenate([e.teacher_rest for e in with_teacher]))
        batch = Batch(inputs, [e.sample_id for e in examples], ids, logprobs, rest, has_teacher,
                      has_ce, int(has_teacher.numel()), len(with_teacher), skipped, len(items),
                      num_samples=len(items) - len(skipped))
        with_uld = [e for e in examples if e.uld_rows is not None]
        if with_uld:
            batch.has_uld = torch.cat([_rows(e, False, e.uld_rows) for e in examples])
            batch.uld_ids = torch.from_numpy(np.concatenate([e.uld_ids for e in with_uld]))
            batch.uld_logprobs = torch.from_numpy(np.concatenate([e.uld_logprobs for e in with_uld]))
            batch.uld_rest = torch.from_numpy(np.concatenate([e.uld_rest for e in with_uld]))
        return batch


def _rows(example: Example, every: bool, marked: np.ndarray | None) -> torch.Tensor:
    """bool [T]: the rows ``marked``, else all (``every``) or none."""
    if marked is not None:
        return torch.from_numpy(np.asarray(marked, dtype=bool))
    return torch.full((len(example.target_ids),), every)


def open_teacher_cache(recipe: Recipe, tokenizer):
    """The recipe's soft-target cache, checked against the student's tokenizer (or None).

    A cache in the teacher's own tokens (meta ``teacher_tokens``) is checked against the
    teacher's tokenizer instead: the student re-tokenises its texts (``cross_tokenizer``)."""
    if recipe.data.soft_targets is None:
        return None
    from teachers.cache import open_cache
    from teachers.fingerprint import fingerprint

    directory = Path(recipe.data.soft_targets)
    if not directory.is_dir():
        raise TrainingDataError(
            f"data.soft_targets: {directory} does not exist (run `distill generate-teacher` "
            "first, or remove data.soft_targets to train with CE only)"
        )
    cache = open_cache(directory)
    if cache.meta.teacher_tokens:
        if recipe.loss.cross_tokenizer == "off":
            raise TrainingDataError(
                f"{directory}: its rows are in the teacher's own tokens (a teacher with another "
                "tokenizer), and loss.cross_tokenizer is off: set it to auto, map or uld")
        return cache
    ours = fingerprint(tokenizer).digest
    if cache.meta.target_tokenizer_fingerprint != ours:
        raise TrainingDataError(
            f"{directory}: its targets were tokenised by another tokenizer (fingerprint "
            f"{cache.meta.target_tokenizer_fingerprint[:12]}, the student's is {ours[:12]})"
        )
    return cache


def cross_tokenizer(recipe: Recipe, cache, student_tokenizer, log=None) -> CrossTokenizer | None:
    """The cross-tokenizer join for a teacher-token cache (None for a cache in student ids).

    Loads the teacher's tokenizer (the recipe's ``teacher``), checks it is the one that made the
    cache, and builds the exact string map; says which relation and which path it chose.
    """
    if cache is None or not cache.meta.teacher_tokens:
        return None
    from distill.data.char_spans import SpanError, vocab_pieces
    from distill.data.vocab_map import exact_string_map
    from teachers.fingerprint import fingerprint, relation
    from teachers.generate import teacher_tokenizer

    teacher_tok = teacher_tokenizer(recipe.teacher)
    digest = fingerprint(teacher_tok).digest
    if digest != cache.meta.tokenizer_fingerprint:
        raise TrainingDataError(
            f"{cache.directory}: made with a teacher tokenizer of fingerprint "
            f"{cache.meta.tokenizer_fingerprint[:12]}, the recipe's teacher "
            f"{recipe.teacher.model!r} has {digest[:12]}")
    try:
        vocab_map = exact_string_map(teacher_tok, student_tokenizer)
        pieces = vocab_pieces(student_tokenizer)
    except SpanError as err:
        raise TrainingDataError(f"{cache.directory}: {err}") from None
    found = relation(fingerprint(teacher_tok), fingerprint(student_tokenizer))
    mode = recipe.loss.cross_tokenizer
    print(f"teacher and student tokenizers: {found.value}; "
          f"cache in the teacher's tokens: cross-tokenizer path {mode!r} "
          f"({vocab_map.mapped} of {len(vocab_map.lookup)} teacher ids map exactly)",
          file=log or sys.stderr)
    return CrossTokenizer(mode, vocab_map, pieces)

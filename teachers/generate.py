"""``generate-teacher``: every manifest sample through the teacher, into the soft-target cache.

Order of checks, cheapest first, so a wrong setting fails in seconds and writes nothing: prompt
templates for every task, tokenizer compatibility (teacher vs student ids), the cache's meta,
then the teacher itself (connect, or start a server). Only then is the cache writer opened.
A rerun skips the ids already stored, so an interrupted job simply runs again. Jobs on one cache
folder take turns (its lock, ``cache_lock``): a second job waits, then does only what the first
left, so no id is computed or stored twice.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.char_spans import SpanError, char_spans, spans_in_text, vocab_pieces
from distill.data.tokenizers import load_tokenizer
from distill.errors import DistillError
from teachers.backends.base import (
    GenerationSettings,
    TeacherBackend,
    TeacherRequest,
    TeacherResult,
)
from teachers.cache.format import CachedSample, CacheMeta, rest_from_topk
from teachers.cache.reader import open_cache, read_meta
from teachers.cache.writer import META_NAME, CacheWriter, cache_lock, in_folder_format
from teachers.fingerprint import Relation, check_compatible, fingerprint
from teachers.prompts import (
    check_templates,
    closes_reasoning,
    prompt_ids,
    split_rationale,
    template_hash,
)
from teachers.token_map import TokenMap, TokenMapError, plan


@dataclass
class JobSummary:
    cache_dir: str
    records: int = 0
    already_cached: int = 0
    written: int = 0
    tokens: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted

    def lines(self) -> list[str]:
        rate = self.tokens / self.seconds if self.seconds else 0.0
        out = [
            f"cache      {self.cache_dir}",
            f"samples    {self.records} in the manifests, {self.already_cached} already cached, "
            f"{self.written} written, {len(self.failures)} failed",
            f"tokens     {self.tokens} in {self.seconds:.1f} s ({rate:.1f} tokens/s)",
        ]
        reasons = Counter(self.failures.values())
        for reason, count in reasons.most_common(10):
            ids = [i for i, r in self.failures.items() if r == reason][:3]
            out.append(f"failed     {count} x {reason} (e.g. {', '.join(ids)})")
        if self.interrupted:
            out.append("interrupted: the samples written so far are kept; rerun to continue")
        return out


# ------------------------------------------------------------------------------ inputs
def teacher_tokenizer(teacher):
    if teacher.tokenizer:
        return load_tokenizer(teacher.tokenizer, revision=teacher.revision)
    return load_tokenizer(teacher.model, revision=teacher.revision, gguf_file=teacher.gguf_file)


def student_tokenizer(recipe):
    llm = recipe.model.llm
    return load_tokenizer(llm.name_or_path, revision=llm.revision, gguf_file=llm.gguf_file)


def collect_records(recipe, limit: int | None = None) -> list[dict]:
    """Train then valid manifest records (task filters applied), each id once, first ``limit``."""
    import datasets

    from distill.data.manifest import load_manifest

    records, seen = [], set()
    quiet = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # our own bar is the one to watch
    try:
        for spec in [*recipe.data.train, *recipe.data.valid]:
            for record in load_manifest(spec.path, check_audio=False):  # the teacher reads text
                if spec.tasks and record["task"] not in spec.tasks:
                    continue
                if record["id"] in seen:
                    continue
                seen.add(record["id"])
                records.append(dict(record))
                if limit is not None and len(records) >= limit:
                    return records
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    return records


class TeacherModelError(DistillError, ValueError):
    """The teacher model named by the recipe cannot be read (config, tokenizer)."""


def teacher_vocab_size(teacher, tokenizer) -> int:
    """The model's output width (it may exceed the tokenizer's length), for the id bit width.

    Not guessed when the config cannot be read: it goes into the cache's meta, and a value that
    depended on what was reachable would make a rerun elsewhere refuse its own cache."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"revision": teacher.revision}
    if teacher.gguf_file:
        kwargs["gguf_file"] = teacher.gguf_file
    try:
        config = AutoConfig.from_pretrained(teacher.model, **kwargs)
    except (OSError, ValueError) as err:
        raise TeacherModelError(
            f"teacher.model: cannot read the config of {teacher.model!r}: {err}"
        ) from None
    config = getattr(config, "text_config", None) or config
    return max(len(tokenizer), int(getattr(config, "vocab_size", 0) or 0))


def stop_ids(teacher, tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(teacher.model, revision=teacher.revision).eos_token_id
        ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
    except Exception:  # noqa: BLE001 - no generation config: the tokenizer's EOS only
        pass
    return sorted({int(i) for i in ids})


def build_token_map(teacher, teacher_tok, student_tok, relation: Relation, vocab: int) -> TokenMap:
    """Identity for the same vocabulary; else the teacher's ends mapped, its own specials folded."""
    from distill.data.targets import end_token_id

    end = end_token_id(student_tok)
    if relation is Relation.SAME:
        return TokenMap(len(student_tok), end)
    return plan(teacher_tok, student_tok, end, extra_end_ids=stop_ids(teacher, teacher_tok),
                teacher_vocab=vocab)


def build_meta(recipe, teacher_tok, student_tok, vocab_size: int,
               token_map: TokenMap | None = None, teacher_tokens: bool = False) -> CacheMeta:
    """``teacher_tokens``: a cross-tokenizer cache (rows in the teacher's own tokens, which
    also tokenised the score-mode targets, so its fingerprint is the target tokenizer's)."""
    teacher = recipe.teacher
    modes = {teacher.mode, *teacher.task_modes.values()}
    generate = "generate" in modes
    closed = "score" in modes and closes_reasoning(teacher_tok, teacher.reasoning)
    return CacheMeta(
        teacher=teacher.model if not teacher.gguf_file else f"{teacher.model}/{teacher.gguf_file}",
        teacher_revision=teacher.revision,
        tokenizer_fingerprint=fingerprint(teacher_tok).digest,
        target_tokenizer_fingerprint=fingerprint(teacher_tok if teacher_tokens
                                                 else student_tok).digest,
        mode=teacher.mode,
        k=teacher.top_k,
        logprob_mode=teacher.logprob_mode,
        temperature=float(teacher.temperature),
        prompt_template_hash=template_hash(
            teacher.prompts, getattr(teacher_tok, "chat_template", None), closed
        ),
        vocab_size=vocab_size,
        max_new_tokens=teacher.max_new_tokens if generate else None,
        rationale_as_target=bool(teacher.rationale_as_target) if generate else False,
        token_map=token_map.meta() if token_map is not None else {},
        task_modes=dict(sorted(teacher.task_modes.items())),
        teacher_tokens=teacher_tokens,
    )


# --------------------------------------------------------------------------------- job
class Job:
    """One generate-teacher run; ``run()`` returns a JobSummary."""

    def __init__(
        self,
        recipe,
        endpoints: list[str] | None = None,
        limit: int | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        backend: TeacherBackend | None = None,
        log=sys.stderr,
    ):
        self.recipe = recipe
        self.teacher = recipe.teacher
        self.endpoints = list(endpoints or self.teacher.endpoints)
        self.limit = limit
        self.cache_dir = Path(cache_dir or self.teacher.cache_dir)
        self.progress = progress
        self.backend = backend
        self.log = log
        self.summary = JobSummary(str(self.cache_dir))

    # -- checks that need no teacher
    def prepare(self) -> list[dict]:
        from distill.data.targets import encode_target

        self.encode_target = encode_target
        records = collect_records(self.recipe, self.limit)
        self.summary.records = len(records)
        tasks = {r["task"] for r in records}
        check_templates(self.teacher.prompts, tasks)
        unused = sorted(set(self.teacher.task_modes) - tasks)
        if unused and records:
            self.summary.notes.append(
                f"teacher.task_modes names task(s) {', '.join(unused)} that no manifest record "
                f"has (tasks here: {', '.join(sorted(tasks))})"
            )
        self.teacher_tok = teacher_tokenizer(self.teacher)
        self.student_tok = student_tokenizer(self.recipe)
        compatibility = check_compatible(
            self.teacher_tok, self.student_tok, self.recipe.loss.cross_tokenizer
        )
        self.summary.notes += [compatibility.choice, *compatibility.notes]
        vocab = teacher_vocab_size(self.teacher, self.teacher_tok)
        # Different vocabularies: the teacher's own tokens, with the bytes each one spells.
        self.cross = compatibility.relation is Relation.DIFFERENT
        self.teacher_pieces = vocab_pieces(self.teacher_tok) if self.cross else None
        self.token_map = None
        if not self.cross:
            self.token_map = build_token_map(self.teacher, self.teacher_tok, self.student_tok,
                                             compatibility.relation, vocab)
            self.summary.notes += self.token_map.describe()
        self.meta = build_meta(self.recipe, self.teacher_tok, self.student_tok, vocab,
                               self.token_map, teacher_tokens=self.cross)
        self.records = records
        return self._still_to_do(records)

    def _still_to_do(self, records: list[dict]) -> list[dict]:
        """The records whose ids the cache does not hold yet (the meta must match this run)."""
        stored: set[str] = set()
        if (self.cache_dir / META_NAME).exists():
            self.meta = in_folder_format(self.cache_dir, read_meta(self.cache_dir), self.meta)
            with open_cache(self.cache_dir) as cache:
                stored = cache.ids()
        todo = [r for r in records if r["id"] not in stored]
        self.summary.already_cached = len(records) - len(todo)
        return todo

    def run(self) -> JobSummary:
        todo = self.prepare()  # every check first, without waiting for another job's lock
        if not todo:
            return self.summary
        with cache_lock(self.cache_dir, log=self.log):
            todo = self._still_to_do(self.records)  # another job may have stored some since
            if todo:
                self._run_locked(todo)
        return self.summary

    def _run_locked(self, todo: list[dict]) -> None:
        started = time.monotonic()
        try:
            if self.backend is None and self.teacher.backend == "vllm_server" and not self.endpoints:
                from teachers.server import VLLMServer

                print("no teacher.endpoints given: starting a vLLM server", file=self.log)
                with VLLMServer(self.teacher, port=0) as server:
                    print(f"vLLM server ready at {server.endpoint} (log: {server.log_path})",
                          file=self.log)
                    self.endpoints = [server.endpoint]
                    asyncio.run(self._run_async(todo))
            else:
                asyncio.run(self._run_async(todo))
        except KeyboardInterrupt:
            self.summary.interrupted = True
        finally:
            self.summary.seconds = time.monotonic() - started

    # -- the loop
    async def _run_async(self, todo: list[dict]) -> None:
        from teachers.backends import make_backend

        backend = self.backend or make_backend(self.teacher, self.endpoints)
        try:
            await backend.start()  # TeacherUnavailable here: nothing has been written
            settings = None
            if self.meta.max_new_tokens is not None:  # some task generates
                settings = GenerationSettings(
                    max_new_tokens=self.teacher.max_new_tokens,
                    temperature=self.teacher.temperature,
                    stop_ids=stop_ids(self.teacher, self.teacher_tok),
                )
            by_id = {r["id"]: r for r in todo}
            requests = self._requests(todo, backend.max_model_len)
            bar = self._bar(len(todo))
            began = time.monotonic()
            with CacheWriter(self.cache_dir, self.meta, shard_size=self.teacher.shard_size) as writer:
                async for result in backend.run(requests, self.teacher.top_k, settings):
                    self._store(writer, result, by_id[result.sample_id])
                    bar.update(1)
                    rate = self.summary.tokens / max(time.monotonic() - began, 1e-9)
                    bar.set_postfix_str(f"{rate:.0f} tok/s, {len(self.summary.failures)} failed")
            bar.close()
        finally:
            await backend.aclose()

    def _requests(self, todo: list[dict], max_len: int | None) -> Iterator[TeacherRequest]:
        for record in todo:
            sample_id = record["id"]
            scoring = self.meta.mode_for(record["task"]) == "score"
            try:
                reasoning = self.teacher.reasoning if scoring else "none"  # generate: it thinks
                prompt = prompt_ids(self.teacher_tok, record, self.teacher.prompts, reasoning)
            except Exception as err:  # noqa: BLE001 - a bad record is a failure, not a crash
                self.summary.failures[sample_id] = f"prompt: {err}"
                continue
            response = None
            if scoring:
                if not record.get("text"):
                    self.summary.failures[sample_id] = "no target text to score"
                    continue
                response = (self.encode_target(self.teacher_tok, record["text"]) if self.cross
                            else self._teacher_side(self.encode_target(self.student_tok,
                                                                       record["text"])))
            # A score request asks for max_tokens=1, which vLLM counts against max_model_len too.
            length = len(prompt) + (len(response) + 1 if response else self.teacher.max_new_tokens)
            if max_len and length > max_len:
                self.summary.failures[sample_id] = f"longer than the teacher's max_model_len ({max_len})"
                continue
            yield TeacherRequest(sample_id, prompt, response)

    def _teacher_side(self, target: list[int]) -> list[int]:
        """The student's target as the teacher is fed it: its last id (the student's end, which
        the teacher may lack) becomes the teacher's own end. No scored row sees that input."""
        end = self.teacher_tok.eos_token_id
        if self.token_map.identity or end is None or target[-1] != self.token_map.student_end:
            return target
        return [*target[:-1], int(end)]

    def _rows(self, ids, logprobs) -> tuple:
        """Teacher rows -> (ids, logprobs, rest) in student ids; rest from the unrounded values."""
        rest = rest_from_topk(logprobs)
        if self.token_map is None:  # cross-tokenizer: the teacher's own ids
            return np.asarray(ids), np.asarray(logprobs, dtype=np.float32), rest
        return self.token_map.apply_rows(ids, logprobs, rest, self.meta.logprob_floor)

    def _pieces(self, ids) -> list[bytes | None]:
        pieces = self.teacher_pieces
        return [pieces[i] if 0 <= i < len(pieces) else None for i in map(int, ids)]

    def _store(self, writer: CacheWriter, result: TeacherResult, record: dict) -> None:
        if not result.ok:
            self.summary.failures[result.sample_id] = result.error
            return
        try:
            sample = self._sample(result, record)
            writer.add(result.sample_id, sample)
        except (ValueError, TokenMapError, SpanError) as err:
            self.summary.failures[result.sample_id] = str(err)
            return
        self.summary.written += 1
        self.summary.tokens += len(sample.response_ids)

    def _sample(self, result: TeacherResult, record: dict) -> CachedSample:
        if self.cross:
            return self._cross_sample(result, record)
        if self.meta.mode_for(record["task"]) == "score":
            target = self.encode_target(self.student_tok, record["text"])
            ids, logprobs, rest = self._scored_rows(result, target)
            return CachedSample(target, ids, logprobs, None, record.get("text"), rest)
        ids, start, rationale = self._answer(result)
        if start >= len(ids):
            raise ValueError("the teacher's answer is empty")
        answer = ids[start:]
        text = self.teacher_tok.decode(answer, skip_special_tokens=True).strip()
        if not text:  # e.g. "</think>" then only the end token
            raise ValueError("the teacher's answer is empty")
        response = self.token_map.map_response(result.response_ids[start:])
        ids, logprobs, rest = self._rows(result.topk_ids[start:], result.topk_logprobs[start:])
        return CachedSample(response, ids, logprobs, rationale, text, rest)

    def _scored_rows(self, result: TeacherResult, target: list[int]):
        """Score mode: the teacher's rows over ``target``, one per target token, or ValueError."""
        if len(target) != len(result.response_ids):
            raise ValueError(f"{len(result.response_ids)} scored rows for {len(target)} targets")
        return self._rows(result.topk_ids, result.topk_logprobs)

    def _answer(self, result: TeacherResult) -> tuple[list[int], int, str | None]:
        """Generate mode: (the teacher's ids, where its answer starts, its rationale or None);
        ValueError when it stopped at max_new_tokens."""
        if result.finish_reason == "length":
            raise ValueError(f"the teacher stopped at max_new_tokens ({self.teacher.max_new_tokens})")
        ids = [int(i) for i in result.response_ids]
        start, rationale = split_rationale(self.teacher_tok, ids)
        return ids, 0 if self.teacher.rationale_as_target else start, rationale

    def _cross_sample(self, result: TeacherResult, record: dict) -> CachedSample:
        """The teacher's own tokens of the response, with the character span of each in the
        stored text (score: the reference; generate: the teacher's answer, which the student
        re-tokenises when it trains)."""
        if self.meta.mode_for(record["task"]) == "score":
            text = record["text"]
            target = self.encode_target(self.teacher_tok, text)
            ids, logprobs, rest = self._scored_rows(result, target)
            spans = spans_in_text(self._pieces(target), text)
            return CachedSample(np.array(target), ids, logprobs, None, text, rest,
                                np.array(spans))
        response, start, rationale = self._answer(result)
        answer = response[start:]
        text = char_spans(self._pieces(answer))[0].strip() if answer else ""
        if not text:
            raise ValueError("the teacher's answer is empty")
        spans = spans_in_text(self._pieces(answer), text)
        ids, logprobs, rest = self._rows(result.topk_ids[start:], result.topk_logprobs[start:])
        return CachedSample(np.array(answer), ids, logprobs, rationale, text, rest,
                            np.array(spans))

    def _bar(self, total: int):
        from tqdm import tqdm

        return tqdm(
            total=total, unit="sample", desc="teacher", file=self.log, dynamic_ncols=True,
            disable=not self.progress, mininterval=0.5,
        )

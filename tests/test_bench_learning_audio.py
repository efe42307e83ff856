"""benchmarks/learning_audio.py: the teacher-signal diagnostics on a tiny hand-built cache,
against values computed by hand from the probabilities written; the arm comparison."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from teachers.cache import CachedSample, CacheMeta, CacheWriter, open_cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(benchmark_module):
    return benchmark_module("learning_audio")


def sample(targets, ids, probs, rests) -> CachedSample:
    return CachedSample(np.array(targets, dtype=np.int64), np.array(ids, dtype=np.int64),
                        np.log(np.array(probs, dtype=np.float32)), None, "text",
                        np.log(np.array(rests, dtype=np.float32)))


def entropy(probs, temperature=1.0):
    weights = [p ** (1 / temperature) for p in probs]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights)


def test_teacher_signal_on_a_hand_built_cache(bench, tmp_path):
    meta = CacheMeta(teacher="t", teacher_revision=None, tokenizer_fingerprint="fp",
                     target_tokenizer_fingerprint="fp", mode="score", k=3,
                     logprob_mode="raw_logprobs", temperature=1.0, prompt_template_hash="h",
                     vocab_size=16)
    rows_a = [[0.7, 0.2, 0.05], [0.5, 0.3, 0.1]]
    with CacheWriter(tmp_path, meta) as writer:
        # asr: target 5 is the top-1 of row 0; target 9 is third in row 1
        writer.add("a", sample([5, 9], [[5, 3, 7], [2, 5, 9]], rows_a, [0.05, 0.1]))
        # audiocaption: target 4 is outside the top-3; the rest (0.05) bounds its probability
        writer.add("b", sample([4], [[1, 2, 3]], [[0.6, 0.3, 0.05]], [0.05]))
    records = [("a", "asr"), ("b", "audiocaption"), ("c", "audiocaption")]  # c: not cached
    with open_cache(tmp_path) as cache:
        tol = cache.meta.max_logprob_error + 1e-3
        signal = bench.teacher_signal(cache, records, temperature=2.0)

    asr, aac = signal["asr"], signal["audiocaption"]
    assert (asr["samples"], asr["rows"], asr["missing"]) == (1, 2, 0)
    assert asr["target"] == "reference"
    assert asr["in_topk"] == 1.0 and asr["top1_is_target"] == 0.5
    assert asr["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2, abs=tol)
    assert asr["top1_prob"] == pytest.approx((0.7 + 0.5) / 2, abs=tol)
    assert asr["entropy"] == pytest.approx(sum(map(entropy, rows_a)) / 2, abs=tol)
    assert asr["entropy_at_t"] == pytest.approx(
        sum(entropy(r, 2.0) for r in rows_a) / 2, abs=tol)
    assert asr["rest_mass"] == pytest.approx((0.05 + 0.1) / 2, abs=1e-3)
    first, middle, end = (asr["positions"][p] for p in ("first", "middle", "end"))
    assert (first["rows"], middle["rows"], end["rows"]) == (1, 0, 1)
    assert first["top1_is_target"] == 1.0 and end["top1_is_target"] == 0.0
    assert first["nll"] == pytest.approx(-math.log(0.7), abs=tol)
    assert end["nll"] == pytest.approx(-math.log(0.1), abs=tol)
    assert asr["disagreements"] == [["end", 9, 2, 1]]  # target 9, the teacher's top-1 is 2

    assert (aac["samples"], aac["rows"], aac["missing"]) == (1, 1, 1)
    assert aac["in_topk"] == 0.0 and aac["top1_is_target"] == 0.0
    assert aac["nll"] == pytest.approx(-math.log(0.05), abs=tol)  # the bound: min(p_k, rest)
    assert aac["top1_prob"] == pytest.approx(0.6, abs=tol)
    assert aac["positions"]["end"]["rows"] == 1  # a one-row answer: its row is the end token
    assert aac["disagreements"] == [["end", 4, 1, 1]]


def test_the_ce_plus_kd_optimum_per_position(bench, tmp_path):
    meta = CacheMeta(teacher="t", teacher_revision=None, tokenizer_fingerprint="fp",
                     target_tokenizer_fingerprint="fp", mode="score", k=3,
                     logprob_mode="raw_logprobs", temperature=1.0, prompt_template_hash="h",
                     vocab_size=16)
    with CacheWriter(tmp_path, meta) as writer:
        writer.add("a", sample([5, 9], [[5, 3, 7], [2, 5, 9]],
                               [[0.7, 0.2, 0.05], [0.5, 0.3, 0.1]], [0.05, 0.1]))
    with open_cache(tmp_path) as cache:
        tol = cache.meta.max_logprob_error + 1e-3
        even = bench.teacher_signal(cache, [("a", "asr")], weights=(1.0, 1.0))["asr"]
        heavy = bench.teacher_signal(cache, [("a", "asr")], weights=(1.0, 4.0))["asr"]
    first, end = even["positions"]["first"], even["positions"]["end"]
    # q(target) = (1 + p) / 2: 0.85 on the first row, 0.55 on the end row
    assert first["optimum_nll"] == pytest.approx(-math.log(0.85), abs=tol)
    assert end["optimum_nll"] == pytest.approx(-math.log(0.55), abs=tol)
    # kd 1: 0.5 (teacher's top-1) < 1 + 0.1: the target stays the most likely; kd 4: 2.0 > 1.4
    assert end["optimum_flips"] == 0.0 and heavy["positions"]["end"]["optimum_flips"] == 1.0
    assert heavy["positions"]["end"]["optimum_nll"] == pytest.approx(-math.log(1.4 / 5), abs=tol)
    assert heavy["positions"]["first"]["optimum_flips"] == 0.0  # the target is the top-1
    assert even["optimum_nll"] == pytest.approx(-(math.log(0.85) + math.log(0.55)) / 2, abs=tol)


def test_compare_arms_names_the_first_difference(bench):
    compare = bench.compare_arms
    step = {"step": 1, "samples": [["x", "y"]], "inputs": "d1", "rng": "r1"}
    kd = {"init_digest": "w", "steps": [step, {**step, "step": 2}]}
    assert compare({"kd": kd, "ce": kd}) == ""
    ce = {"init_digest": "w", "steps": [step, {**step, "step": 2, "samples": [["y", "x"]]}]}
    assert compare({"kd": kd, "ce": ce}).startswith("step 2: samples differ")
    assert "initial trainable weights" in compare({"kd": kd, "ce": {**kd, "init_digest": "v"}})


def test_arm_recipes_differ_only_in_the_kd_weight(bench, tmp_path):
    from distill.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    args = bench.parse_args(["--kd-weight", "0.5", "--temperature", "2"])
    kd, ce = (bench.arm_recipe(recipe, arm, args, 60, tmp_path) for arm in ("kd", "ce"))
    assert (kd.loss.kd_weight, ce.loss.kd_weight) == (0.5, 0.0)
    assert kd.loss.temperature == ce.loss.temperature == 2.0
    assert (kd.train.output_dir, ce.train.output_dir) == (str(tmp_path / "kd"), str(tmp_path / "ce"))
    assert kd.train.max_steps == 60 and not kd.data.valid and not kd.train.report_to
    same = {"loss", "train"}
    assert kd.model_dump(exclude=same) == ce.model_dump(exclude=same)
    assert kd.train.model_dump(exclude={"output_dir"}) == ce.train.model_dump(exclude={"output_dir"})
    assert recipe.train.output_dir == "runs/demo/student"  # the recipe itself is untouched
    with pytest.raises(bench.BenchError, match="llm_start_step"):  # the demo's is 20
        bench.arm_recipe(recipe, "kd", args, 12, tmp_path)
    assert bench._steps(bench.parse_args(["--steps", "90"]), recipe) == (90, [30, 60, 90])
    assert bench._steps(bench.parse_args(["--eval-at", "0,50"]), recipe) == (50, [0, 50])

"""The trainer on tiny models: loss falls, accumulation = big batch, KD weight 0 = CE, clipping
fires on a spike only, SIGKILL + resume follows the uninterrupted loss curve step for step.

The teacher cache is written with the real cache writer; its top-k comes from a tiny random
LLaMA teacher's real logits over the student's target ids (no vLLM needed for the trainer).
"""

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from distill.config import Recipe
from distill.train.loop import LOG_FILE, Trainer

pytestmark = pytest.mark.slow

TEXTS = ["hello world", "a dog barks", "rain on the roof", "good morning", "the cat sat",
         "birds sing", "a car passes", "open the door"]
K = 4


def build_cache(directory: Path, records: list[dict], tokenizer, teacher_dir: Path,
                mode: str = "score", answers: dict[str, str] | None = None) -> None:
    """Score mode: rows over each record's target. ``mode="generate"``: over ``answers[id]``
    (stands in for the teacher's own answer: the rows are the teacher's on that text)."""
    from transformers import AutoModelForCausalLM

    from distill.data.targets import encode_target
    from teachers.cache import CachedSample, CacheMeta, CacheWriter
    from teachers.fingerprint import fingerprint

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    digest = fingerprint(tokenizer).digest
    meta = CacheMeta(teacher=str(teacher_dir), teacher_revision=None, tokenizer_fingerprint=digest,
                     target_tokenizer_fingerprint=digest, mode=mode, k=K,
                     logprob_mode="raw_logprobs", temperature=1.0, prompt_template_hash="test",
                     vocab_size=len(tokenizer))
    with CacheWriter(directory, meta) as writer:
        for record in records:
            text = (answers or {}).get(record["id"], record["text"])
            target = encode_target(tokenizer, text)
            prompt = tokenizer("Transcript: " + record["text"])["input_ids"]
            ids = torch.tensor([prompt + target])
            with torch.no_grad():
                logp = teacher(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
            top = logp.topk(K, dim=-1)
            writer.add(record["id"], CachedSample(np.array(target), top.indices.numpy(),
                                                  top.values.numpy(), None, text))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_cfg, tokenizer, tiny_llm_dir):
    root = tmp_path_factory.mktemp("train")
    generator = torch.Generator().manual_seed(0)
    records = []
    for i, text in enumerate(TEXTS):
        wave = 0.1 * torch.randn(int(1.2 * 16000), generator=generator)
        sf.write(root / f"clip{i}.wav", wave.numpy(), 16000)
        records.append({"id": f"s{i}", "audio": f"clip{i}.wav", "task": "asr", "text": text})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    build_cache(root / "cache", records, tokenizer, tiny_llm_dir)
    return root, make_cfg(beats=False)


def make_recipe(workspace, out: Path, **train) -> Recipe:
    root, model_cfg = workspace
    return Recipe.model_validate({
        "name": "tiny",
        "model": model_cfg.model_dump(mode="json"),
        "data": {
            "train": [{"path": str(root / "train.jsonl")}],
            "valid": [{"path": str(root / "valid.jsonl")}],
            "augment": {"enabled": False},
            "soft_targets": str(root / "cache"),
            "num_workers": 0,
        },
        "loss": {"chunk_size": 16},
        "train": {
            "output_dir": str(out), "max_steps": 6, "batch_size": 4, "precision": "fp32",
            "optimizer": {"lr": 5e-3, "min_lr": 5e-3, "warmup_start_lr": 5e-3},
            "schedule": {"kind": "constant", "warmup_steps": 0},
            "clip": {"mode": "none"}, "eval_every_steps": 1000,
            "checkpoint": {"every_steps": 1000, "keep_last": 2}, "evaluate_when_done": False,
            **train,
        },
    })


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


def test_loss_falls(workspace, tmp_path):
    trainer = Trainer(make_recipe(workspace, tmp_path, max_steps=12, batch_size=8))
    trainer.train()
    losses = [row["loss"] for row in read_log(tmp_path)]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    assert {"ce", "kd", "grad_norm", "lr", "tokens_per_s"} <= set(read_log(tmp_path)[0])
    # the checkpoint's model card names the run: data sizes, steps, the cache it learned from
    import hashlib

    card = (trainer.checkpoints.latest() / "student" / "README.md").read_text()
    root, _ = workspace
    assert f"| train | `{root / 'train.jsonl'}` | 8 |" in card
    assert f"| valid | `{root / 'valid.jsonl'}` | 2 |" in card
    assert "12 optimizer steps, 96 examples seen" in card
    assert hashlib.sha256((root / "cache" / "meta.json").read_bytes()).hexdigest() in card
    assert "name: tiny" in card  # the recipe, inlined


@pytest.mark.parametrize("best_metric", ["valid_loss", "token_accuracy"])
def test_best_is_the_checkpoint_with_the_best_named_validation_value(workspace, tmp_path,
                                                                     best_metric):
    from distill.config import VALIDATION_METRICS

    recipe = make_recipe(workspace, tmp_path, max_steps=4, batch_size=4, eval_every_steps=1,
                         checkpoint={"every_steps": 1, "keep_last": 4, "best_metric": best_metric})
    Trainer(recipe).train()
    log = read_log(tmp_path)
    assert set(VALIDATION_METRICS) <= set(log[0])  # the names the recipe offers are logged
    pick = max if VALIDATION_METRICS[best_metric] else min
    best = pick(row[best_metric] for row in log)
    best_step = next(row["step"] for row in log if row[best_metric] == best)  # first of ties
    assert (tmp_path / "best").resolve().name == f"step-{best_step:08d}"


def trainable(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.student.named_parameters() if p.requires_grad}


def capture_gradients(trainer) -> dict[str, torch.Tensor]:
    """Record the gradients the optimizer is about to apply (after accumulation and clipping)."""
    grads: dict[str, torch.Tensor] = {}
    original = trainer.optimizer.step

    def step(*args, **kwargs):
        grads.update({n: p.grad.detach().clone() for n, p in trainer.student.named_parameters()
                      if p.grad is not None})
        return original(*args, **kwargs)

    trainer.optimizer.step = step
    return grads


def fresh_accelerate_state() -> None:
    """accelerate keeps process-wide singletons (accumulation steps among them); two trainers in
    one test process need them reset, as two real runs would be two processes."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_accumulation_equals_the_big_batch(workspace, tmp_path):
    # Compared on gradients: Adam's first step divides by |g|, which would amplify float noise.
    runs = {}
    for name, batch_size, accumulation in (("big", 4, 1), ("small", 2, 2)):
        fresh_accelerate_state()
        torch.manual_seed(0)
        trainer = Trainer(make_recipe(workspace, tmp_path / name, max_steps=1,
                                      batch_size=batch_size, grad_accumulation=accumulation))
        start = trainable(trainer)
        grads = capture_gradients(trainer)
        trainer.train()
        runs[name] = (start, grads)
    (big_start, big_grads), (small_start, small_grads) = runs["big"], runs["small"]
    assert all(torch.equal(big_start[n], p) for n, p in small_start.items())
    assert big_grads and set(big_grads) == set(small_grads)
    scale = max(float(g.abs().max()) for g in big_grads.values())
    for name, grad in big_grads.items():
        torch.testing.assert_close(small_grads[name], grad, rtol=1e-4, atol=1e-6 * scale)
    assert read_log(tmp_path / "big")[0]["loss"] == pytest.approx(
        read_log(tmp_path / "small")[0]["loss"], rel=1e-5)


def test_padding_free_with_the_encoder_memo_trains_as_the_padded_batch(workspace, tmp_path):
    """Three steps of 4 over 8 clips: the third sees clips again, so the memo answers it (and
    the final validation, whose 2 clips are training clips). The losses follow the padded
    run's, and the saved student carries no memo."""
    logs, hits = {}, {}
    for name, extra in (("padded", {}), ("free", {"padding_free": True, "encoder_memo_mb": 16})):
        fresh_accelerate_state()
        torch.manual_seed(0)
        trainer = Trainer(make_recipe(workspace, tmp_path / name, max_steps=3, **extra))
        best = trainer.train()
        logs[name] = [row["loss"] for row in read_log(tmp_path / name)]
        memo = trainer.accelerator.unwrap_model(trainer.student).speech_memo
        hits[name] = None if memo is None else memo.hits
    assert logs["free"] == pytest.approx(logs["padded"], rel=1e-4)
    assert hits == {"padded": None, "free": 4 + 2}  # step 3, then the 2 validation clips
    assert "memo" not in (best / "student" / "student_config.json").read_text()


def test_kd_weight_zero_is_plain_cross_entropy(workspace, tmp_path):
    recipe = make_recipe(workspace, tmp_path)
    recipe.loss.kd_weight = 0.0
    trainer = Trainer(recipe)
    batch, _, _ = next(trainer._micro_batches())
    with torch.no_grad():
        counts = {"ce": float(batch.num_target_tokens), "kd": float(batch.has_teacher.sum())}
        loss, _ = trainer._step_loss(batch, counts)
        out = trainer.student(batch.inputs, return_logits=True)
        rows = out.labels != -100
        expected = torch.nn.functional.cross_entropy(out.logits[rows].double(),
                                                     out.labels[rows])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


class SpikeTrainer(Trainer):
    """Multiplies the loss by 1000 at one step: a gradient spike a real run could see."""

    spike_step = 9

    def _step_loss(self, batch, num_items):
        loss, parts = super()._step_loss(batch, num_items)
        return (loss * 1000.0 if self.progress.step == self.spike_step else loss), parts


def test_zclip_fires_on_an_injected_spike_and_not_otherwise(workspace, tmp_path):
    recipe = make_recipe(workspace, tmp_path, max_steps=12,
                         clip={"mode": "zclip", "zclip_warmup_steps": 4, "max_norm": 1e6},
                         optimizer={"lr": 1e-4, "min_lr": 1e-4, "warmup_start_lr": 1e-4})
    SpikeTrainer(recipe).train()
    log = read_log(tmp_path)
    clipped = [row["step"] for row in log if row["clipped"]]
    assert clipped == [SpikeTrainer.spike_step + 1]  # logged after the step counter moved
    spike = log[SpikeTrainer.spike_step]
    assert spike["grad_norm"] > 100 * log[SpikeTrainer.spike_step - 1]["grad_norm"]
    assert spike["clip_threshold"] < spike["grad_norm"] / 100


def run_cli(recipe_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "train-student", str(recipe_path), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def test_sigkill_and_resume_follow_the_uninterrupted_loss_curve(workspace, tmp_path):
    steps = 8
    recipes = {}
    for name in ("straight", "killed"):
        recipe = make_recipe(workspace, tmp_path / name, max_steps=steps, batch_size=2,
                             checkpoint={"every_steps": 3, "keep_last": 2},
                             clip={"mode": "zclip", "zclip_warmup_steps": 2})
        recipe.data.augment.enabled = True  # augmentation must replay exactly too
        recipe.model.llm.lora.dropout = 0.1  # and dropout (RNG state restored)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
        recipes[name] = path
    straight = run_cli(recipes["straight"], "--no-eval")
    assert straight.wait(timeout=900) == 0, straight.stdout.read()

    killed = run_cli(recipes["killed"], "--no-eval")
    marker = tmp_path / "killed" / "checkpoints" / "step-00000003"
    deadline = time.monotonic() + 900
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), killed.stdout.read() if killed.poll() is not None else "timed out"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = run_cli(recipes["killed"], "--no-eval", "--resume")
    output = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, output
    assert "resumed at step" in output

    expected = read_log(tmp_path / "straight")
    got = read_log(tmp_path / "killed")
    assert [row["step"] for row in got] == list(range(1, steps + 1))
    for want, have in zip(expected, got, strict=True):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-9), have["step"]
        assert have["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-6)


ROOT = Path(__file__).resolve().parents[2]


def test_zero2_through_accelerate_on_cpu_matches_the_plain_first_step(workspace, tmp_path):
    """accelerate launch + DeepSpeed ZeRO-2 (installed with DS_BUILD_OPS=0, CPU accelerator):
    steps run, dynamic clipping is applied by the ZeRO optimizer, and the first step's loss and
    gradient norm equal those of the same step without DeepSpeed."""
    pytest.importorskip("deepspeed")
    runs = {}
    for name in ("plain", "zero2"):
        recipe = make_recipe(workspace, tmp_path / name, max_steps=3, batch_size=2,
                             grad_accumulation=2,
                             clip={"mode": "zclip", "zclip_warmup_steps": 1, "max_norm": 1e6})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
        runs[name] = path
    config = tmp_path / "accelerate_zero2.yaml"
    config.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": str(ROOT / "recipes/deepspeed/zero2.json"),
                             "zero3_init_flag": False},
        "num_machines": 1, "num_processes": 1, "machine_rank": 0, "use_cpu": True,
    }))
    plain = run_cli(runs["plain"], "--no-eval")
    assert plain.wait(timeout=900) == 0, plain.stdout.read()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu"}
    zero2 = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
         "-m", "distill.cli", "train-student", str(runs["zero2"]), "--no-eval"],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )
    assert zero2.returncode == 0, zero2.stdout[-3000:] + zero2.stderr[-3000:]
    assert "DeepSpeed" in zero2.stdout + zero2.stderr
    got, want = read_log(tmp_path / "zero2"), read_log(tmp_path / "plain")
    assert [row["step"] for row in got] == [1, 2, 3]
    assert got[0]["loss"] == pytest.approx(want[0]["loss"], rel=1e-5)
    assert got[0]["grad_norm"] == pytest.approx(want[0]["grad_norm"], rel=1e-4)
    assert all(math.isfinite(row["loss"]) for row in got)
    assert got[-1]["clip_threshold"] is not None  # ZClip past warm-up set a threshold


def launch_zero2(config_dir: Path, recipe_path: Path, processes: int,
                 *extra: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` of train-student under DeepSpeed ZeRO-2 on the CPU (gloo)."""
    config = config_dir / f"accelerate_zero2_{processes}.yaml"
    config.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": str(ROOT / "recipes/deepspeed/zero2.json"),
                             "zero3_init_flag": False},
        "num_machines": 1, "num_processes": processes, "machine_rank": 0, "use_cpu": True,
        "main_process_port": 29500 + os.getpid() % 1000,
    }))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
         "-m", "distill.cli", "train-student", str(recipe_path), "--no-eval", *extra],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )


def test_resume_under_two_process_zero2_follows_the_uninterrupted_run(workspace, tmp_path):
    """Two processes, DeepSpeed ZeRO-2 (optimizer state partitioned per rank): a run stopped
    after step 2 and resumed with --resume logs the same losses and gradient norms for steps 3
    and 4 as the run that never stopped; each rank's partition and RNG state come back."""
    pytest.importorskip("deepspeed")
    recipes = {}
    for name, steps in (("straight", 4), ("stopped", 2), ("resumed", 4)):
        out = "stopped" if name != "straight" else "straight"
        recipe = make_recipe(workspace, tmp_path / out, max_steps=steps, batch_size=1,
                             checkpoint={"every_steps": 2, "keep_last": 2},
                             clip={"mode": "zclip", "zclip_warmup_steps": 1, "max_norm": 1e6})
        recipe.data.augment.enabled = True  # each rank's augmentation RNG must come back
        recipe.model.llm.lora.dropout = 0.1  # and its dropout RNG
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
        recipes[name] = path
    for name, extra in (("straight", ()), ("stopped", ()), ("resumed", ("--resume",))):
        run = launch_zero2(tmp_path, recipes[name], 2, *extra)
        assert run.returncode == 0, name + run.stdout[-3000:] + run.stderr[-3000:]
    assert "resumed at step 2" in run.stdout
    checkpoint = tmp_path / "stopped" / "checkpoints" / "step-00000002"
    assert (checkpoint / "random_states_1.pkl").is_file()  # the second rank's RNG state
    assert len(list(checkpoint.rglob("zero_pp_rank_1_*optim_states.pt"))) == 1  # its partition

    want, got = read_log(tmp_path / "straight"), read_log(tmp_path / "stopped")
    assert [row["step"] for row in got] == [1, 2, 3, 4]
    for expected, have in zip(want, got, strict=True):
        assert have["loss"] == pytest.approx(expected["loss"], rel=1e-6), have["step"]
        assert have["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5), have["step"]


def test_a_cap_that_clips_most_steps_is_warned_about_in_the_log(workspace, tmp_path, capsys):
    from distill.train.clipping import CapWatch

    recipe = make_recipe(workspace, tmp_path, max_steps=6,
                         clip={"mode": "zclip", "zclip_warmup_steps": 2, "max_norm": 1e-6})
    trainer = Trainer(recipe)
    trainer.cap_watch = CapWatch(1e-6, "zclip", window=4)  # the default window is 20 steps
    trainer.train()
    log = read_log(tmp_path)
    assert all(row["clipped"] and row["clip_threshold"] == 1e-6 for row in log)
    warned = [row["step"] for row in log if "warning" in row]
    assert warned == [4]  # once, when the first window of 4 steps was full
    assert "train.clip.max_norm=1e-06 clipped 4 of the last 4" in log[3]["warning"]
    assert "warning: train.clip.max_norm" in capsys.readouterr().err


def test_validation_logs_how_much_the_answers_depend_on_the_audio_and_warns_when_little(
        workspace, tmp_path, capsys):
    from distill.train.listening import ListeningWatch

    recipe = make_recipe(workspace, tmp_path, max_steps=4, eval_every_steps=2)
    trainer = Trainer(recipe)
    trainer.listening_watch = ListeningWatch(after=3, threshold=1e9)  # always "too little"
    trainer.train()
    log = read_log(tmp_path)
    assert [row["step"] for row in log if "audio_gain" in row] == [2, 4]
    assert [row["step"] for row in log if "warning" in row] == [4]  # not before step 3
    assert "hardly depend on its audio" in log[3]["warning"]
    assert "warning: the student's answers hardly depend" in capsys.readouterr().err
    # by hand: CE with the batch neighbour's audio minus CE with the clip's own, per token
    student = trainer.accelerator.unwrap_model(trainer.student).eval()
    keys = [(0, i) for i in range(len(trainer.valid_set))]
    own = other = tokens = 0.0
    for batch in trainer._loader(trainer.valid_set, keys, 0):
        inputs = batch.inputs
        with torch.no_grad():
            out = student(inputs, return_logits=True)
            audio = out.audio_embeds
            swapped = student(inputs, return_logits=True,
                              audio_embeds=torch.cat([audio[-1:], audio[:-1]]))
        rows = out.labels != -100
        labels = out.labels[rows]
        own += float(torch.nn.functional.cross_entropy(out.logits[rows], labels, reduction="sum"))
        other += float(torch.nn.functional.cross_entropy(swapped.logits[rows], labels,
                                                         reduction="sum"))
        tokens += labels.numel()
    assert log[3]["audio_gain"] == pytest.approx((other - own) / tokens, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------ normalisation of each term
def test_moe_balance_loss_counts_once_per_step_whatever_the_accumulation(workspace, tmp_path,
                                                                         make_cfg):
    """With CE and KD weighted 0 the step's gradient is the balance loss's alone; over N
    micro-batches it must be their mean (a big batch's weight), not their sum (N times it)."""
    root, _ = workspace
    moe = {"enabled": True, "num_experts": 4, "top_k": 2, "gate_noise": False,
           "balance_weight": 0.5}
    fresh_accelerate_state()
    torch.manual_seed(0)
    recipe = make_recipe((root, make_cfg(beats=False, moe=moe)), tmp_path, max_steps=1,
                         batch_size=2, grad_accumulation=2)
    recipe.loss.ce_weight, recipe.loss.kd_weight = 0.0, 0.0
    trainer = Trainer(recipe)
    trainer.student.train()
    params = {n: p for n, p in trainer.student.named_parameters() if p.requires_grad}
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    batches = trainer._micro_batches()
    for _ in range(2):  # the step's micro-batches, by hand: mean of the balance gradients
        batch, _, _ = next(batches)
        balance = trainer.student(batch.inputs).balance_loss
        for name, grad in zip(params, torch.autograd.grad(balance, list(params.values()),
                                                          allow_unused=True), strict=True):
            if grad is not None:
                expected[name] += grad / 2
    got = capture_gradients(trainer)
    trainer.train()
    gates = [n for n in expected if ".gate." in n and float(expected[n].abs().max()) > 0]
    assert gates, "no gate parameter received a balance gradient"
    for name in gates:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-9)
    fresh_accelerate_state()


def test_a_clip_drawn_twice_in_one_batch_counts_twice(workspace, tmp_path):
    """A manifest weighted 4 draws each clip four times an epoch, so one batch can hold the same
    clip twice: both are examples, and both have their teacher (none is CE-only)."""
    recipe = make_recipe(workspace, tmp_path, max_steps=3, batch_size=8)
    recipe.data.train[0].weight = 4.0
    fresh_accelerate_state()
    drawn = [batch.sample_ids for batch, _, _ in
             itertools.islice(Trainer(recipe)._micro_batches(), 3)]
    assert any(len(set(ids)) < len(ids) for ids in drawn)  # the case this test is about
    fresh_accelerate_state()
    trainer = Trainer(recipe)
    trainer.train()
    assert (trainer.stats.examples, trainer.stats.ce_only) == (24, 0)


def test_kd_is_the_mean_over_teacher_rows_when_some_samples_are_ce_only(workspace, tmp_path,
                                                                       tokenizer, tiny_llm_dir):
    """Half the samples have no cached targets (CE-only). KD must be the mean divergence over
    the rows that have a teacher, CE the mean over every target row (loop.py's rule), checked
    against a float64 forward KL with the bucket tail written out by hand."""
    root, model_cfg = workspace
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    build_cache(tmp_path / "half", records[::2], tokenizer, tiny_llm_dir)
    recipe = make_recipe(workspace, tmp_path / "out", max_steps=1, batch_size=8)
    recipe.data.soft_targets = str(tmp_path / "half")
    recipe.data.missing_targets = "ce_only"
    fresh_accelerate_state()
    trainer = Trainer(recipe)
    batch, _, _ = next(trainer._micro_batches())
    assert 0 < batch.num_with_teacher < len(batch.sample_ids)
    with torch.no_grad():
        out = trainer.student(batch.inputs, return_logits=True)
    rows = out.labels != -100
    logits, labels = out.logits[rows].double(), out.labels[rows]
    q = logits.softmax(-1)[batch.has_teacher]
    ids = batch.teacher_ids
    p = torch.cat([batch.teacher_logprobs.double().exp(), batch.teacher_rest.double().exp()[:, None]],
                  -1)
    q_kept = q.gather(-1, ids)
    q = torch.cat([q_kept, (1 - q_kept.sum(-1, keepdim=True))], -1)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    expected_kd = float((p * (p / q).log()).sum(-1).mean())
    expected_ce = float(torch.nn.functional.cross_entropy(logits, labels))
    trainer.train()
    log = read_log(tmp_path / "out")[0]
    assert log["kd"] == pytest.approx(expected_kd, rel=1e-4)
    assert log["ce"] + log["ce_only"] == pytest.approx(expected_ce, rel=1e-4)


def test_report_to_tensorboard_and_wandb_offline(workspace, tmp_path, monkeypatch):
    """Both trackers get every logged number and the run config (recipe + cache meta digest).
    W&B runs in offline mode (no network here): its run folder is read back from disk."""
    pytest.importorskip("wandb")
    import hashlib

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    fresh_accelerate_state()
    Trainer(make_recipe(workspace, tmp_path, max_steps=3, report_to=["tensorboard", "wandb"])
            ).train()
    logged = read_log(tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses == pytest.approx([row["loss"] for row in logged], rel=1e-6)

    root, _ = workspace
    digest = hashlib.sha256((root / "cache" / "meta.json").read_bytes()).hexdigest()
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    config, history = read_wandb_offline_run(run_file)
    assert "recipe.name" in config, sorted(config)[:20]
    assert json.loads(config["recipe.name"]) == "tiny"
    assert json.loads(config["teacher_cache.meta_sha256"]) == digest
    assert json.loads(config["recipe.train.max_steps"]) == 3
    assert [step for step, _ in history] == [1, 2, 3]
    assert [float(items["train/loss"]) for _, items in history] == pytest.approx(
        [row["loss"] for row in logged], rel=1e-6)


def read_wandb_offline_run(path: Path) -> tuple[dict, list[tuple[int, dict]]]:
    """(config items, [(step, history items)]) of an offline W&B run file, as JSON strings.

    wandb 0.31 no longer ships a Python reader, so the file is read here: a 7-byte header
    (":W&B", magic 0xBEE1, version), then LevelDB's log format (32 KiB blocks; each chunk a
    <crc32, length, type> header, types 1 full, 2 first, 3 middle, 4 last) holding serialised
    ``wandb_internal_pb2.Record`` messages.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, pos, parts = path.read_bytes(), 32768, 7, []
    assert data[:4] == b":W&B"
    config, history = {}, []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = [chunk] if kind in (1, 2) else [*parts, chunk]
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record.FromString(b"".join(parts))
        name = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
        kind_of_record = record.WhichOneof("record_type")
        if kind_of_record == "config":
            config.update({name(i): i.value_json for i in record.config.update})
        elif kind_of_record == "run":  # a config update made before the run record was sent
            config.update({name(i): i.value_json for i in record.run.config.update})
        elif kind_of_record == "history":
            history.append((record.history.step.num,
                            {name(i): i.value_json for i in record.history.item}))
    return config, history


def test_report_to_names_a_missing_tracker(workspace, tmp_path, monkeypatch):
    from accelerate.utils import is_mlflow_available

    from distill.config import RecipeError

    if is_mlflow_available():
        pytest.skip("mlflow is installed here")
    fresh_accelerate_state()
    with pytest.raises(RecipeError, match="train.report_to: mlflow is not installed"):
        Trainer(make_recipe(workspace, tmp_path, report_to=["mlflow"]))


def test_report_to_rejects_an_unknown_tracker(tmp_path):
    from distill.config import RecipeError, load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\ntrain:\n  report_to: [tensorboard, neptune]\n")
    with pytest.raises(RecipeError, match="train.report_to.1"):
        load_recipe(path)


def test_generate_mode_with_ce_on_the_reference_trains_two_sequences(workspace, tmp_path,
                                                                     tokenizer, tiny_llm_dir):
    """teacher.generate_ce_target: reference. KD is the mean over the teacher's answer rows (no
    CE there), CE the mean over the reference rows (no KD there), against float64 by hand."""
    root, _ = workspace
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    answers = {r["id"]: f"it is {r['text']} indeed" for r in records}
    build_cache(tmp_path / "gen", records, tokenizer, tiny_llm_dir, mode="generate",
                answers=answers)
    recipe = make_recipe(workspace, tmp_path / "out", max_steps=1, batch_size=4)
    recipe.data.soft_targets = str(tmp_path / "gen")
    recipe.teacher.generate_ce_target = "reference"
    fresh_accelerate_state()
    trainer = Trainer(recipe)
    batch, _, _ = next(trainer._micro_batches())
    assert len(batch.sample_ids) == 8 and batch.num_with_teacher == 4
    assert torch.equal(batch.has_ce, ~batch.has_teacher)  # answer rows: KD only
    with torch.no_grad():
        out = trainer.student(batch.inputs, return_logits=True)
    rows = out.labels != -100
    logits, labels = out.logits[rows].double(), out.labels[rows]
    q = logits.softmax(-1)[batch.has_teacher]
    q_kept = q.gather(-1, batch.teacher_ids)
    q = torch.cat([q_kept, 1 - q_kept.sum(-1, keepdim=True)], -1)
    p = torch.cat([batch.teacher_logprobs.double().exp(),
                   batch.teacher_rest.double().exp()[:, None]], -1)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    expected_kd = float((p * (p / q).log()).sum(-1).mean())
    expected_ce = float(torch.nn.functional.cross_entropy(logits[batch.has_ce],
                                                         labels[batch.has_ce]))
    trainer.train()
    log = read_log(tmp_path / "out")[0]
    assert log["kd"] == pytest.approx(expected_kd, rel=1e-4)
    assert log["ce_only"] == pytest.approx(expected_ce, rel=1e-4) and "ce" not in log

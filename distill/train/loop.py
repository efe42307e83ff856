"""``distill train-student``: the accelerate loop.

One optimizer step = ``grad_accumulation`` micro-batches. Before the first backward of a step the
step's target tokens are counted (over every micro-batch and process), and each micro-batch's
summed loss is divided by that count, so accumulation gives exactly the big batch's gradient.
Then the global gradient norm goes to the clipper (ZClip by default), which decides the threshold
for this step; the decision is applied, logged (norm, threshold, clip event) and kept in the
checkpoint with everything else a resume needs, so a run killed by SIGKILL and resumed follows
the same loss curve. Checkpoints are ``Accelerator.save_state`` folders: accelerate saves the
optimizer (under DeepSpeed, each rank's ZeRO partition) and every process's RNG states; the
scheduler, clipper, data position and statistics are registered with it for checkpointing; a
save hook writes the student's trainable weights (``student/``, loadable by ``train.init_from``
and evaluation) in place of accelerate's whole-model file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from distill.config import VALIDATION_METRICS, Recipe
from distill.losses import HiddenStates, MixedLoss, TopKTargets, build_loss, linear_ramp
from distill.losses.mixed import resolve
from distill.losses.modules import CrossEntropy
from distill.train.card import run_card_context
from distill.train.checkpoint import CheckpointError, CheckpointManager, check_folder_weights_only
from distill.train.clipping import CapWatch, build_clipper
from distill.train.data import (
    Batch,
    Collator,
    DataStats,
    EpochSampler,
    TrainingSet,
    cross_tokenizer,
    open_teacher_cache,
)
from distill.train.listening import AudioGain, ListeningWatch, other_clips_audio
from distill.train.optim import build_optimizer
from distill.train.schedule import build_scheduler
from distill.train.tracking import init_kwargs as tracker_init_kwargs
from distill.train.tracking import run_config, scalar_tag, trackers

LEGACY_TRAINER_STATE = "trainer_state.pt"  # checkpoints written before Accelerator.save_state
STUDENT_DIR = "student"
LOG_FILE = "train_log.jsonl"


def build_mixed_loss(recipe: Recipe) -> MixedLoss:
    """The recipe's CE + KD: the KD loss by its registered name (distill.losses.LOSSES)."""
    cfg = recipe.loss
    kd_loss = build_loss(
        cfg.divergence, temperature=cfg.temperature, tail=cfg.tail, chunk_size=cfg.chunk_size,
        scale_by_t_squared=cfg.scale_by_temperature_squared, **cfg.options,
    )
    schedule = cfg.kd_weight_schedule
    kd_weight = (linear_ramp(schedule.start, schedule.end, schedule.steps) if schedule
                 else cfg.kd_weight)
    return MixedLoss(kd_loss, ce_weight=cfg.ce_weight, kd_weight=kd_weight)


def _process_group_kwargs(deepspeed_in_recipe: bool) -> list:
    """DeepSpeed without a GPU: the process-group backend named by DeepSpeed's CPU accelerator.

    accelerate picks no backend for DeepSpeed on a machine without CUDA, and then counts one
    process however many ``accelerate launch`` started (so batch sizes, data sharding and
    checkpoints would be wrong); DeepSpeed's own CPU accelerator says which backend it uses
    (gloo, or oneCCL's ccl when installed).
    """
    from accelerate.utils import InitProcessGroupKwargs

    launched = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if not (deepspeed_in_recipe or launched) or torch.cuda.is_available():
        return []
    from deepspeed.accelerator import get_accelerator

    return [InitProcessGroupKwargs(backend=get_accelerator().communication_backend_name())]


def build_uld_fallback(recipe: Recipe):
    """ULD for cross-tokenizer rows without a one-to-one token (distill.data.cross_rows), at the
    recipe's temperature and tail; weighted like the KD term."""
    cfg = recipe.loss
    return build_loss("uld", temperature=cfg.temperature, tail=cfg.tail,
                      chunk_size=cfg.chunk_size, scale_by_t_squared=cfg.scale_by_temperature_squared)


@dataclass
class Progress:
    """Where the run is in steps and data; restored in place on resume."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # sampler keys consumed in this epoch

    def state_dict(self) -> dict:  # for Accelerator.register_for_checkpointing
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


class Trainer:
    def __init__(self, recipe: Recipe, *, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from students.encoder_memo import EncoderMemo
        from students.model import SalmonnStudent

        self.recipe = recipe
        cfg = recipe.train
        precision = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[cfg.precision]
        plugin = None
        if cfg.deepspeed_config:  # else `accelerate launch --config_file ...` may bring one
            from accelerate import DeepSpeedPlugin

            plugin = DeepSpeedPlugin(hf_ds_config=cfg.deepspeed_config)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accumulation,
            deepspeed_plugin=plugin, log_with=trackers(recipe),
            kwargs_handlers=_process_group_kwargs(plugin is not None),
        )
        set_seed(cfg.seed)
        self._fill_deepspeed_config()
        self.output_dir = Path(cfg.output_dir)
        self.student = SalmonnStudent.from_config(recipe.model, device=self.accelerator.device)
        if cfg.encoder_memo_mb:
            self.student.speech_memo = EncoderMemo(cfg.encoder_memo_mb * 2**20)
        if cfg.init_from:
            from distill.evaluate.runner import check_checkpoint

            self.student.load_trainable(check_checkpoint(cfg.init_from))
        self.processor = self.student.processor
        self.cache = open_teacher_cache(recipe, self.student.tokenizer)
        self.cross_tokenizer = cross_tokenizer(recipe, self.cache, self.student.tokenizer)
        self.train_set = TrainingSet(recipe, self.processor, split="train", cache=self.cache,
                                     cross=self.cross_tokenizer)
        self.valid_set = (TrainingSet(recipe, self.processor, split="valid", cache=self.cache,
                                      augment=False, cross=self.cross_tokenizer)
                          if recipe.data.valid else None)
        self.order = self.train_set.sampler(cfg.seed)
        world = self.accelerator.num_processes
        per_step = cfg.batch_size * cfg.grad_accumulation * world
        self.total_steps = cfg.max_steps or cfg.epochs * math.ceil(len(self.order) / per_step)
        self.optimizer = build_optimizer(self.student, cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.clipper = build_clipper(cfg.clip)
        self.cap_watch = CapWatch(getattr(self.clipper, "max_norm", None), cfg.clip.mode)
        self.listening_watch = ListeningWatch()
        self.loss = build_mixed_loss(recipe)
        self.uld_loss = build_uld_fallback(recipe)
        self.ce_only_loss = CrossEntropy(chunk_size=recipe.loss.chunk_size)
        self.student, self.optimizer = self.accelerator.prepare(self.student, self.optimizer)
        self.checkpoints = CheckpointManager(self.output_dir, cfg.checkpoint.keep_last)
        self.progress = Progress()
        self.stats = DataStats()
        # Saved by Accelerator.save_state as custom_checkpoint_{0..3}.pkl, in this order.
        self.accelerator.register_for_checkpointing(self.scheduler, self.clipper, self.progress,
                                                    self.stats)
        self.accelerator.register_save_state_pre_hook(self._save_student)
        self.accelerator.register_load_state_pre_hook(self._load_student)
        self.tracking = False  # trackers start with the first log line

    def _fill_deepspeed_config(self) -> None:
        """The recipe decides batch size, accumulation and precision; DeepSpeed's "auto" fields
        are filled from it (our DataLoader is not prepared by accelerate, so it cannot)."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None:
            return
        cfg, config = self.recipe.train, plugin.deepspeed_config
        world = self.accelerator.num_processes
        config["train_micro_batch_size_per_gpu"] = cfg.batch_size
        config["gradient_accumulation_steps"] = cfg.grad_accumulation
        config["train_batch_size"] = cfg.batch_size * cfg.grad_accumulation * world
        for name, wanted in (("bf16", cfg.precision == "bf16"), ("fp16", cfg.precision == "fp16")):
            section = config.setdefault(name, {})
            if section.get("enabled", "auto") == "auto":
                section["enabled"] = wanted

    # ---------------------------------------------------------------------------- data
    def _loader(self, dataset: TrainingSet, sampler, shuffle_seed: int):
        # Its own generator: creating an iterator must not consume the global RNG, or a resumed
        # run's dropout would drift from the uninterrupted one.
        generator = torch.Generator().manual_seed(shuffle_seed)
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.recipe.train.batch_size, sampler=sampler,
            collate_fn=Collator(self.processor), num_workers=self.recipe.data.num_workers,
            generator=generator,
        )

    def _micro_batches(self):
        """Yields (batch, epoch, position after it) forever, from the saved position."""
        p, acc = self.progress, self.accelerator
        sampler = EpochSampler(self.order, p.epoch, p.position, acc.process_index,
                               acc.num_processes)
        epoch, position, per_epoch = p.epoch, p.position, len(self.order)
        for batch in self._loader(self.train_set, sampler, self.recipe.train.seed):
            position += batch.num_read * acc.num_processes  # every rank read as many keys
            while position >= per_epoch:
                epoch, position = epoch + 1, position - per_epoch
            yield batch, epoch, position

    # ---------------------------------------------------------------------------- loss
    def _step_loss(self, batch: Batch, num_items: dict[str, float]) -> tuple[torch.Tensor, dict]:
        """This micro-batch's share of the step's loss.

        Each term is normalised by its own count over the whole optimizer step (all micro-batches
        and processes), so a step's loss is the same whatever the split: CE by every target token
        (``num_items["ce"]``), KD by the target tokens that have a teacher row
        (``num_items["kd"]``). CE-only samples (no cached targets) thus add CE tokens without
        diluting KD: KD stays the mean divergence per teacher token at its configured weight.
        With ``teacher.generate_ce_target: reference`` a generate-mode sample brings two
        sequences: the teacher's answer (KD rows, no CE) and the reference (CE rows only).
        The MoE balance loss is a per-forward value; it is divided by the number of micro-batches
        so one step weighs it once, as with a single big batch.
        """
        out = self.student(batch.inputs, padding_free=self.recipe.train.padding_free)
        rows = out.labels != -100
        hidden = out.hidden_states[rows]
        labels = out.labels[rows]
        if labels.numel() != batch.num_target_tokens:
            raise RuntimeError(f"{labels.numel()} label rows for {batch.num_target_tokens} targets")
        unwrapped = self.accelerator.unwrap_model(self.student)
        weight, bias = unwrapped.lm_head_weight, unwrapped.lm_head_bias
        has_teacher = batch.has_teacher.to(labels.device)
        has_ce = batch.has_ce.to(labels.device)
        total = hidden.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        extra = {}
        if out.balance_loss is not None:  # already weighted by the student
            extra["moe_balance"] = (out.balance_loss / self.recipe.train.grad_accumulation, 1.0)
        if has_teacher.any():
            teacher = TopKTargets(batch.teacher_ids.to(labels.device),
                                  batch.teacher_logprobs.to(labels.device),
                                  None if batch.teacher_rest is None
                                  else batch.teacher_rest.to(labels.device))
            both = has_ce[has_teacher]  # teacher rows that CE trains on too
            if both.all():  # CE and KD share each chunk's logits: one pass
                mixed = self.loss(HiddenStates(hidden[has_teacher], weight, bias), teacher,
                                  labels[has_teacher], step=self.progress.step,
                                  num_items={"ce": num_items["ce"], "kd": num_items["kd"]},
                                  extra=extra)
                total = total + mixed.total
                parts.update({k: float(v) for k, v in mixed.parts.items()})
            else:  # generate mode with CE on the reference: some teacher rows are KD only
                kd_weight = resolve(self.loss.kd_weight, self.progress.step)
                kd = self.loss.kd_loss(HiddenStates(hidden[has_teacher], weight, bias), teacher,
                                       labels[has_teacher], num_items=num_items["kd"])
                total = total + kd_weight * kd
                parts["kd"] = float(kd)
                ce_rows = has_teacher & has_ce
                if ce_rows.any():
                    ce = self.ce_only_loss(HiddenStates(hidden[ce_rows], weight, bias),
                                           labels[ce_rows], num_items=num_items["ce"])
                    total = total + resolve(self.loss.ce_weight, self.progress.step) * ce
                    parts["ce"] = float(ce)
                for name, (value, w) in extra.items():
                    total = total + w * value
                    parts[name] = float(value)
            extra = {}
        if batch.has_uld is not None and batch.has_uld.any():  # cross-tokenizer, no 1:1 token
            has_uld = batch.has_uld.to(labels.device)
            uld_targets = TopKTargets(batch.uld_ids.to(labels.device),
                                      batch.uld_logprobs.to(labels.device),
                                      batch.uld_rest.to(labels.device))
            uld = self.uld_loss(HiddenStates(hidden[has_uld], weight, bias), uld_targets,
                                labels[has_uld], num_items=num_items["kd"])
            total = total + resolve(self.loss.kd_weight, self.progress.step) * uld
            parts["kd_uld"] = float(uld)
        ce_only = ~has_teacher & has_ce
        if ce_only.any():
            ce = self.ce_only_loss(HiddenStates(hidden[ce_only], weight, bias),
                                   labels[ce_only], num_items=num_items["ce"])
            total = total + self.recipe.loss.ce_weight * ce
            parts["ce_only"] = float(ce)
            for name, (value, w) in extra.items():
                total = total + w * value
                parts[name] = float(value)
        return total, parts

    # ---------------------------------------------------------------------------- step
    def _optimizer_step(self, batches: list[Batch]) -> dict:
        acc = self.accelerator
        uld_rows = sum(int(b.has_uld.sum()) for b in batches if b.has_uld is not None)
        counts = torch.tensor([float(sum(b.num_target_tokens for b in batches)),
                               float(sum(int(b.has_ce.sum()) for b in batches)),
                               float(sum(int(b.has_teacher.sum()) for b in batches)),
                               float(uld_rows)],
                              device=acc.device)
        global_tokens, global_ce, global_mapped, global_uld = (
            float(c) for c in acc.reduce(counts, reduction="sum"))
        global_teacher = global_mapped + global_uld  # KD's count: every row with a teacher
        # Each process divides by the global counts; DDP averages over processes, so scale back.
        num_items = {"ce": max(global_ce, 1.0) / acc.num_processes,
                     "kd": max(global_teacher, 1.0) / acc.num_processes}
        params = [p for p in self.student.parameters() if p.requires_grad]
        deepspeed = self._zero_optimizer()
        if deepspeed is not None:  # ZeRO clips inside its step: hand it this step's threshold
            deepspeed.clip_grad = self.clipper.preset_threshold() or 0.0
        log: dict[str, float] = {}
        for batch in batches:
            # accumulate() syncs (and, under DeepSpeed, steps) on the last micro-batch only.
            with acc.accumulate(self.student), acc.autocast():
                if batch.sample_ids:
                    loss, parts = self._step_loss(batch, num_items)
                else:  # every sample skipped: a zero loss keeps the accumulation count right
                    loss, parts = sum(p.reshape(-1)[0] for p in params) * 0.0, {}
                # accelerate (or DeepSpeed) divides by the accumulation steps; our loss is
                # already normalised by the whole step's token count.
                acc.backward(loss * acc.gradient_accumulation_steps)
            log["loss"] = log.get("loss", 0.0) + float(loss.detach())
            for name, value in parts.items():
                log[name] = log.get(name, 0.0) + value
        if deepspeed is not None:
            norm = float(self.student.get_global_grad_norm() or 0.0)
            decision = self.clipper.decide(norm, preset=True)
        else:
            norm = float(acc.clip_grad_norm_(params, float("inf")))
            decision = self.clipper.decide(norm)
            if decision.clipped:
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(decision.scale)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cross_tokenizer:  # which path each target row took (distill.data.cross_rows)
            log.update(rows_map=global_mapped / max(global_tokens, 1.0),
                       rows_uld=global_uld / max(global_tokens, 1.0),
                       rows_ce_only=1.0 - global_teacher / max(global_tokens, 1.0))
        lrs = {group.get("component", "llm"): lr for group, lr in
               zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True)}
        log.update(grad_norm=norm, clip_threshold=decision.threshold,  # None: no limit
                   clipped=float(decision.clipped), lr=lrs.get("llm", lrs.get("audio")),
                   tokens=global_tokens)
        if "audio" in lrs and "llm" in lrs:
            log["lr_audio"] = lrs["audio"]
        warning = self.cap_watch.observe(decision)
        if warning is not None:
            log["warning"] = warning  # in train_log.jsonl beside the step it concerns
            if acc.is_main_process:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
        return log

    def _zero_optimizer(self):
        """DeepSpeed's optimizer (which clips to its ``clip_grad``), or None without DeepSpeed."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type != DistributedType.DEEPSPEED:
            return None
        optimizer = self.student.optimizer  # the DeepSpeed engine's
        if not hasattr(optimizer, "clip_grad"):
            raise RuntimeError(f"{type(optimizer).__name__} has no clip_grad: dynamic clipping "
                               "needs a ZeRO or bf16 DeepSpeed optimizer")
        return optimizer

    # ---------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss (CE), token accuracy and ``audio_gain`` (``distill.train.listening``) on the
        validation manifests, one pass, no augmentation, no dropout."""
        if self.valid_set is None:
            return {}
        self.student.eval()
        unwrapped = self.accelerator.unwrap_model(self.student)
        keys = [(0, i) for i in range(len(self.valid_set))]
        loader = self._loader(self.valid_set, keys, 0)
        loss_sum, correct, count = 0.0, 0, 0
        audio = AudioGain()
        for batch in loader:
            if not batch.sample_ids:
                continue
            with self.accelerator.autocast():
                out = self.student(batch.inputs, padding_free=self.recipe.train.padding_free)
            rows = out.labels != -100
            hidden, labels = out.hidden_states[rows], out.labels[rows]
            logits = torch.nn.functional.linear(hidden, unwrapped.lm_head_weight,
                                                unwrapped.lm_head_bias).float()
            if out.audio_embeds is not None and out.audio_embeds.size(0) >= 2:
                with self.accelerator.autocast():
                    swapped = self.student(batch.inputs,
                                           audio_embeds=other_clips_audio(out.audio_embeds),
                                           padding_free=self.recipe.train.padding_free)
                audio.add(logits, torch.nn.functional.linear(
                    swapped.hidden_states[rows], unwrapped.lm_head_weight,
                    unwrapped.lm_head_bias), labels)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            count += labels.numel()
        self.student.train()
        result = {"valid_loss": loss_sum / max(count, 1), "token_accuracy": correct / max(count, 1)}
        if audio.tokens:
            result["audio_gain"] = audio.gain
            warning = self.listening_watch.observe(self.progress.step, audio.gain)
            if warning is not None and self.accelerator.is_main_process:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
                result["warning"] = warning  # in train_log.jsonl beside the step it concerns
        return result

    # ---------------------------------------------------------------------------- checkpoints
    def _save_student(self, models: list, weights: list, folder: str) -> None:
        """Save hook: the trainable weights as a student checkpoint, not the whole model."""
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.student).save_pretrained(
                Path(folder) / STUDENT_DIR, card=run_card_context(self))
        weights.clear()  # the frozen encoders and base LLM come from their own checkpoints

    def _load_student(self, models: list, folder: str) -> None:
        """Load hook: the trainable weights back (DeepSpeed's engine loads its own instead)."""
        from students.checkpoint import CheckpointCorruptError

        if not models:
            return
        try:
            self.accelerator.unwrap_model(self.student).load_trainable(Path(folder) / STUDENT_DIR)
        except (OSError, CheckpointCorruptError) as err:
            raise CheckpointError(f"{Path(folder) / STUDENT_DIR}: cannot be loaded ({err})") from None
        models.clear()

    def _deepspeed_kwargs(self, saving: bool) -> dict:
        """Under DeepSpeed: the frozen parameters stay out of its module file, so loading is
        not strict about them (they come from the base checkpoints)."""
        if self._zero_optimizer() is None:
            return {}
        return {"exclude_frozen_parameters": True} if saving else {"load_module_strict": False}

    def save(self, metric: float | None) -> Path:
        """Every process calls this (each writes its RNG state and, under ZeRO, its partition)."""
        acc = self.accelerator
        higher = VALIDATION_METRICS[self.recipe.train.checkpoint.best_metric]
        kwargs = self._deepspeed_kwargs(saving=True)
        return self.checkpoints.save(
            self.progress.step, lambda folder: acc.save_state(str(folder), **kwargs),
            metric=metric, higher_is_better=higher, is_main=acc.is_main_process,
            barrier=acc.wait_for_everyone)

    def resume(self) -> bool:
        """Restore the newest checkpoint that loads (an unloadable one is skipped, said so)."""
        if self.checkpoints.latest() is None:
            return False
        kwargs = self._deepspeed_kwargs(saving=False)

        def load(folder: Path) -> Path:
            if (folder / LEGACY_TRAINER_STATE).is_file():
                raise CheckpointError(
                    f"{folder}: written by an earlier distill ({LEGACY_TRAINER_STATE}); resume it "
                    f"with that version, or start from its weights with train.init_from: {folder}")
            check_folder_weights_only(folder)  # before accelerate unpickles anything in it
            try:
                self.accelerator.load_state(str(folder), **kwargs)
            except (OSError, RuntimeError, ValueError, KeyError) as err:
                if isinstance(err, CheckpointError):
                    raise
                raise CheckpointError(f"{folder}: cannot be loaded ({err})") from None
            return folder

        self.resumed_from, _ = self.checkpoints.load_latest(load)
        self._truncate_log(self.progress.step)
        return True

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be redone),
        and a line a kill tore in half."""
        path = self.output_dir / LOG_FILE
        if not self.accelerator.is_main_process or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        tmp = path.with_name(f".{LOG_FILE}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(path)

    # ---------------------------------------------------------------------------- logging
    def _log(self, values: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        if not self.tracking:
            self.accelerator.init_trackers(
                self.recipe.name, config=run_config(self.recipe, getattr(self.cache, "meta", None)),
                init_kwargs=tracker_init_kwargs(self.recipe))
            self.tracking = True
        step = self.progress.step
        self.accelerator.log({scalar_tag(name): value for name, value in values.items()
                              if isinstance(value, float) and math.isfinite(value)}, step=step)
        with (self.output_dir / LOG_FILE).open("a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")

    def _moe_load(self) -> dict[str, float]:
        """Share of routed tokens per expert since the last step, averaged over layers."""
        if not self.recipe.model.moe.enabled:
            return {}
        from students.moe import load_statistics, reset_load_statistics

        llm = self.accelerator.unwrap_model(self.student).llm
        load = load_statistics(llm).double()  # [layers, experts]
        reset_load_statistics(llm)
        share = (load / load.sum(-1, keepdim=True).clamp_min(1)).mean(0)
        return {f"moe_load/expert{i}": float(v) for i, v in enumerate(share.tolist())}

    # ---------------------------------------------------------------------------- run
    def train(self) -> Path:
        cfg = self.recipe.train
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.student.train()
        batches = self._micro_batches()
        bar = tqdm(total=self.total_steps, initial=self.progress.step, desc="train", unit="step",
                   disable=not self.accelerator.is_main_process)
        last = None
        while self.progress.step < self.total_steps:
            started = time.perf_counter()
            micro = []
            for _ in range(cfg.grad_accumulation):
                batch, epoch, position = next(batches)
                micro.append(batch)
                self.stats.examples += batch.num_samples
                self.stats.ce_only += batch.num_samples - batch.num_with_teacher
                for skipped in batch.skipped:
                    self.stats.skipped[skipped.reason] += 1
            log = self._optimizer_step(micro)
            self.progress.step += 1
            self.progress.epoch, self.progress.position = epoch, position
            log["tokens_per_s"] = log["tokens"] / (time.perf_counter() - started)
            log.update(self._moe_load())
            step = self.progress.step
            metric = None
            if step % cfg.eval_every_steps == 0 or step == self.total_steps:
                valid = self.validate()
                if "warning" in log and "warning" in valid:
                    valid["warning"] = f"{log['warning']} {valid['warning']}"
                log.update(valid)
                metric = valid.get(cfg.checkpoint.best_metric)
            self._log(log)
            bar.set_postfix(loss=f"{log['loss']:.4f}", norm=f"{log['grad_norm']:.3g}",
                            lr=f"{log['lr']:.2e}")
            bar.update(1)
            if step % cfg.checkpoint.every_steps == 0 or step == self.total_steps:
                last = self.save(metric)
        bar.close()
        if self.tracking:
            self.accelerator.end_training()  # flushes TensorBoard, finishes the W&B/MLflow run
            self.tracking = False
        print(f"training done: {self.stats.summary()}")
        return self.checkpoints.best() or last or self.checkpoints.latest()


def train_student(recipe: Recipe, *, resume: bool = False, run_eval: bool | None = None) -> Path:
    trainer = Trainer(recipe)
    if resume and trainer.resume():
        print(f"resumed at step {trainer.progress.step} from {trainer.resumed_from}")
    best = trainer.train()
    if (recipe.train.evaluate_when_done if run_eval is None else run_eval) and recipe.eval.sets:
        from distill.evaluate.runner import evaluate

        _, paths = evaluate(recipe, best)  # also puts the scores into best's model card
        print(f"evaluation report: {paths['markdown']}")
    return best

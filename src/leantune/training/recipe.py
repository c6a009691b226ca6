"""The SFT recipe for every method (models/methods.py): setup, train, save_checkpoint, read top to bottom like the algorithm.

One optimizer step = `grad_accum` micro-batches. The loss is the mean over every labelled token of the
step (summed per micro-batch, divided by the step's token count), so accumulation gives exactly the
gradient of one big batch; dividing each micro-batch by its own count would weight short examples more.
"""

from __future__ import annotations

import math
import resource
import shlex
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from ..config import RunConfig
from ..data import load_examples, load_splits
from ..data.batches import collate, micro_batches_for_step, pack_micro_batch, padding_fraction, steps_per_epoch
from ..data.preference import TokenizedPair, tokenize_pairs
from ..data.tokenize import TokenizedExample, tokenize_examples
from ..errors import ConfigError, DataError, PlanError
from ..models import load_base
from ..models.loading import detected_device
from ..models.adapters import trainable_parameter_count
from ..models.methods import (adalora_model, adalora_ranks, attach_method, check_method_available, describe_method,
                              load_rank_allocator_state, make_optimizer, orthogonality_penalty, quantized_weight_bytes,
                              rank_allocator_state)
from ..models.forward import check_architecture, decoder_and_head, label_logits, summed_label_loss
from ..runs.fingerprint import data_files, file_hash, model_fingerprint
from ..runs.index import RunIndex
from ..runs.cost import BilledClock, Price, cost_usd, resolve_price, usd
from ..runs.ledger import budget_alerts
from ..evaluation.tasks import after_train_tasks
from ..runs.report import cost_section, replace_report_section, write_report
from ..runs.trackers import Trackers
from ..runs.rundir import RunDir
from .forgetting import EWCPenalty, load_or_estimate_fisher, replay_rows
from .distill import distill_terms, load_teacher
from .dpo import RewardStats, dpo_terms, reference_logprobs, split_logprobs
from .checkpoint import Progress, list_checkpoints, load_checkpoint, save_checkpoint
from .progress import TrainingProgress
from .schedule import warmup_cosine
from .signals import BudgetReached, Preempted, StopOnSignal


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux: the whole process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows_of(data: list) -> list[TokenizedExample]:
    """The token rows a dataset runs as: DPO pairs are two rows each."""
    return [side for item in data for side in ((item.chosen, item.rejected) if isinstance(item, TokenizedPair) else (item,))]


def enable_activation_checkpointing(model) -> None:
    # Non-reentrant checkpointing: works with frozen inputs (LoRA) without enable_input_require_grads.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    eval_loss: float | None
    tokens: int
    elapsed_s: float  # time inside training steps (what tokens/s is measured over)
    tokens_per_s: float
    peak_memory_mb: float
    cost_usd: float | None  # billed: the whole process's wall time at the run's price; None without a price
    billed_s: float = 0.0
    model: object = field(repr=False, default=None)
    tokenizer: object = field(repr=False, default=None)
    eval_examples: list = field(repr=False, default_factory=list)
    evaluation: object = field(repr=False, default=None)  # evaluate.EvalResult when eval.after_train ran


class LoraRecipe:
    def __init__(self, config: RunConfig, run: RunDir, console: Console | None = None, clock: BilledClock | None = None,
                 price: Price | None = None):
        self.config = config
        self.run = run
        self.console = console or Console(stderr=True)
        self.device, device_name = detected_device()
        self.price = price or resolve_price(config.cost.usd_per_hour, device_name)
        self.clock = clock or BilledClock(time.time())
        self.last_eval_s = None  # the last eval pass's duration: what the final one is expected to take
        self.slowest_save_s = None

    # ------------------------------------------------------------------ setup
    def setup(self, resume: bool = False, force: bool = False) -> None:
        cfg = self.config
        if cfg.training.threads:
            torch.set_num_threads(cfg.training.threads)
        self.dpo = cfg.objective.name == "dpo"
        if cfg.forgetting.replay_fraction and self.dpo:
            raise ConfigError("forgetting.replay_fraction mixes supervised examples into training and does not apply "
                              "to DPO; set it to 0 (or use forgetting.ewc_lambda).")
        with self.clock.phase("data"):
            splits = load_splits(
                cfg.data.train, cfg.data.eval, cfg.data.eval_size, cfg.training.seed, cfg.data.max_train_examples,
                cfg.data.format, cfg.data.columns, objective=cfg.objective.name,
            )
        train_examples, self.eval_examples = splits.train, splits.eval
        if splits.leaked_removed:
            self.note(f"data: {splits.leaked_removed} training rows repeat a held-out eval prompt (duplicates in "
                      f"{cfg.data.train}); left out of training so the eval stays unseen")
        if splits.leaked_kept:
            self.note(f"[yellow]data: {splits.leaked_kept} training rows have a prompt that is also in {cfg.data.eval}: "
                      "the eval score will reward memorising them (`leantune data check --eval` lists them)[/]")
        self.eval_tasks = after_train_tasks(cfg, self.eval_examples, self.note) if cfg.eval.after_train else []
        check_method_available(cfg.method, self.device)  # before minutes of model loading, not after
        self.trackers = Trackers(cfg, self.note)  # an unreachable tracking server stops us here, not after loading
        with self.clock.phase("load"):
            base = load_base(cfg.model.base, cfg.model.dtype, self.device, quantize_4bit=cfg.method.name == "qlora")
        self.note(f"loaded {cfg.model.base} from {base.path} in {base.load_seconds:.1f}s")
        check_architecture(base.model)  # our label-only output path must know its final logits
        self.tokenizer = base.tokenizer
        with self.clock.phase("data"):
            self.tokenize(train_examples)
        if not self.train_data:
            raise DataError(f"No training example is left after fitting to data.max_seq_len={cfg.data.max_seq_len} "
                            f"(data.truncation={cfg.data.truncation}). Raise max_seq_len or use truncation: keep_end.")

        t = cfg.training
        self.total_steps = t.max_steps or t.epochs * steps_per_epoch(len(self.train_data), t.micro_batch_size, t.grad_accum)
        with self.clock.phase("load"):
            self.model = self.prepare_model(base)
        self.check_memory_plan(base.model.config.to_dict(), self.compute_dtype, force)
        with self.clock.phase("prepare"):
            self.prepare_objective(base)
        self.optimizer = make_optimizer(self.model, cfg.method, t.lr, t.weight_decay)
        self.scheduler = warmup_cosine(self.optimizer, self.total_steps, math.ceil(t.warmup_ratio * self.total_steps), t.min_lr_ratio)
        self.progress = Progress()
        self.slowest_step_s = 0.0
        self.step_tokens = 0

        # RNG last, after everything that draws from it (weight init, LoRA init): a fresh run and a resumed
        # one then see the same random stream from their first step on.
        checkpoints = list_checkpoints(self.run.checkpoints)
        if resume and checkpoints:
            with self.clock.phase("checkpoint"):
                self.progress, extra = load_checkpoint(checkpoints[-1], self.model, self.optimizer, self.scheduler)
            load_rank_allocator_state(self.model, extra.get("adalora", {}))
            self.run.truncate_metrics(self.progress.step)
            self.note(f"resumed from {checkpoints[-1]} (step {self.progress.step} of {self.total_steps})")
        else:
            if resume:
                self.note("no checkpoint yet in this run: starting from step 0")
                self.run.truncate_metrics(0)
            torch.manual_seed(t.seed)
        self.first_step = self.progress.step

    def tokenize(self, train_examples) -> None:
        """Training and eval rows as token ids (DPO: pairs), replay rows mixed in; says what was cut or dropped."""
        cfg = self.config
        if self.dpo:
            self.train_data, stats = tokenize_pairs(self.tokenizer, train_examples, cfg.data.max_seq_len, cfg.data.truncation)
            self.eval_data, _ = tokenize_pairs(self.tokenizer, self.eval_examples, cfg.data.max_seq_len, cfg.data.truncation)
        else:
            self.train_data, stats = tokenize_examples(
                self.tokenizer, train_examples, cfg.data.max_seq_len, cfg.data.train_on, cfg.data.truncation)
            self.eval_data, _ = tokenize_examples(
                self.tokenizer, self.eval_examples, cfg.data.max_seq_len, cfg.data.train_on, cfg.data.truncation)
        self.note(
            f"data: {stats.examples} train / {len(self.eval_data)} eval examples, {stats.tokens} tokens "
            f"({stats.label_tokens} trained), longest {stats.longest}; over data.max_seq_len={cfg.data.max_seq_len}: "
            f"{stats.truncated} truncated ({cfg.data.truncation}), {stats.split} texts split, {stats.dropped_too_long} dropped; "
            f"dropped with nothing left to learn: {stats.dropped_no_labels}"
        )
        forget = cfg.forgetting
        if forget.replay_fraction:
            replay, _ = tokenize_examples(self.tokenizer, load_examples(forget.replay_data), cfg.data.max_seq_len,
                                          cfg.data.train_on, cfg.data.truncation)
            before = len(self.train_data)
            self.train_data = replay_rows(self.train_data, replay, forget.replay_fraction, cfg.training.seed)
            self.note(f"replay: {len(self.train_data) - before} rows from {forget.replay_data} mixed into {before} "
                      f"training rows ({forget.replay_fraction:.0%} of the total)")
        if cfg.data.packing and self.dpo and "packing" in cfg.data.model_fields_set:
            self.note("data.packing is not used with DPO: each pair's two replies are scored as separate rows")
        if cfg.data.packing and self.train_data and not self.dpo:
            lengths = [len(e.input_ids) for e in self.train_data]
            mb = cfg.training.micro_batch_size
            before = padding_fraction(lengths, mb, cfg.training.seed)
            after = padding_fraction(lengths, mb, cfg.training.seed, capacity=cfg.data.max_seq_len)
            self.note(f"packing: each micro-batch's {mb} examples packed into rows of <= {cfg.data.max_seq_len} tokens; "
                      f"padding {before:.1%} -> {after:.1%} of paid token slots")

    def prepare_model(self, base):
        """The base with the method attached (and compiled, checkpointed, described)."""
        cfg = self.config
        if cfg.training.gradient_checkpointing:
            enable_activation_checkpointing(base.model)
        self.compute_dtype = next(p for p in base.model.parameters() if p.is_floating_point()).dtype
        # what inference must load the base in (models/inference.py): for QLoRA it decides the 4-bit weights
        self.run.update_info(dtype=str(self.compute_dtype).removeprefix("torch."))
        self.model = attach_method(base.model, cfg.method, cfg.training.seed, self.total_steps)
        self.adalora = adalora_model(self.model)
        if cfg.training.compile:
            # in place, on the decoder our loss path calls: parameter names (checkpoints, adapters) stay the same
            decoder_and_head(self.model)[0].compile(dynamic=True)
            self.note("training.compile: the decoder is compiled on the first step (dynamic shapes)")
        trainable, total = trainable_parameter_count(self.model)
        self.note(f"{describe_method(cfg.method)}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
        if cfg.method.name == "qlora":
            stored, params = quantized_weight_bytes(self.model)
            if params:
                self.note(f"4-bit NF4 base: {stored / 2**20:.1f} MiB for {params:,} parameters of the quantised layers "
                          f"({stored / params:.3f} bytes/parameter)")
                self.run.update_info(quantized_bytes_per_param=stored / params)
        return self.model

    def prepare_objective(self, base) -> None:
        """What the objective needs before the first step: EWC's Fisher, the distillation teacher, DPO's reference."""
        cfg, forget = self.config, self.config.forgetting
        self.ewc = None
        if forget.ewc_lambda:
            general, _ = tokenize_examples(self.tokenizer, load_examples(forget.ewc_data)[: forget.ewc_examples],
                                           cfg.data.max_seq_len, "all_assistant", cfg.data.truncation)
            full = cfg.method.name == "full"
            # by content: an edited model or data file must not reuse the Fisher of the old one
            key = {"model": model_fingerprint(cfg.model.base), "examples": forget.ewc_examples, "full": full,
                   "data": ",".join(file_hash(p) for p in data_files(forget.ewc_data, "forgetting.ewc_data")),
                   "targets": cfg.method.target_modules, "max_seq_len": cfg.data.max_seq_len,
                   "truncation": cfg.data.truncation, "dtype": str(self.compute_dtype), "method": cfg.method.name}
            fisher = load_or_estimate_fisher(self.model, general, self.tokenizer.pad_token_id, full, key, self.note)
            self.ewc = EWCPenalty(self.model, fisher, forget.ewc_lambda, full)

        self.pad_id = self.tokenizer.pad_token_id
        self.teacher = None
        if cfg.objective.name == "distill":
            self.teacher = load_teacher(cfg.objective.teacher, self.model, self.tokenizer, cfg.model.dtype, self.device)
            self.note(f"distillation from {cfg.objective.teacher or 'the base model (adapter off)'}: "
                      f"T={cfg.objective.temperature}, alpha={cfg.objective.alpha}")
        self.reference_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.dpo and not hasattr(self.model, "disable_adapter"):
            # full fine-tuning has no adapter to switch off: score the base once, before any step changes it
            self.note("DPO reference: scoring every pair with the base model once before training")
            self.reference_cache = {"train": self.precompute_reference(self.train_data),
                                    "eval": self.precompute_reference(self.eval_data)}

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def check_memory_plan(self, model_config: dict, dtype: torch.dtype, force: bool) -> None:
        """Predict the peak with the planner for this run's own shapes; refuse what cannot fit."""
        from .. import atomic
        from ..plan.memory import GiB, estimate_peak_memory
        from ..plan.setup import setup_from_run_config
        from ..plan.shapes import shape_from_hf_config

        cfg = self.config
        rows = rows_of(self.train_data)
        longest = max(len(e.input_ids) for e in rows)
        # leantune computes logits only at labelled positions (models/forward.py)
        labelled = max(e.n_label_tokens for e in rows) / longest
        setup = setup_from_run_config(
            cfg, seq_len=longest, dtype="fp32" if dtype == torch.float32 else "bf16", device=self.device, loss_positions=labelled
        )
        memory = estimate_peak_memory(shape_from_hf_config(model_config, cfg.model.base), setup)
        gib = memory.as_gib()
        atomic.write_json(self.run.path / "plan.json",
                          {"setup": setup.__dict__, "memory_gib": gib, "seconds": self.planned_seconds()})
        self.note(
            f"plan: peak ~{gib['total']:.2f} GiB for micro-batch {setup.micro_batch} x up to {longest} tokens "
            f"(weights {gib['weights']:.2f}, activations {gib['activations']:.2f}, logits {gib['logits']:.2f}, overhead {gib['overhead']:.2f})"
        )
        limit = cfg.hardware.memory_gib
        if limit and memory.total > limit * GiB:
            message = (
                f"The plan predicts {gib['total']:.2f} GiB at peak, more than hardware.memory_gib={limit:g}. Lower "
                f"training.micro_batch_size or data.max_seq_len, set training.gradient_checkpointing=true, or pass --force to try anyway."
            )
            if not force:
                raise PlanError(message)
            self.note(f"[yellow]--force: {message}[/]")

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        cfg, t = self.config, self.config.training
        self.run.update_info(status="running", total_steps=self.total_steps, billed=self.clock.record(self.price))
        self.trackers.start(self.run, self.config, resumed=self.progress.step > 0)
        self.check_budget_left_before_training()
        self.model.train()
        loss = float("nan")
        eval_loss = None
        with StopOnSignal() as stop, TrainingProgress(self.total_steps, self.progress.step, self.console) as bar:
            while self.progress.step < self.total_steps:
                started = time.perf_counter()
                with self.clock.phase("train"):
                    loss, tokens, extra = self.train_step(self.progress.step)
                elapsed = time.perf_counter() - started
                self.progress.step += 1
                self.progress.tokens += tokens
                self.progress.elapsed_s += elapsed
                self.slowest_step_s = max(self.slowest_step_s, elapsed)
                record = self.log_step(loss, tokens, elapsed, extra)
                bar.update(record)

                if t.eval_every and self.progress.step % t.eval_every == 0 and self.progress.step < self.total_steps:
                    eval_loss = self.log_eval()
                last = self.progress.step == self.total_steps
                over_budget = not last and self.next_step_passes_budget()
                if self.progress.step % t.checkpoint_every == 0 or stop.signum is not None or over_budget:
                    path = self.save_checkpoint()
                    resume = f"leantune train --resume {shlex.quote(str(self.run.path))}"
                    if stop.signum is not None:
                        self.run.update_info(status="preempted", stopped_at_step=self.progress.step,
                                             billed=self.clock.record(self.price))
                        raise Preempted(stop.signum, str(path), resume)
                    if over_budget:
                        self.run.update_info(status="stopped-by-budget", stopped_at_step=self.progress.step,
                                             billed=self.clock.record(self.price))
                        raise BudgetReached(
                            f"Stopped at step {self.progress.step}: ${self.cost_so_far():.4f} billed, and the next step "
                            f"with the final evaluation and save would pass cost.budget_usd=${cfg.cost.budget_usd:g}.",
                            str(path), resume + " (after raising cost.budget_usd in its config.yaml)")

        if self.eval_data:
            eval_loss = self.log_eval()
        with self.clock.phase("checkpoint"):
            self.save_adapter()
            write_report(self.run, cfg, self.result(loss, eval_loss))
        self.run.update_info(status="completed", finished=time.time(), final_loss=loss, eval_loss=eval_loss,
                             billed=self.clock.record(self.price))
        evaluation = self.evaluate_after_training()
        # billed to here: everything after (the index row, the trackers' last call) is a fraction of a second
        result = self.result(loss, eval_loss)
        result.evaluation = evaluation
        billed = self.clock.record(self.price)
        result.billed_s, result.cost_usd = billed["seconds"], billed["usd"]
        self.run.update_info(status="completed", billed=billed)
        replace_report_section(self.run, "## Cost", cost_section(billed))
        self.trackers.finish(self.run, "completed", {
            "cost_usd": result.cost_usd, "usd_per_hour": self.price.usd_per_hour, "price_source": self.price.source,
            "billed_s": result.billed_s, "device": self.device,
            "gpu_hours": result.billed_s / 3600 if self.device == "cuda" else 0.0, "tokens": result.tokens,
            "method": cfg.method.name, "objective": cfg.objective.name, "project": cfg.output.project})
        budget_alerts(RunIndex(self.run.path.parent), cfg.output.project, self.note)
        return result

    def evaluate_after_training(self):
        """Training is done and saved: a failure here costs the evaluation, never the run. Under a budget the
        evaluation's time box shrinks to what the budget has left, or it is skipped."""
        if not self.eval_tasks:
            return None
        from ..evaluation.api import evaluate_after_training

        max_seconds = None
        if self.config.cost.budget_usd is not None and self.price.usd_per_hour:
            left = self.config.cost.budget_usd - self.cost_so_far()
            max_seconds = 0.8 * left / self.price.usd_per_hour * 3600  # 20% kept for the last writes
            if max_seconds < 1.0:
                self.note(f"eval.after_train skipped: {usd(max(left, 0))} of cost.budget_usd is left. "
                          f"`leantune eval {self.run.path}` scores the run later.")
                return None
        try:
            with self.clock.phase("eval"):
                evaluation = evaluate_after_training(self, max_seconds)
        except Exception as e:  # noqa: BLE001 - reported, and the run stays completed
            self.note(f"[yellow]eval.after_train failed ({type(e).__name__}: {e}); the run is complete. "
                      f"Retry with `leantune eval {self.run.path}`.[/]")
            return None
        for line in evaluation.summary():
            if line.startswith(("Forgetting", "Cost per point")):
                self.note(line)
        return evaluation

    def train_step(self, step: int) -> tuple[float, int, dict]:
        t = self.config.training
        micro_batches = micro_batches_for_step(self.train_data, step, t.micro_batch_size, t.grad_accum, t.seed)
        if self.dpo:
            loss, tokens, extra = self.dpo_backward(micro_batches)
        else:
            loss, tokens, extra = self.sft_backward(micro_batches)
        if self.adalora is not None and self.config.method.orth_reg_weight:
            (self.config.method.orth_reg_weight * orthogonality_penalty(self.model)).backward()
        if self.ewc is not None:
            penalty = self.ewc()
            penalty.backward()
            extra["ewc_penalty"] = penalty.item()
        if t.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], t.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.adalora is not None:
            # PEFT's AdaLoRA only prunes when this is called between the step and zero_grad (it scores each
            # singular value by |w * grad|); trainers that skip it silently train plain LoRA (PEFT #1327, #1801).
            self.adalora.update_and_allocate(step)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, tokens, extra

    def collate(self, examples) -> dict[str, torch.Tensor]:
        """A micro-batch as tensors; with data.packing its examples share rows instead of padding to the longest
        (same examples per step either way, so packing changes the speed, not the training)."""
        if self.config.data.packing:
            examples = pack_micro_batch(examples, self.config.data.max_seq_len)
        return collate(examples, self.pad_id)

    def sft_backward(self, micro_batches) -> tuple[float, int, dict]:
        n_labels = sum(e.n_label_tokens for mb in micro_batches for e in mb)
        n_tokens = sum(len(e.input_ids) for mb in micro_batches for e in mb)
        total = 0.0
        if self.teacher is not None:
            return self.distill_backward(micro_batches, n_labels, n_tokens)
        for examples in micro_batches:
            summed, _ = summed_label_loss(self.model, self.collate(examples), self.config.training.loss_chunk)
            (summed / n_labels).backward()
            total += summed.item()
        return total / n_labels, n_tokens, {}

    def distill_backward(self, micro_batches, n_labels: int, n_tokens: int) -> tuple[float, int, dict]:
        o = self.config.objective
        total = kl_total = ce_total = 0.0
        for examples in micro_batches:
            batch = self.collate(examples)
            student, targets, _ = label_logits(self.model, batch)
            summed, kl, ce = distill_terms(student, self.teacher.logits(batch), targets, o.temperature, o.alpha)
            (summed / n_labels).backward()
            total, kl_total, ce_total = total + summed.item(), kl_total + kl.item(), ce_total + ce.item()
        return total / n_labels, n_tokens, {"distill_kl": kl_total / n_labels, "sft_loss": ce_total / n_labels}

    def dpo_backward(self, micro_batches, split: str = "train") -> tuple[float, int, dict]:
        """The step's DPO loss is the mean over its pairs (each micro-batch's sum over the step's pair count)."""
        n_pairs = sum(len(mb) for mb in micro_batches)
        n_tokens = sum(p.n_tokens for mb in micro_batches for p in mb)
        rewards, total = RewardStats(), 0.0
        for pairs in micro_batches:
            ref_chosen, ref_rejected = self.reference(pairs, split)
            chosen, rejected = split_logprobs(self.model, pairs, self.pad_id)
            losses, chosen_reward, rejected_reward = dpo_terms(chosen, rejected, ref_chosen, ref_rejected,
                                                               self.config.objective.beta)
            if torch.is_grad_enabled():
                (losses.sum() / n_pairs).backward()
            total += losses.sum().item()
            rewards.add(chosen_reward, rejected_reward)
        return total / n_pairs, n_tokens, rewards.as_dict()

    def reference(self, pairs, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_cache:
            chosen, rejected = self.reference_cache[split]
            index = torch.tensor([p.index for p in pairs])
            return chosen[index], rejected[index]
        return reference_logprobs(self.model, pairs, self.pad_id)

    def precompute_reference(self, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.training.micro_batch_size
        parts = [reference_logprobs(self.model, pairs[i : i + size], self.pad_id) for i in range(0, len(pairs), size)]
        if not parts:
            return torch.zeros(0), torch.zeros(0)
        return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])

    def planned_cost_usd(self) -> float | None:
        """The plan's training time at the run's price; None when either is unknown."""
        seconds = self.planned_seconds()
        return None if seconds is None else cost_usd(seconds, self.price)

    def planned_seconds(self) -> float | None:
        """Training time this run should take, before it starts: its tokens x the planner's FLOPs per token over
        this device's throughput (the detected GPU's catalog FLOP/s at the planner's default MFU; a CPU at
        50 GFLOP/s, the lower half of what bench/memory_model.py measured on 2 cores). None on a GPU the
        catalog does not list: guessing another card's speed would make a plan that looks real and is not."""
        from ..plan.setup import setup_from_run_config
        from ..plan.shapes import shape_from_hf_config
        from ..plan.timing import DEFAULT_MFU, flops_per_token
        from ..runs.cost import gpu_for_device

        cfg = self.config
        rows = rows_of(self.train_data)
        per_row = sum(len(e.input_ids) for e in rows) / max(len(rows), 1) * (2 if self.dpo else 1)
        tokens = self.total_steps * cfg.training.micro_batch_size * cfg.training.grad_accum * per_row
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        shape = shape_from_hf_config(base.config.to_dict(), cfg.model.base)
        setup = setup_from_run_config(cfg, device=self.device)
        if self.device == "cuda":
            gpu = gpu_for_device(self.price.device)
            if gpu is None:
                return None
            flops = gpu.bf16_tflops * 1e12 * DEFAULT_MFU.get(setup.method, 0.35)
        else:
            flops = 50e9
        return tokens * flops_per_token(shape, setup) / flops

    def cost_so_far(self) -> float | None:
        return self.clock.cost(self.price)

    def seconds_owed_after_training(self) -> float:
        """What finishing costs after the last step: the final eval pass (as long as the last one took, or
        estimated from the slowest step's token rate with a forward pass at half a training step's cost) and
        saving (the slowest checkpoint write so far, else a training step's time)."""
        owed = 0.0
        if self.eval_data:
            if self.last_eval_s is not None:
                owed += self.last_eval_s
            elif self.slowest_step_s:
                eval_tokens = sum(len(e.input_ids) for e in rows_of(self.eval_data))
                owed += 0.5 * eval_tokens / max(self.step_tokens, 1) * self.slowest_step_s
        owed += self.slowest_save_s if self.slowest_save_s is not None else max(self.slowest_step_s, 0.2)
        return owed

    def next_step_passes_budget(self) -> bool:
        """Judged on the slowest step so far (plus a margin), not the average, and on the work still owed after
        training: a run stopped a step early is cheap, one that overshoots its budget is what this guard is for."""
        budget, rate = self.config.cost.budget_usd, self.price.usd_per_hour
        if budget is None or not rate or self.progress.step == 0:
            return False
        needed_s = 1.25 * (self.slowest_step_s + self.seconds_owed_after_training())
        return self.cost_so_far() + needed_s / 3600 * rate > budget

    def check_budget_left_before_training(self) -> None:
        """Loading and preparing are billed too: a budget they already used up stops the run before its first step."""
        budget = self.config.cost.budget_usd
        if budget is None or not self.price.usd_per_hour or self.cost_so_far() < budget:
            return
        from ..errors import BudgetError

        self.run.update_info(status="stopped-by-budget", stopped_at_step=self.progress.step, billed=self.clock.record(self.price))
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in self.clock.breakdown().items() if v >= 0.05)
        raise BudgetError(f"cost.budget_usd=${budget:g} was used up before training step {self.progress.step + 1}: "
                          f"{usd(self.cost_so_far())} billed at {self.price.describe()} ({phases}). Raise the budget "
                          f"in {self.run.config_path} and resume with `leantune train --resume {shlex.quote(str(self.run.path))}`.")

    def log_step(self, loss: float, tokens: int, step_seconds: float, extra: dict | None = None) -> dict:
        p = self.progress
        record = {
            "step": p.step,
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens": p.tokens,
            "tokens_per_s": tokens / step_seconds,
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "elapsed_s": round(p.elapsed_s, 3),
            "billed_s": round(self.clock.seconds(), 3),
            "cost_usd": self.cost_so_far(),
            **(extra or {}),
        }
        self.step_tokens = max(getattr(self, "step_tokens", 0), tokens)
        if self.price.usd_per_hour is not None:
            # what is billed so far, plus the remaining steps at this process's mean step time
            steps_here = max(p.step - self.first_step, 1)
            remaining_s = (self.total_steps - p.step) * self.clock.phases["train"] / steps_here
            record["projected_cost_usd"] = self.cost_so_far() + cost_usd(remaining_s, self.price)
        if self.adalora is not None:
            ranks = adalora_ranks(self.model)
            record["rank_budget"] = sum(ranks.values())
            every = max(1, self.total_steps // 20)
            if p.step % every == 0 or p.step == self.total_steps or p.step == 1:
                self.run.append_jsonl("adalora_ranks.jsonl", {"step": p.step, "ranks": ranks})
        self.run.append_metrics(record)
        self.trackers.metrics(record)
        return record

    @torch.no_grad()
    def evaluate_loss(self, data) -> tuple[float, dict]:
        """Mean eval loss (SFT: per labelled token; DPO: per pair, with reward metrics)."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        size = self.config.training.micro_batch_size
        extra = {}
        if self.dpo:
            loss, _, rewards = self.dpo_backward([data[i : i + size] for i in range(0, len(data), size)], split="eval")
            self.model.train(was_training)
            return loss, {f"eval_{k}": v for k, v in rewards.items()}
        for i in range(0, len(data), size):
            summed, n = summed_label_loss(self.model, self.collate(data[i : i + size]), self.config.training.loss_chunk)
            total, count = total + summed.item(), count + n
        self.model.train(was_training)
        return total / max(count, 1), extra

    def log_eval(self) -> float:
        started = time.perf_counter()
        with self.clock.phase("eval"):
            eval_loss, extra = self.evaluate_loss(self.eval_data)
        self.last_eval_s = time.perf_counter() - started
        if self.progress.best_eval_loss is None or eval_loss < self.progress.best_eval_loss:
            self.progress.best_eval_loss = eval_loss
        self.run.append_metrics({"step": self.progress.step, "eval_loss": eval_loss, **extra})
        self.trackers.metrics({"step": self.progress.step, "eval_loss": eval_loss, **extra})
        shown = "".join(f", {k.removeprefix('eval_').replace('_', ' ')} {v:.3f}" for k, v in extra.items())
        self.note(f"step {self.progress.step}: eval loss {eval_loss:.4f}{shown} on {len(self.eval_data)} examples")
        return eval_loss

    # ------------------------------------------------------------------ save
    def save_checkpoint(self) -> Path:
        started = time.perf_counter()
        with self.clock.phase("checkpoint"):
            path = save_checkpoint(
                self.run.checkpoints, self.model, self.optimizer, self.scheduler, self.progress,
                self.config.training.keep_checkpoints, extra={"adalora": rank_allocator_state(self.model)},
            )
        self.slowest_save_s = max(self.slowest_save_s or 0.0, time.perf_counter() - started)
        self.run.update_info(billed=self.clock.record(self.price))
        return path

    def save_adapter(self) -> None:
        """The adapter in PEFT's format, or for full fine-tuning the whole model (+ tokenizer) as a HF directory."""
        from ..atomic import atomic_dir

        target = self.run.full_model if self.config.method.name == "full" else self.run.adapter
        with atomic_dir(target) as tmp, warnings.catch_warnings():
            # AdaLoRA layers pruned to rank 0 save as zero-sized tensors, and PEFT mistakes them for unsharded ones
            warnings.filterwarnings("ignore", message=".*have invalid shape.*")
            self.model.save_pretrained(tmp)
            if self.config.method.name == "full":
                self.tokenizer.save_pretrained(tmp)

    def result(self, loss: float, eval_loss: float | None) -> TrainResult:
        p = self.progress
        return TrainResult(
            run_dir=self.run.path,
            steps=p.step,
            final_loss=loss,
            eval_loss=eval_loss,
            tokens=p.tokens,
            elapsed_s=p.elapsed_s,
            tokens_per_s=p.tokens / p.elapsed_s if p.elapsed_s else 0.0,
            peak_memory_mb=peak_memory_mb(),
            cost_usd=self.cost_so_far(),
            billed_s=self.clock.seconds(),
            model=self.model,
            tokenizer=self.tokenizer,
            eval_examples=self.eval_examples,
        )

"""The fine-tuning recipe for every method and objective: `setup`, `train`, `save_checkpoint`, read top to bottom
like the algorithm (torchtune's single-device recipes and nanoGPT's train.py are the models).

What differs between methods (LoRA, QLoRA, DoRA, AdaLoRA, full) lives in methods/, between objectives (SFT, DPO,
distillation, and the EWC / replay terms) in objectives/; the cost meter and budget guard in budget.py, the
memory and time plan in run_plan.py. One optimizer step = `grad_accum` micro-batches, drawn from the step number
and the seed alone (data/batches.py), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from ..config import RunConfig
from ..data import run_splits
from ..data.batches import micro_batches_for_step, packing_note, shared_prefix_fraction, steps_per_epoch
from ..errors import BudgetError, DataError
from ..evaluation.api import evaluate_after_training
from ..evaluation.tasks import after_train_tasks
from ..models.adapters import enable_activation_checkpointing, eval_mode, trainable_parameter_count
from ..models.forward import check_architecture, decoder_and_head
from ..models.inference import load_trained
from ..models.loading import detected_device, load_base
from ..models.lora_autograd import use_lora_autograd
from ..models.segment_attention import use_segment_attention
from ..runs.cost import BilledClock, Price, cost_usd, resolve_price
from ..runs.index import RunIndex
from ..runs.anomalies import CostWatch, price_anomaly
from ..runs.cost import gpu_for_device
from ..runs.ledger import append_alert, budget_alerts
from ..runs.report import cost_section, replace_report_section, write_report
from ..runs.rundir import RunDir
from ..runs.trackers import Loggers
from .budget import BudgetGuard
from . import distributed
from .allocator import allocator_note, release_freed_memory, running_allocator
from .checkpoint import Progress, list_checkpoints, load_checkpoint, save_checkpoint, save_sharded_checkpoint
from .compile_cache import use_persistent_compile_cache
from .distributed import World
from .lineage import load_parent_adapter, parent_run
from .methods import make_method
from .objectives import Batches, make_objective
from .objectives.ewc import ewc_term
from .objectives.replay import mix_replay
from .optimizer import check_method_available, make_optimizer
from .offload import offload_note, saved_activations
from .precision import LossScaling, autocast, autocast_note, weights_and_autocast
from .progress import TrainingProgress
from .result import TrainResult, peak_memory_mb
from .run_plan import ResidentGrowth, check_memory_plan, largest_micro_batch, planned_seconds, planned_tokens
from .schedule import warmup_cosine
from .signals import BudgetReached, Preempted, StopOnSignal


class FineTuneRecipe:
    def __init__(self, config: RunConfig, run: RunDir, console: Console | None = None, clock: BilledClock | None = None,
                 price: Price | None = None, world: World | None = None):
        self.config, self.run = config, run
        self.world = world or World()
        self.console = console or Console(stderr=True)
        self.device, self.device_name = detected_device()
        self.price = price or resolve_price(config.cost.usd_per_hour, self.device_name)
        self.clock = clock or BilledClock(time.time())
        self.guard = BudgetGuard(config.cost.budget_usd, self.price, self.clock)
        self.method = make_method(config.method)
        self.objective = make_objective(config)  # refuses what the objective cannot do, before anything loads

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False)

    # ------------------------------------------------------------------ setup
    def setup(self, resume: bool = False, force: bool = False) -> None:
        if self.config.training.threads:
            torch.set_num_threads(self.config.training.threads)
        allocator = running_allocator()
        if note := allocator_note(self.config.training.allocator, self.device, allocator):
            self.note(note)
        self.run.update_info(allocator=allocator)
        if self.config.training.release_memory and self.device == "cpu":
            released = release_freed_memory()
            self.note("training.release_memory: freed large blocks go back to the system at once" if released else
                      "[yellow]training.release_memory: this C library has no mallopt (not glibc); ignored[/]")
        check_method_available(self.config.method, self.device)  # before minutes of model loading, not after
        # an unreachable tracking server stops us here; ranks above 0 log nothing (rank 0 logs the global step)
        self.loggers = Loggers(self.config, self.run, self.note) if self.world.main else Loggers.none()
        self.data_memory = ResidentGrowth()  # the memory plan counts it on a CPU
        with self.clock.phase("data"), self.data_memory.during():
            train_examples = self._setup_splits()
        with self.clock.phase("load"):
            base = self._setup_base()
        with self.clock.phase("data"), self.data_memory.during():
            self._setup_data(base.tokenizer, train_examples)
        with self.clock.phase("load"):
            self._setup_model(base)
        self._check_plan(base.model.config.to_dict(), force)
        with self.clock.phase("prepare"):
            self._setup_objective()
        t = self.config.training
        # after sharding: the optimizer holds this process's shards (FSDP2 replaces the parameters)
        self.optimizer = make_optimizer(self.model, self.config.method, t.lr, t.weight_decay)
        self.scheduler = warmup_cosine(self.optimizer, self.total_steps, math.ceil(t.warmup_ratio * self.total_steps),
                                       t.min_lr_ratio)
        with self.clock.phase("checkpoint"):
            self._restore(resume)

    def _setup_splits(self) -> list:
        d, cfg = self.config.data, self.config
        splits = run_splits(cfg)
        self.eval_examples = splits.eval
        for line in splits.leak_notes(d.train, d.eval):
            self.note(line)
        self.eval_tasks = after_train_tasks(cfg, self.eval_examples, self.note) if cfg.eval.after_train else []
        return splits.train

    def _setup_base(self):
        cfg = self.config
        dtype, self.autocast_dtype = weights_and_autocast(cfg.model.dtype, self.device, self.method.trains_base_weights,
                                                          cfg.training.autocast)
        base = load_base(cfg.model.base, dtype, self.device, quantize_4bit=self.method.quantize_4bit)
        self.note(f"loaded {cfg.model.base} from {base.path} in {base.load_seconds:.1f}s")
        check_architecture(base.model)  # the label-only output path must know its final logits
        return base

    def _setup_data(self, tokenizer, train_examples: list) -> None:
        d, t = self.config.data, self.config.training
        self.tokenizer = tokenizer
        self.train_data, stats = self.objective.tokenize(tokenizer, train_examples)
        self.eval_data, _ = self.objective.tokenize(tokenizer, self.eval_examples)
        self.note(f"data: {stats.examples} train / {len(self.eval_data)} eval examples, {stats.describe(d.max_seq_len, d.truncation)}")
        task_rows = len(self.train_data)
        self.train_data = mix_replay(self.objective, tokenizer, self.train_data, self.config, self.note)
        # replay's rows follow the task's; the batch order spreads them through the task's own order (epoch_order)
        self.replayed_rows = len(self.train_data) - task_rows
        if not self.train_data:
            raise DataError(f"No training example is left after fitting to data.max_seq_len={d.max_seq_len} "
                            f"(data.truncation={d.truncation}). Raise max_seq_len or use truncation: keep_end.")
        packing = d.packing and self.objective.packs
        if d.packing and not self.objective.packs and "packing" in d.model_fields_set:
            self.note(f"data.packing is not used with {self.objective.name}: each reply is scored as its own row")
        self.batches = Batches(tokenizer.pad_token_id, packing, d.max_seq_len, t.micro_batch_size, t.loss_chunk)
        self.eval_tokens = sum(len(e.input_ids) for e in self.objective.rows(self.eval_data))
        self.total_steps = t.max_steps or t.epochs * steps_per_epoch(len(self.train_data), t.micro_batch_size, t.grad_accum)

    def _setup_model(self, base) -> None:
        cfg = self.config
        if cfg.training.gradient_checkpointing:
            enable_activation_checkpointing(base.model)
        if note := offload_note(cfg.training.activation_offload, self.device):
            self.note(note)
        self.compute_dtype = next(p for p in base.model.parameters() if p.is_floating_point()).dtype
        # what inference must load the base in (models/inference.py): for QLoRA it decides the 4-bit weights
        self.run.update_info(dtype=str(self.compute_dtype).removeprefix("torch."),
                             autocast=str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else None)
        if note := autocast_note(cfg.training.autocast, self.autocast_dtype, self.device):
            self.note(note)
        self.model = self.method.attach(base.model, cfg.training.seed, self.total_steps)
        if cfg.model.parent:  # an update: the adapter starts as the parent's, not at zero
            loaded = load_parent_adapter(self.model, parent_run(cfg))
            self.note(f"update of {cfg.model.parent}: training starts from its adapter ({loaded} tensors)")
        # after the parent's adapter is in: the layers' class changes, not their parameters
        lora_layers = use_lora_autograd(self.model) if cfg.training.lora_autograd == "leantune" else 0
        self.run.update_info(lora_autograd_layers=lora_layers)
        self._setup_packing()
        if cfg.training.compile:
            cache = use_persistent_compile_cache()
            # in place, on the decoder our loss path calls: parameter names (checkpoints, adapters) stay the same
            decoder_and_head(self.model)[0].compile(dynamic=True)
            self.note(f"training.compile: the decoder is compiled on the first step (dynamic shapes; compiled graphs and "
                      f"kernels cached in {cache}, so a later run of the same shapes compiles much faster)")
        trainable, total = trainable_parameter_count(self.model)
        self.note(f"{self.method.describe()}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
        for warning in self.method.warnings(self.total_steps):
            self.note(f"[yellow]{warning}[/]")
        notes = self.method.notes(self.model)
        if "quantized_bytes_per_param" in notes:
            self.note(f"{notes.get('base', '4-bit NF4 base')}: {notes['quantized_mib']:.1f} MiB for "
                      f"{notes['quantized_params']:,} parameters of the quantised layers "
                      f"({notes['quantized_bytes_per_param']:.3f} bytes/parameter)")
            self.run.update_info(quantized_bytes_per_param=notes["quantized_bytes_per_param"], **notes.get("record", {}))
        # EWC's Fisher and anchors are taken on the whole model, before any sharding (the same on every process)
        self.ewc = ewc_term(self.model, self.tokenizer, self.config, self.compute_dtype, self.note) \
            if self.config.forgetting.ewc_lambda else None
        # what every forward pass runs through: the model itself, or with several processes the sharded root
        self.forward_model = self.model
        if self.world.several:
            self.note(distributed.describe(cfg, self.world))
            self.forward_model = distributed.shard(self.model, cfg, self.world, self.device)
        self.sharded = self.world.several and cfg.training.distributed.strategy == "fsdp2"
        self.scaling = LossScaling(self.autocast_dtype, self.device, sharded=self.sharded,
                                   initial_scale=cfg.training.fp16_initial_scale)

    def _setup_packing(self) -> None:
        """A packed micro-batch runs as one row (no padding) when the model's attention can take it example by
        example (models/segment_attention.py); compiled decoders keep rows of max_seq_len, whose shapes repeat."""
        d, t = self.config.data, self.config.training
        self.shared_saving = 0.0
        if not self.batches.packing:
            return
        one_row = t.segment_attention and not t.compile and use_segment_attention(self.model)
        share = one_row and d.share_prefix
        self.batches = replace(self.batches, one_row=one_row, share_prefix=share)
        # what the time plan discounts: the first epoch's share of tokens that shared prefixes leave uncomputed
        self.shared_saving = shared_prefix_fraction(self.train_data, t.micro_batch_size, t.seed,
                                                    self.replayed_rows) if share else 0.0
        self.run.update_info(packed_one_row=one_row, shared_prefix=share, shared_prefix_saving=round(self.shared_saving, 4))
        self.note(packing_note(self.train_data, t.micro_batch_size, t.seed, d.max_seq_len, one_row,
                               self.shared_saving if share else None, self.replayed_rows))

    def _check_plan(self, model_config: dict, force: bool) -> None:
        rows = self.objective.rows(self.train_data)
        tokens = planned_tokens(self.config, rows, self.total_steps)
        self.planned_s = planned_seconds(self.config, model_config, tokens, self.device, self.device_name)
        if self.planned_s:  # prefixes computed once per micro-batch are tokens not computed
            self.planned_s *= 1 - self.shared_saving
        t = self.config.training
        packed = largest_micro_batch(self.batches, self.train_data, t.seed, self.total_steps * t.grad_accum,
                                     self.replayed_rows) \
            if self.batches.packing and self.world.size == 1 else None
        check_memory_plan(self.config, model_config, rows, self.compute_dtype, self.device, self.run, self.planned_s,
                          force, self.note, self.world.size, packed, self.data_memory.bytes)
        planned_tps = tokens / self.planned_s if self.planned_s else None
        self.cost_watch = CostWatch(planned_tps, self.planned_s / self.total_steps if self.planned_s else None,
                                    self.price.usd_per_hour)

    def _setup_objective(self) -> None:
        self.objective.prepare(self.forward_model, self.tokenizer, self.batches, self.train_data, self.eval_data, self.device,
                               self.note)

    def _restore(self, resume: bool) -> None:
        """The last checkpoint's weights, optimizer, schedule, RNG and data position; or a fresh start whose RNG is
        seeded last, after everything that draws from it (weight and LoRA init), so a fresh run and a resumed one
        see the same random stream from their first step on."""
        self.progress = Progress()
        checkpoints = list_checkpoints(self.run.checkpoints)
        if resume and checkpoints:
            path, (self.progress, extra) = self._load_newest_readable(checkpoints)
            # the saved RNG is rank 0's: every process continues from it, as they all started from one seed
            self.method.load_state(self.model, extra.get("method", extra.get("adalora", {})))
            self.scaling.load_state_dict(extra.get("loss_scaler", {}))
            self.run.truncate_metrics(self.progress.step)
            self.note(f"resumed from {path} (step {self.progress.step} of {self.total_steps})")
        else:
            if resume:
                self.note("no checkpoint yet in this run: starting from step 0")
                self.run.truncate_metrics(0)
            torch.manual_seed(self.config.training.seed)
        self.first_step = self.progress.step

    def _load_newest_readable(self, checkpoints: list[Path]):
        """The newest checkpoint that loads. A folder is complete once progress.json is in it, but on an object
        store mounted as a folder (a spot job's bucket) the files beside it may not all have landed after an abrupt
        preemption; then the one before it is used. Every load writes all trainable weights and optimizer state,
        so a half-read newer one leaves nothing behind."""
        for path in reversed(checkpoints):
            try:
                return path, load_checkpoint(path, self.model, self.optimizer, self.scheduler)
            except Exception as e:  # noqa: BLE001 - said, and the previous checkpoint is tried
                if path == checkpoints[0]:
                    raise
                self.note(f"[yellow]checkpoint {path} does not load ({type(e).__name__}: {e}); trying the one before[/]")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        t = self.config.training
        self.run.update_info(status="running", total_steps=self.total_steps, billed=self.clock.record(self.price))
        self.loggers.start(self.run, self.config, resumed=self.progress.step > 0)
        gpu = gpu_for_device(self.device_name)
        if message := price_anomaly(self.config.cost.usd_per_hour, gpu and gpu.on_demand_usd, self.device_name):
            self.alert(message)
        self._stop_if_budget_spent()
        self.model.train()
        loss, eval_loss = float("nan"), None
        with StopOnSignal() as stop, TrainingProgress(self.total_steps, self.progress.step, self.console) as bar:
            while self.progress.step < self.total_steps:
                loss = self.train_step(bar)
                step = self.progress.step
                if t.eval_every and step % t.eval_every == 0 and step < self.total_steps:
                    eval_loss = self.log_eval()
                over_budget = step < self.total_steps and self.guard.next_step_passes(self.eval_tokens)
                # every process stops at the same step: a SIGTERM that reached one rank, or rank 0's budget
                stopping, over_budget = self.world.agree(stop.signum is not None, over_budget)
                if step % t.checkpoint_every == 0 or stopping or over_budget:
                    path = self.save_checkpoint()
                    if stopping:
                        self._stopped("preempted", Preempted(stop.signum or signal.SIGTERM, str(path),
                                                             self._resume_command()))
                    if over_budget:
                        self._stopped("stopped-by-budget", BudgetReached(
                            f"Stopped at step {step}: ${self.guard.cost_so_far():.4f} billed, and the next step with "
                            f"the final evaluation and save would pass cost.budget_usd=${self.config.cost.budget_usd:g}.",
                            str(path), self._resume_command() + " (after raising cost.budget_usd in its config.yaml)"))
        return self._finish(loss, self.log_eval() if self.eval_data else eval_loss)

    def train_step(self, bar) -> float:
        t = self.config.training
        started = time.perf_counter()
        with self.clock.phase("train"):
            micro_batches = micro_batches_for_step(self.train_data, self.progress.step, t.micro_batch_size, t.grad_accum,
                                                   t.seed, self.replayed_rows)
            share = replace(distributed.my_share(micro_batches, self.world), scaling=self.scaling)
            with autocast(self.device, self.autocast_dtype, cache=not self.sharded), \
                    saved_activations(t.activation_offload, self.device):
                loss, tokens, extra = self.objective.step(self.forward_model, self.batches, share)
            distributed.reduce_gradients(self.model, self.config, self.world)
            if self.world.several:  # the step's loss and tokens over every process; extra metrics averaged
                names = sorted(extra)
                totals = self.world.sum([loss, tokens] + [extra[k] for k in names])
                loss, tokens = totals[0], int(totals[1])
                extra = {k: v / self.world.size for k, v in zip(names, totals[2:])}
            self.method.before_optimizer_step(self.model, self.scaling.backward)
            if self.ewc is not None:
                extra.update(self.ewc.add_to_step(self.scaling.backward))
            self.scaling.unscale(self.optimizer)
            if t.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], t.max_grad_norm)
            stepped = self.scaling.step(self.optimizer)
            self.scheduler.step()  # a skipped step still advances the schedule: the run's length is in steps
            if stepped:
                self.method.after_optimizer_step(self.model, self.progress.step)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaling.on:
                extra.update(loss_scale=self.scaling.scale(), skipped_step=0.0 if stepped else 1.0)
        elapsed = time.perf_counter() - started
        self.progress.step += 1
        self.progress.tokens += tokens
        self.progress.elapsed_s += elapsed
        self.guard.observe_step(elapsed, tokens)
        bar.update(self.log_step(loss, tokens, elapsed, extra))
        for message in self.cost_watch.observe(tokens / elapsed if elapsed > 0 else 0.0, elapsed):
            self.alert(message)
        return loss

    def alert(self, message: str) -> None:
        """A cost anomaly: in the log, the runs root's alerts.log and run.json (`runs ls` counts them); rank 0 only."""
        if not self.world.main:
            return
        self.note(f"[bold yellow]{message}[/]")
        append_alert(self.run.path.parent, f"{self.run.id}: {message}")
        self.run.update_info(alerts=self.run.info().get("alerts", []) + [message])

    def _resume_command(self) -> str:
        nproc = f" --nproc {self.world.size}" if self.world.several else ""
        return f"leantune train --resume {shlex.quote(str(self.run.path))}{nproc}"

    def _stopped(self, status: str, stop: Exception):
        self.run.update_info(status=status, stopped_at_step=self.progress.step, billed=self.clock.record(self.price))
        raise stop

    def _stop_if_budget_spent(self) -> None:
        """Loading and preparing are billed too: a budget they already used up stops the run before its first step."""
        if self.guard.spent_before_training():
            fix = f"Raise the budget in {self.run.config_path} and resume with `{self._resume_command()}`."
            self._stopped("stopped-by-budget", BudgetError(self.guard.spent_message(self.progress.step, fix)))

    def _finish(self, loss: float, eval_loss: float | None) -> TrainResult:
        """Save, report, evaluate (time-boxed), and bill the whole run."""
        cfg = self.config
        with self.clock.phase("checkpoint"):
            if self.world.several:
                # every process's peak so far (the plan is per process); the model is still sharded here
                self.run.update_info(peak_memory_mb_per_process=[round(m, 1) for m in self.world.gather(peak_memory_mb())])
                self._save_gathered()
                if not self.world.main:
                    return self.result(loss, eval_loss)
            else:
                self.method.save(self.model, self.tokenizer, self.run)
            write_report(self.run, cfg, self.result(loss, eval_loss))
        self.run.update_info(status="completed", finished=time.time(), final_loss=loss, eval_loss=eval_loss,
                             billed=self.clock.record(self.price))
        with self.clock.phase("eval"):
            evaluation = evaluate_after_training(
                self.model, self.tokenizer, self.config, self.eval_tasks, self.run, self.device, self.progress.elapsed_s,
                self.guard.seconds_left_for_evaluation(), self.guard.cost_so_far(), self.note) if self.eval_tasks else None
        billed = self.clock.record(self.price)  # billed to here: what follows is a fraction of a second
        result = self.result(loss, eval_loss)
        result.evaluation, result.billed_s, result.cost_usd = evaluation, billed["seconds"], billed["usd"]
        self.run.update_info(status="completed", billed=billed)
        replace_report_section(self.run, "## Cost", cost_section(billed))
        self.loggers.finish(self.run, "completed", {
            "cost_usd": result.cost_usd, "usd_per_hour": self.price.usd_per_hour, "price_source": self.price.source,
            "billed_s": result.billed_s, "device": self.device, "tokens": result.tokens,
            "gpu_hours": result.billed_s / 3600 if self.device == "cuda" else 0.0,
            "method": cfg.method.name, "objective": cfg.objective.name, "project": cfg.output.project})
        budget_alerts(RunIndex(self.run.path.parent), cfg.output.project, self.note)
        return result

    def _save_gathered(self) -> None:
        """Several processes: the trained weights gathered whole onto rank 0 (a collective every rank joins), saved
        there in the format one process writes; then the processes part and rank 0 evaluates a model loaded back
        from what it saved (the sharded one cannot run alone)."""
        whole = distributed.gathered_state(self.model, self.method.trains_base_weights)
        if self.world.main:
            self.method.save(self.model, self.tokenizer, self.run, state_dict=whole)
        self.world.barrier()
        self.world.stop()
        if self.world.main:
            trained = load_trained(self.run, self.device)
            self.model = self.forward_model = trained.model

    def planned_cost_usd(self) -> float | None:
        """The plan's training time at the run's price; None when either is unknown."""
        return None if self.planned_s is None else cost_usd(self.planned_s, self.price)

    # ------------------------------------------------------------------ log
    def log_step(self, loss: float, tokens: int, step_seconds: float, extra: dict) -> dict:
        p = self.progress
        record = {"step": p.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0], "tokens": p.tokens,
                  "tokens_per_s": tokens / step_seconds, "peak_memory_mb": round(peak_memory_mb(), 1),
                  "elapsed_s": round(p.elapsed_s, 3), "billed_s": round(self.clock.seconds(), 3),
                  "cost_usd": self.guard.cost_so_far(), **extra}
        projected = self.guard.projected_cost(p.step, self.total_steps, p.step - self.first_step)
        if projected is not None:
            record["projected_cost_usd"] = projected
        self.method.log(self.model, record, self.run, p.step, self.total_steps)
        self.loggers.metrics(record)
        return record

    def log_eval(self) -> float:
        started = time.perf_counter()
        with self.clock.phase("eval"), torch.no_grad(), eval_mode(self.forward_model):
            eval_loss, extra = self.objective.eval_loss(self.forward_model, self.batches, self.eval_data)
        self.guard.observe_eval(time.perf_counter() - started)
        if self.progress.best_eval_loss is None or eval_loss < self.progress.best_eval_loss:
            self.progress.best_eval_loss = eval_loss
        self.loggers.metrics({"step": self.progress.step, "eval_loss": eval_loss, **extra})
        shown = "".join(f", {k.removeprefix('eval_').replace('_', ' ')} {v:.3f}" for k, v in extra.items())
        self.note(f"step {self.progress.step}: eval loss {eval_loss:.4f}{shown} on {len(self.eval_data)} examples")
        return eval_loss

    # ------------------------------------------------------------------ save
    def save_checkpoint(self) -> Path:
        started = time.perf_counter()
        with self.clock.phase("checkpoint"):
            keep = self.config.training.keep_checkpoints
            extra = {"method": self.method.state(self.model), "loss_scaler": self.scaling.state_dict()}
            if self.world.several:
                path = save_sharded_checkpoint(self.run.checkpoints, self.model, self.optimizer, self.scheduler,
                                               self.progress, keep, self.world, extra)
            else:
                path = save_checkpoint(self.run.checkpoints, self.model, self.optimizer, self.scheduler, self.progress,
                                       keep, extra=extra)
        self.guard.observe_save(time.perf_counter() - started)
        self.run.update_info(billed=self.clock.record(self.price))
        return path

    def result(self, loss: float, eval_loss: float | None) -> TrainResult:
        p = self.progress
        return TrainResult(
            run_dir=self.run.path, steps=p.step, final_loss=loss, eval_loss=eval_loss, tokens=p.tokens,
            elapsed_s=p.elapsed_s, tokens_per_s=p.tokens / p.elapsed_s if p.elapsed_s else 0.0,
            peak_memory_mb=peak_memory_mb(), cost_usd=self.guard.cost_so_far(), billed_s=self.clock.seconds(),
            model=self.model, tokenizer=self.tokenizer, eval_examples=self.eval_examples)

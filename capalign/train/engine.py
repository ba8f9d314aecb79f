"""One training engine for pretrain and align, on accelerate.

It owns devices and mixed precision (accelerate), AdamW with decoupled weight decay, cosine schedule
with warm-up, gradient clipping and accumulation, deterministic data order, skipping of batches whose
loss or gradients are not finite, metrics.jsonl, atomic checkpoints with resume, Ctrl-C saving,
periodic validation with best-model keeping (by validation loss in `best-loss/`, by a validation
metric in `best-metric/`), early stopping with patience, optional trackers (TensorBoard, Weights &
Biases) through accelerate, and a learning-curve PNG.

`batch_size` is the global batch: with N processes (`torchrun` / `accelerate launch`) each process
gets 1/N of every batch of the same seeded order (accelerate's `split_batches`), so N processes train
on the same examples in the same order as one process; see capalign.distributed for the loss side.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from capalign import ui
from capalign.config import TrainConfig
from capalign.devices import resolve_device
from capalign.errors import UserError
from capalign.runs import atomic_write_text, write_errors
from capalign.train import checkpoints
from capalign.train.reports import plot_curves

# Consecutive micro-batches with a non-finite loss or gradient norm after which training stops as
# diverged: a few are normal (an fp16 overflow, one odd batch); this many means the weights are broken.
MAX_CONSECUTIVE_NONFINITE = 20

LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class EngineState:
    """What a checkpoint needs besides weights, optimiser and RNG states."""

    step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    skipped_nonfinite: int = 0
    best_val_loss: float | None = None
    best_metric: float | None = None
    validations_without_improvement: int = 0
    stopped_early: bool = False


class Engine:
    """Runs `loss_fn` over `train_set` batches and updates `module`'s trainable parameters."""

    def __init__(
        self,
        module: torch.nn.Module,
        loss_fn: LossFn,
        train_set,
        collate,
        settings: TrainConfig,
        run_dir: Path,
        *,
        validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        save_best: Callable[[torch.nn.Module, Path], None] | None = None,
        description: str = "train",
        tracker_config: dict | None = None,
        step_offset: int = 0,
        log_extra: dict | None = None,
        remedy: str = "lower --lr",
    ):
        self.settings = settings
        self.remedy = remedy  # what a diverged run's message suggests
        self.run_dir = Path(run_dir)
        self.loss_fn, self.validate, self.save_best = loss_fn, validate, save_best
        self.description = description
        # Logged steps continue across consecutive engines on one run (align rounds), which also
        # tag their records (e.g. {"round": 2}).
        self.step_offset, self.log_extra = step_offset, log_extra or {}
        _release_accelerator_state(settings.mixed_precision)
        device = resolve_device(settings.device)
        if device.type == "cuda" and device.index is not None and "LOCAL_RANK" not in os.environ:
            torch.cuda.set_device(device)  # one process on the GPU the user named
        self.accelerator = Accelerator(
            cpu=device.type == "cpu",
            mixed_precision=settings.mixed_precision,
            gradient_accumulation_steps=settings.grad_accum,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, split_batches=True,
                                                      non_blocking=device.type == "cuda"),
            log_with=_tracker(settings.tracker),
            project_dir=str(self.run_dir),
        )
        processes = self.accelerator.num_processes
        if settings.batch_size % processes:
            raise UserError(f"--batch-size ({settings.batch_size}) is the global batch and must be divisible by the "
                            f"number of processes ({processes}).")
        if settings.tracker:
            self.accelerator.init_trackers(self.run_dir.name, config=_flat(tracker_config or {}))
        set_seed(settings.seed)
        loader = DataLoader(
            train_set,
            batch_size=settings.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(settings.seed),
            drop_last=len(train_set) > settings.batch_size,
            **loader_workers(device, settings.augment),
        )
        steps_per_epoch = max(1, math.ceil(len(loader) / settings.grad_accum))
        self.total_steps = settings.max_steps or settings.epochs * steps_per_epoch
        optimizer = torch.optim.AdamW(_param_groups(module, settings.weight_decay), lr=settings.lr)
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, int(settings.warmup_ratio * self.total_steps), self.total_steps
        )
        self.module, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            module, optimizer, loader, scheduler
        )
        self.state = EngineState()
        self._stop: list[int] = []  # signals received (see fit)
        self._nonfinite_in_a_row = 0  # not checkpointed: a resumed run gets the full allowance again
        self._rng_to_restore: torch.Tensor | None = None
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoints = self.run_dir / "checkpoints"

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write weights, optimiser, scheduler, RNG and engine state under a temporary name, fsync and
        seal them with a manifest, rename into place, then drop all but the newest checkpoints. Weights
        that are no longer finite are never saved: training stops as diverged, the last good
        checkpoint kept."""
        self._refuse_nonfinite_weights()
        self.accelerator.wait_for_everyone()
        final = self.checkpoints / f"{checkpoints.PREFIX}{self.state.step:08d}"
        partial = final.with_name(final.name + ".partial")
        with write_errors(partial):
            if self.accelerator.is_main_process:
                self.checkpoints.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(partial, ignore_errors=True)
            try:
                self.accelerator.save_state(str(partial))
                if self.accelerator.is_main_process:
                    (partial / "engine_state.json").write_text(json.dumps(asdict(self.state)))
                    checkpoints.seal(partial)
                    if final.exists():
                        shutil.rmtree(final)
                    partial.rename(final)
                    checkpoints.fsync_dir(self.checkpoints)
                    atomic_write_text(self.checkpoints / "latest.json", json.dumps({"path": final.name}))  # for people
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)  # the previous checkpoint stays untouched
                raise
        if self.accelerator.is_main_process:
            checkpoints.prune(self.checkpoints, self.settings.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return final

    def _refuse_nonfinite_weights(self) -> None:
        """Stop as diverged when a parameter holds NaN or inf (one host sync, only when saving)."""
        finite = all(bool(torch.isfinite(p).all()) for p in self.module.parameters() if p.requires_grad)
        if not finite:
            self._diverged("the weights are no longer finite")

    def _diverged(self, what: str) -> None:
        """Raise the one-line error of a diverged run, naming the checkpoint a --resume would use."""
        try:
            path, _ = checkpoints.newest_intact(self.checkpoints)
        except UserError:  # checkpoints exist, none intact
            path = None
        where = f"the last good checkpoint is {path}" if path else "no intact resume checkpoint was written yet"
        raise UserError(f"training diverged: {what} at step {self.state.step + self.step_offset}; "
                        f"{self.remedy}; {where}.")

    def resume(self) -> bool:
        """Load the newest intact checkpoint if there is one (saying which damaged ones were passed
        over); returns whether it did. metrics.jsonl keeps the records up to where training continues
        (with none, up to `step_offset`: an earlier round's)."""
        path, passed_over = checkpoints.newest_intact(self.checkpoints)
        for reason in passed_over:
            ui.err_console.print(f"[yellow]warning:[/yellow] skipping checkpoint {reason}", highlight=False)
        if path is None:
            self._keep_metrics_up_to(self.step_offset)
            return False
        if passed_over:
            ui.err_console.print(f"Resuming from the newest intact checkpoint, {path.name}.", highlight=False)
        self.state = checkpoints.restore(self.accelerator, path, EngineState)
        # Starting the data iterator draws from the global torch RNG; re-apply the checkpoint's
        # state after that draw so dropout continues exactly as in an uninterrupted run.
        self._rng_to_restore = torch.get_rng_state()
        self._keep_metrics_up_to(self.state.step + self.step_offset)
        return True

    def _keep_metrics_up_to(self, step: int) -> None:
        """Drop metrics.jsonl records past `step` (logged after the point training continues from)."""
        if self.accelerator.is_main_process and self.metrics_path.is_file():
            kept = [l for l in self.metrics_path.read_text().splitlines() if json.loads(l)["step"] <= step]
            atomic_write_text(self.metrics_path, "".join(l + "\n" for l in kept))

    # ------------------------------------------------------------------ loop

    def fit(self) -> EngineState:
        """Train to `total_steps`. SIGTERM (schedulers, `timeout`) and SIGINT (Ctrl-C) write a checkpoint
        at the next step boundary, say where, and exit with 128 + the signal number; a second signal
        exits at once."""
        if self.state.step == 0:  # a fresh start (also into an --overwrite'd folder): no earlier records of its steps
            self._keep_metrics_up_to(self.step_offset)
        with stop_signals() as stop:
            self._stop = stop
            try:
                self._loop()
            except KeyboardInterrupt:  # raised where no handler could be installed (not the main thread)
                stop.append(signal.SIGINT)
            if stop:
                path = self.save_checkpoint()
                ui.err_console.print(f"Stopped by {signal.Signals(stop[0]).name}: checkpoint saved at {path}; "
                                     "continue with --resume.", highlight=False, soft_wrap=True)
                raise SystemExit(128 + stop[0])
        return self.state

    def _loop(self) -> None:
        settings, acc = self.settings, self.accelerator
        window: dict[str, list[torch.Tensor]] = {}
        started, samples = time.perf_counter(), 0
        self.module.train()  # loaded models (from_pretrained) and pair building leave it in eval mode
        with ui.progress_bar(self.description, self.total_steps) as (progress, task):
            progress.update(task, completed=self.state.step)
            while self.state.step < self.total_steps and not self.state.stopped_early and not self._stop:
                self.loader.set_epoch(self.state.epoch)
                batches = self.loader
                if self.state.batches_done_in_epoch:
                    batches = acc.skip_first_batches(self.loader, self.state.batches_done_in_epoch)
                batches = iter(batches)
                if self._rng_to_restore is not None:
                    torch.set_rng_state(self._rng_to_restore)
                    self._rng_to_restore = None
                for batch in batches:
                    stepped = self._train_batch(batch, window)
                    self.state.batches_done_in_epoch += 1
                    samples += len(next(iter(batch.values()))) * acc.num_processes
                    if not stepped:
                        continue
                    step = self.state.step
                    if step % settings.log_every == 0 or step == self.total_steps:
                        rate = samples / max(time.perf_counter() - started, 1e-9)
                        self._log(window, rate)
                        progress.update(task, info=f"loss {self.last_logged['loss']:.4f} lr {self.last_logged['lr']:.2e} {rate:.0f} samples/s")
                        window = {}
                    if self.validate and (step % settings.eval_every == 0 or step == self.total_steps):
                        self._validate()
                    if step % settings.checkpoint_every == 0 and step < self.total_steps and not self.state.stopped_early:
                        self.save_checkpoint()
                    progress.update(task, completed=step)
                    if step >= self.total_steps or self.state.stopped_early or self._stop:
                        break
                else:
                    self.state.epoch += 1
                    self.state.batches_done_in_epoch = 0
        if self.state.stopped_early:
            ui.console.print(f"Stopped early at step {self.state.step}: validation loss did not improve in "
                             f"{settings.patience} validations (best {self.state.best_val_loss:.4f}).")
        if self.state.skipped_nonfinite:
            ui.console.print(f"[yellow]Skipped {self.state.skipped_nonfinite} batches whose loss or gradients were not finite.")

    def _train_batch(self, batch: dict, window: dict[str, list[torch.Tensor]]) -> bool:
        """One micro-batch; returns True when an optimiser step was taken (or skipped for NaN). Logged
        values stay on the device until `_log`; the two finiteness checks are the only host syncs."""
        acc = self.accelerator
        with acc.accumulate(self.module):
            loss, logs = self.loss_fn(self.module, batch)
            # A sync, but a needed one: whether to run backward and step at all depends on the value.
            if not torch.isfinite(loss.detach()).all():
                self._skip_nonfinite()
                return False
            acc.backward(loss)
            if not acc.sync_gradients:
                return False
            norm = acc.clip_grad_norm_(self.module.parameters(), self.settings.grad_clip)
            if norm is not None and not torch.isfinite(torch.as_tensor(norm)).all():
                self._skip_nonfinite()
                return False
            self._nonfinite_in_a_row = 0
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        self.state.step += 1
        for key, value in {"loss": loss, **logs}.items():
            window.setdefault(key, []).append(value.detach().float().mean())
        return True

    def _skip_nonfinite(self) -> None:
        """Drop a micro-batch whose loss or gradients are not finite; too many in a row is divergence
        (the step never advances otherwise, and training would never end)."""
        self.state.skipped_nonfinite += 1
        self.optimizer.zero_grad()
        self._nonfinite_in_a_row += 1
        if self._nonfinite_in_a_row >= MAX_CONSECUTIVE_NONFINITE:
            self._diverged(f"{self._nonfinite_in_a_row} consecutive non-finite losses")

    def _log(self, window: dict[str, list[torch.Tensor]], rate: float) -> None:
        """Append the window's means (one device-to-host copy per logged value) to metrics.jsonl."""
        record = {"step": self.state.step + self.step_offset, **self.log_extra, "epoch": self.state.epoch}
        for key, values in window.items():
            values = torch.stack(values)
            if self.accelerator.num_processes > 1:  # the global-batch values (each process holds its share)
                values = self.accelerator.reduce(values, "mean")
            values = values.tolist()
            record[key] = sum(values) / len(values)
        record["lr"] = self.scheduler.get_last_lr()[0]
        record["samples_per_s"] = rate
        self.last_logged = record
        self._append(record)

    def _append(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.settings.tracker:
            self.accelerator.log({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
                                 step=record["step"])

    def _validate(self) -> None:
        module = self.accelerator.unwrap_model(self.module)
        module.eval()
        with torch.no_grad():
            results = self.validate(module)
        module.train()
        self._append({"step": self.state.step + self.step_offset, **self.log_extra, **results})
        val_loss = results.get("val_loss")
        if val_loss is not None:
            # a NaN loss is never an improvement: broken weights are not kept as the best
            if math.isfinite(val_loss) and (self.state.best_val_loss is None or val_loss < self.state.best_val_loss):
                self.state.best_val_loss = val_loss
                self.state.validations_without_improvement = 0
                if self.save_best and self.accelerator.is_main_process:
                    self.save_best(module, self.run_dir / "best-loss")
            else:
                self.state.validations_without_improvement += 1
                if self.settings.patience and self.state.validations_without_improvement >= self.settings.patience:
                    self.state.stopped_early = True
        score = results.get("val_select")
        if score is not None and math.isfinite(score) and (self.state.best_metric is None or score > self.state.best_metric):
            self.state.best_metric = score
            if self.save_best and self.accelerator.is_main_process:
                self.save_best(module, self.run_dir / "best-metric")
                atomic_write_text(self.run_dir / "best-metric" / "selection.json",
                                  json.dumps({"step": self.state.step, **results}, indent=1))
        if self.accelerator.is_main_process:
            plot_curves(self.metrics_path, self.run_dir / "curves.png")

    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.module)

    def finish(self) -> None:
        """Drop the resume checkpoints of a run that completed, and release distributed resources
        (needed under torchrun before exit)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            shutil.rmtree(self.checkpoints, ignore_errors=True)
        self.accelerator.end_training()


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Within the block, SIGTERM and SIGINT are recorded in the yielded list (the loop checks it at
    each step boundary) instead of killing the process; a second signal exits at once."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:
            os._exit(128 + signum)
        received.append(signum)
        ui.err_console.print(f"{signal.Signals(signum).name} received: saving a checkpoint after this step "
                             "(send it again to stop at once).", highlight=False, soft_wrap=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _release_accelerator_state(mixed_precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses an Accelerator with another mixed
    precision; let consecutive trainings in one process (the demo, a notebook) each choose theirs.
    The process group (PartialState) is kept."""
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()


def _tracker(name: str | None) -> str | None:
    """The accelerate tracker for --tracker, if its package is installed."""
    if name is None:
        return None
    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(name)
    if package is None:
        raise UserError(f"--tracker must be tensorboard or wandb, got {name}.")
    if importlib.util.find_spec(package) is None:
        raise UserError(f"--tracker {name} needs the {package} package; install it with `pip install {package}`.")
    return name


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested config → flat {'train.lr': ...} of scalars (what trackers accept as hyperparameters)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def loader_workers(device: torch.device, augment: bool) -> dict:
    """DataLoader worker settings: on CUDA, up to 8 worker processes and pinned memory (for
    non-blocking copies); on other devices, or with augmentation (which draws from the main process's
    torch RNG, so checkpoints resume it exactly), batches are made in the main process."""
    workers = min(8, os.cpu_count() or 1) if device.type == "cuda" and not augment else 0
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": device.type == "cuda"}


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; biases, norms and scalars (e.g. the logit scale) are not decayed."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def average_losses(module, dataset, collate, loss_fn: LossFn, batch_size: int, prefix: str) -> dict[str, float]:
    """Sample-weighted means of `loss_fn`'s loss and logged parts over `dataset`, keys prefixed."""
    device = next(module.parameters()).device
    sums: dict[str, float] = {}
    count = 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss, logs = loss_fn(module, batch)
        size = len(next(iter(batch.values())))
        for key, value in {"loss": loss, **logs}.items():
            sums[key] = sums.get(key, 0.0) + float(value) * size
        count += size
    return {f"{prefix}{key}": total / count for key, total in sums.items()}

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

Read in run order: `Engine.__init__` (accelerator, tracker, data, optimiser and schedule), `resume`
(the newest intact checkpoint), `fit` (signals around `_loop`, whose body is the step order), then
the steps themselves.
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
from accelerate.utils import DataLoaderConfiguration, send_to_device, set_seed
from torch.utils.data import DataLoader, IterableDataset
from transformers import get_cosine_schedule_with_warmup

from capalign import reporting
from capalign.config import TrainConfig
from capalign.data.streaming import worker_errors
from capalign.devices import resolve_device
from capalign.errors import ConfigError, InputError, MissingError
from capalign.runs import atomic_write_text, write_errors
from capalign.train import checkpoints
from capalign.train.reports import plot_curves

# Consecutive micro-batches with a non-finite loss or gradient norm after which training stops as
# diverged: a few are normal (an fp16 overflow, one odd batch); this many means the weights are broken.
MAX_CONSECUTIVE_NONFINITE = 20

LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]
Window = dict[str, list[torch.Tensor]]  # logged values since the last record, still on the device


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
        shown: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.loss_fn, self.validate, self.save_best = loss_fn, validate, save_best
        self.description = description
        self.remedy = remedy  # what a diverged run's message suggests
        self.shown = shown or {}  # logged values the progress bar shows besides the loss: {key: label}
        # Logged steps continue across consecutive engines on one run (align rounds), which also
        # tag their records (e.g. {"round": 2}).
        self.step_offset, self.log_extra = step_offset, log_extra or {}
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoints = self.run_dir / "checkpoints"

        device = resolve_device(settings.device)
        self.accelerator = _accelerator(settings, device, self.run_dir)
        _check_global_batch(settings.batch_size, self.accelerator.num_processes)
        self._start_tracker(tracker_config)
        set_seed(settings.seed)
        # A stream (IterableDataset) splits itself across processes and workers and has no length:
        # its loader makes this process's share of each batch and is not handed to accelerate.
        self.streamed = isinstance(train_set, IterableDataset)
        if self.streamed and not settings.max_steps:
            raise ConfigError("streamed training data has no length; pass --max-steps N.")
        loader = _loader(train_set, collate, settings, device, self.accelerator.num_processes)
        self.total_steps = settings.max_steps or settings.epochs * max(1, math.ceil(len(loader) / settings.grad_accum))
        optimizer, scheduler = _optimiser(module, settings, self.total_steps)
        if self.streamed:
            self.module, self.optimizer, self.scheduler = self.accelerator.prepare(module, optimizer, scheduler)
            self.loader = loader
        else:
            self.module, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
                module, optimizer, loader, scheduler
            )

        self.state = EngineState()
        self._stop: list[int] = []  # signals received (see fit)
        self._nonfinite_in_a_row = 0  # not checkpointed: a resumed run gets the full allowance again
        self._rng_to_restore: torch.Tensor | None = None

    def _start_tracker(self, tracker_config: dict | None) -> None:
        """Open the --tracker run, its hyperparameters the flattened run config."""
        if self.settings.tracker:
            self.accelerator.init_trackers(self.run_dir.name, config=_flat(tracker_config or {}))

    # ------------------------------------------------------------------ resume

    def resume(self) -> bool:
        """Load the newest intact checkpoint if there is one (saying which damaged ones were passed
        over); returns whether it did. metrics.jsonl keeps the records up to where training continues
        (with none, up to `step_offset`: an earlier round's)."""
        path, passed_over = checkpoints.newest_intact(self.checkpoints)
        for reason in passed_over:
            reporting.log.warning(f"warning: skipping checkpoint {reason}")
        if path is None:
            self._keep_metrics_up_to(self.step_offset)
            return False
        if passed_over:
            reporting.log.warning(f"Resuming from the newest intact checkpoint, {path.name}.")
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

    # ------------------------------------------------------------------ fit

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
                self._checkpoint_and_exit(stop[0])
        return self.state

    def _loop(self) -> None:
        """Optimiser steps until a stop condition holds: batch → forward/backward (accumulating) →
        clip → step → log → validate/select → checkpoint → stop conditions."""
        window: Window = {}
        throughput = _Throughput(self.accelerator.num_processes)
        self.module.train()  # loaded models (from_pretrained) and pair building leave it in eval mode
        with reporting.progress(self.description, self.total_steps) as advance:
            advance(completed=self.state.step)
            for batch in self._batches():
                stepped = self._train_batch(batch, window)
                self.state.batches_done_in_epoch += 1
                throughput.count(batch)
                if not stepped:
                    continue  # accumulating, or a skipped non-finite batch: not a step boundary
                if self._due(self.settings.log_every):
                    advance(info=self._bar_info(self._log(window, throughput.rate())))
                    window = {}
                if self.validate and self._due(self.settings.eval_every):
                    self._validate()
                if self._checkpoint_due():
                    self.save_checkpoint()
                advance(completed=self.state.step)
                if not self._keep_training():
                    break
        self._report_ending()

    # ------------------------------------------------------------------ batches

    def _batches(self) -> Iterator[dict]:
        """Training batches in the seeded order, epoch after epoch while training goes on, from where
        the state stands (`_loop` counts them as done once trained on)."""
        while self._keep_training():
            if self.streamed:  # one endless epoch; the stream skips what a resumed run trained on
                self.loader.dataset.resume_after(self.state.batches_done_in_epoch, self.loader.batch_size)
                with worker_errors():
                    batches = iter(self.loader)
                    self._restore_rng()
                    yield from (send_to_device(b, self.accelerator.device, non_blocking=self.loader.pin_memory)
                                for b in batches)
                return
            self.loader.set_epoch(self.state.epoch)
            batches = iter(self._rest_of_epoch())
            self._restore_rng()
            with worker_errors():  # a damaged image found in a loader worker stays one line
                yield from batches
            self.state.epoch += 1
            self.state.batches_done_in_epoch = 0

    def _rest_of_epoch(self):
        """The loader, past the batches of this epoch a resumed run already trained on."""
        done = self.state.batches_done_in_epoch
        return self.accelerator.skip_first_batches(self.loader, done) if done else self.loader

    def _restore_rng(self) -> None:
        """Once, after a resume: the checkpoint's torch RNG state (see resume)."""
        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    # ------------------------------------------------------------------ one micro-batch

    def _train_batch(self, batch: dict, window: Window) -> bool:
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

    # ------------------------------------------------------------------ at a step boundary

    def _due(self, every: int) -> bool:
        """Whether a periodic action (logging, validation) falls on this step; the last step always."""
        return self.state.step % every == 0 or self.state.step == self.total_steps

    def _log(self, window: Window, rate: float) -> dict:
        """Append the window's means (one device-to-host copy per logged value) to metrics.jsonl;
        returns the record."""
        record = {"step": self.state.step + self.step_offset, **self.log_extra, "epoch": self.state.epoch}
        for key, values in window.items():
            values = torch.stack(values)
            if self.accelerator.num_processes > 1:  # the global-batch values (each process holds its share)
                values = self.accelerator.reduce(values, "mean")
            values = values.tolist()
            record[key] = sum(values) / len(values)
        record["lr"] = self.scheduler.get_last_lr()[0]
        record["samples_per_s"] = rate
        self._append(record)
        return record

    def _bar_info(self, record: dict) -> str:
        """The progress bar's text for a logged record: loss, the `shown` values, lr, throughput."""
        extra = "".join(f" {label} {record[key]:.4f}" for key, label in self.shown.items() if key in record)
        return f"loss {record['loss']:.4f}{extra} lr {record['lr']:.2e} {record['samples_per_s']:.0f} samples/s"

    def _append(self, record: dict) -> None:
        """One record into metrics.jsonl (main process) and to the tracker."""
        if self.accelerator.is_main_process:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.settings.tracker:
            self.accelerator.log({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
                                 step=record["step"])

    def _validate(self) -> None:
        """Run `validate` in eval mode, record its results, keep the best models, redraw the curves."""
        module = self.accelerator.unwrap_model(self.module)
        module.eval()
        with torch.no_grad():
            results = self.validate(module)
        module.train()
        self._append({"step": self.state.step + self.step_offset, **self.log_extra, **results})
        if results.get("val_loss") is not None:
            self._select_by_loss(module, results["val_loss"])
        if results.get("val_select") is not None:
            self._select_by_metric(module, results)
        if self.accelerator.is_main_process:
            plot_curves(self.metrics_path, self.run_dir / "curves.png")

    def _select_by_loss(self, module: torch.nn.Module, val_loss: float) -> None:
        """Keep `best-loss/` on an improvement; count the validations without one (early stopping)."""
        # a NaN loss is never an improvement: broken weights are not kept as the best
        if math.isfinite(val_loss) and (self.state.best_val_loss is None or val_loss < self.state.best_val_loss):
            self.state.best_val_loss = val_loss
            self.state.validations_without_improvement = 0
            self._save_best(module, "best-loss")
            return
        self.state.validations_without_improvement += 1
        if self.settings.patience and self.state.validations_without_improvement >= self.settings.patience:
            self.state.stopped_early = True

    def _select_by_metric(self, module: torch.nn.Module, results: dict[str, float]) -> None:
        """Keep `best-metric/` (with the validation results in selection.json) when the score improves."""
        score = results["val_select"]
        if math.isfinite(score) and (self.state.best_metric is None or score > self.state.best_metric):
            self.state.best_metric = score
            if self._save_best(module, "best-metric"):
                atomic_write_text(self.run_dir / "best-metric" / "selection.json",
                                  json.dumps({"step": self.state.step, **results}, indent=1))

    def _save_best(self, module: torch.nn.Module, folder: str) -> bool:
        """`save_best` into run_dir/`folder` (main process); returns whether it saved."""
        if not (self.save_best and self.accelerator.is_main_process):
            return False
        self.save_best(module, self.run_dir / folder)
        return True

    def _checkpoint_due(self) -> bool:
        """A resume checkpoint every `checkpoint_every` steps, except at the end (nothing to resume)."""
        return (self.state.step % self.settings.checkpoint_every == 0 and self.state.step < self.total_steps
                and not self.state.stopped_early)

    def _keep_training(self) -> bool:
        """The stop conditions: the last step reached, stopped early, or a signal received."""
        return self.state.step < self.total_steps and not self.state.stopped_early and not self._stop

    def _report_ending(self) -> None:
        """Say why training ended early and how many batches it skipped, if so."""
        if self.state.stopped_early:
            reporting.log.info(f"Stopped early at step {self.state.step}: validation loss did not improve in "
                               f"{self.settings.patience} validations (best {self.state.best_val_loss:.4f}).")
        if self.state.skipped_nonfinite:
            reporting.log.info(f"Skipped {self.state.skipped_nonfinite} batches whose loss or gradients were not finite.")

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write weights, optimiser, scheduler, RNG and engine state as a sealed checkpoint, then drop
        all but the newest checkpoints. Weights that are no longer finite are never saved: training
        stops as diverged, the last good checkpoint kept."""
        self._refuse_nonfinite_weights()
        self.accelerator.wait_for_everyone()
        final = self.checkpoints / f"{checkpoints.PREFIX}{self.state.step:08d}"
        self._write_checkpoint(final)
        if self.accelerator.is_main_process:
            checkpoints.prune(self.checkpoints, self.settings.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return final

    def _write_checkpoint(self, final: Path) -> None:
        """Save under a temporary name, fsync and seal with a manifest, rename into place; a failure
        leaves the previous checkpoint untouched."""
        partial = final.with_name(final.name + ".partial")
        main = self.accelerator.is_main_process
        with write_errors(partial):
            if main:
                self.checkpoints.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(partial, ignore_errors=True)
            # A leftover of a write killed mid-way is gone before any process writes into the new one
            # (else the main process's clean-up removes what the others already wrote, or they fail).
            self.accelerator.wait_for_everyone()
            try:
                self.accelerator.save_state(str(partial))
                if main:
                    (partial / checkpoints.ENGINE_STATE).write_text(json.dumps(asdict(self.state)))
                    checkpoints.seal(partial)
                    if final.exists():
                        shutil.rmtree(final)
                    partial.rename(final)
                    checkpoints.fsync_dir(self.checkpoints)
                    atomic_write_text(self.checkpoints / "latest.json", json.dumps({"path": final.name}))  # for people
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise

    def _refuse_nonfinite_weights(self) -> None:
        """Stop as diverged when a parameter holds NaN or inf (one host sync, only when saving)."""
        finite = all(bool(torch.isfinite(p).all()) for p in self.module.parameters() if p.requires_grad)
        if not finite:
            self._diverged("the weights are no longer finite")

    def _diverged(self, what: str) -> None:
        """Raise the one-line error of a diverged run (its settings, e.g. the learning rate, do not
        train this model), naming the checkpoint a --resume would use."""
        try:
            path, _ = checkpoints.newest_intact(self.checkpoints)
        except InputError:  # checkpoints exist, none intact
            path = None
        where = f"the last good checkpoint is {path}" if path else "no intact resume checkpoint was written yet"
        raise ConfigError(f"training diverged: {what} at step {self.state.step + self.step_offset}; "
                          f"{self.remedy}; {where}.")

    def _checkpoint_and_exit(self, signum: int) -> None:
        """After a stop signal: save a checkpoint, say where, exit with 128 + the signal number."""
        path = self.save_checkpoint()
        reporting.log.warning(f"Stopped by {signal.Signals(signum).name}: checkpoint saved at {path}; "
                              "continue with --resume.")
        raise SystemExit(128 + signum)

    # ------------------------------------------------------------------ after training

    def unwrapped(self) -> torch.nn.Module:
        """The trained module without accelerate's wrappers."""
        return self.accelerator.unwrap_model(self.module)

    def finish(self) -> None:
        """Drop the resume checkpoints of a run that completed, and release distributed resources
        (needed under torchrun before exit)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            shutil.rmtree(self.checkpoints, ignore_errors=True)
        self.accelerator.end_training()


class _Throughput:
    """Training samples per second since the loop started, every process's share counted."""

    def __init__(self, processes: int):
        self.processes, self.samples, self.started = processes, 0, time.perf_counter()

    def count(self, batch: dict) -> None:
        self.samples += len(next(iter(batch.values()))) * self.processes

    def rate(self) -> float:
        return self.samples / max(time.perf_counter() - self.started, 1e-9)


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
        reporting.log.warning(f"{signal.Signals(signum).name} received: saving a checkpoint after this step "
                              "(send it again to stop at once).")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _accelerator(settings: TrainConfig, device: torch.device, project_dir: Path) -> Accelerator:
    """accelerate on `device`, with the run's mixed precision, accumulation, seedable batch order
    split across processes, and tracker."""
    _release_accelerator_state(settings.mixed_precision)
    if device.type == "cuda" and device.index is not None and "LOCAL_RANK" not in os.environ:
        torch.cuda.set_device(device)  # one process on the GPU the user named
    return Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=settings.mixed_precision,
        gradient_accumulation_steps=settings.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, split_batches=True,
                                                  non_blocking=device.type == "cuda"),
        log_with=_tracker(settings.tracker),
        project_dir=str(project_dir),
    )


def _release_accelerator_state(mixed_precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses an Accelerator with another mixed
    precision; let consecutive trainings in one process (the demo, a notebook) each choose theirs.
    The process group (PartialState) is kept."""
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()


def _tracker(name: str | None) -> str | None:
    """The accelerate tracker for --tracker, if its package is installed (config validation admits
    only tensorboard and wandb, each its own package's name)."""
    if name is not None and importlib.util.find_spec(name) is None:
        raise MissingError(f"--tracker {name} needs the {name} package; install it with `pip install {name}`.")
    return name


def _check_global_batch(batch_size: int, processes: int) -> None:
    """The global batch is split evenly across processes."""
    if batch_size % processes:
        raise ConfigError(f"--batch-size ({batch_size}) is the global batch and must be divisible by the "
                          f"number of processes ({processes}).")


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested config → flat {'train.lr': ...} of scalars (what trackers accept as hyperparameters)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _loader(train_set, collate, settings: TrainConfig, device: torch.device, processes: int = 1) -> DataLoader:
    """Shuffled in the seed's order; the last short batch dropped when there is more than one batch.
    A stream: this process's share of each global batch, in the stream's own order."""
    if isinstance(train_set, IterableDataset):
        return DataLoader(train_set, batch_size=settings.batch_size // processes, collate_fn=collate,
                          **loader_workers(device, settings.augment))
    return DataLoader(
        train_set,
        batch_size=settings.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(settings.seed),
        drop_last=len(train_set) > settings.batch_size,
        **loader_workers(device, settings.augment),
    )


def loader_workers(device: torch.device, augment: bool) -> dict:
    """DataLoader worker settings: on CUDA, up to 8 worker processes and pinned memory (for
    non-blocking copies); on other devices, or with augmentation (which draws from the main process's
    torch RNG, so checkpoints resume it exactly), batches are made in the main process."""
    workers = min(8, os.cpu_count() or 1) if device.type == "cuda" and not augment else 0
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": device.type == "cuda"}


def _optimiser(module: torch.nn.Module, settings: TrainConfig, total_steps: int):
    """AdamW over the trainable parameters and a cosine schedule with linear warm-up to `total_steps`."""
    optimizer = torch.optim.AdamW(_param_groups(module, settings.weight_decay), lr=settings.lr)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps), total_steps)


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

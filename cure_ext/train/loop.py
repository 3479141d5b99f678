"""A training run: the epoch loop over its phases (phases.py), per-epoch evaluation, checkpoints and outputs.

Best checkpoint: the epoch of the method's phase with the highest PGD-20 accuracy on the validation split,
--val-size training images held out before training (stratified, drawn from a generator seeded seed + 4, so
every rank and every resumed run holds out the same ones; --train-limit then takes the first images of the
rest). The test set never chooses anything: each evaluated epoch records its clean and PGD-20 accuracy on
the first --eval-limit test images only to show the course of training, and the final evaluation reports
the last and the best model on the whole test set. With --val-size 0 the last epoch is the best.

The run's random streams, and what last.pt keeps of them: random_streams.py.

A step with a non-finite loss or gradient makes no update; the run then stops with DivergedError (exit 3)
before writing anything for that epoch, or, with --skip-nonfinite, counts the step and goes on.

Under torchrun (see distributed.py) every rank runs this loop on its shard of each batch; rank 0 alone
writes files and prints. DDP broadcasts rank 0's BN buffers before each training forward, but the last
forward of an epoch moves each rank's own: they are broadcast once more after each epoch, so that every rank
evaluates, checkpoints and resumes the same model.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import math
import os
import random
import time
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ..optim import CURESGD
from ..ranks import current
from ..selection import selective_flags
from . import distributed, plots
from .checkpoint import (FORMAT, load_state, model_from_checkpoint, model_spec, read_checkpoint, read_init_weights,
                         read_last, save_atomic)
from .config import TrainConfig
from .data import batches, split_data, train_batch_count
from .device import cpu_threads, resolve_device
from .distributed import agreed, from_main
from .errors import CheckpointError, ConfigError, DivergedError
from .evaluate import evaluate
from .models import build_model
from .phases import Phase, make_scheduler, plan_phases
from .random_streams import ATTACK_SEED_STRIDE, global_rng_state, set_global_rng_state
from .report import epoch_line, write_csv, write_json_atomic
from .stages import restrict_to_stages
from .steps import STEPS, StepSetup


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str, quiet: bool = False):
        self.cfg, self.out = cfg, out_dir
        self.ranks = current()
        if cfg.batch_size < self.ranks.world:
            raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the number of processes "
                              f"({self.ranks.world}): every rank needs an example")
        self.quiet = quiet or not self.ranks.main
        self.device, (self.data, self.val) = agreed(self.ranks, lambda: (resolve_device(cfg.device), split_data(cfg)))
        self.autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cfg.bf16
                         else contextlib.nullcontext)
        self.spec = model_spec(cfg.model, self.data.num_classes, self.data.in_channels)
        self.model = build_model(cfg.model, self.data.num_classes, self.data.in_channels, cfg.seed)
        if cfg.init_checkpoint:
            load_state(self.model, from_main(self.ranks, lambda: read_init_weights(cfg.init_checkpoint)),
                       cfg.init_checkpoint)
        self.model.to(self.device)
        self.phases = plan_phases(cfg)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.attack_gen = torch.Generator(self.device).manual_seed(
            cfg.seed + 1 + self.ranks.rank * ATTACK_SEED_STRIDE)
        self.records: list[dict] = []
        self.best: Optional[dict] = None  # {"epoch", "val_pgd20_acc"} of best.pt, chosen on validation
        self.position = (0, 0)  # (phase index, epochs done in it)
        self.revision_model = None
        self._resume_state: Optional[dict] = None

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    # ---- resume -------------------------------------------------------------------------------------
    def load_last(self) -> None:
        """Continue from last.pt: model, records and random streams now; optimizer, scheduler and revision
        model when their phase is set up."""
        path = self.path("last.pt")
        ckpt = from_main(self.ranks, lambda: read_last(path))
        if ckpt.get("model_spec") != self.spec:
            raise CheckpointError(f"{path} holds a {ckpt.get('model_spec')} model, the run needs {self.spec}")
        if ckpt.get("world_size", 1) != self.ranks.world:  # each rank continues its own attack stream
            raise CheckpointError(f"{path} was written by a run of {ckpt.get('world_size', 1)} process(es); resume "
                                  f"it with as many (torchrun --nproc_per_node), not {self.ranks.world}")
        load_state(self.model, ckpt["model"], path)
        try:
            self.records, self.best = list(ckpt["records"]), ckpt["best"]
            self.position = (int(ckpt["position"]["phase"]), int(ckpt["position"]["phase_epoch"]))
            rng = ckpt["rng"]
            self.data_gen.set_state(rng["data"])
            self.attack_gen.set_state(rng["attack_ranks"][self.ranks.rank] if self.ranks.distributed
                                      else rng["attack"])
            set_global_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: damaged run state ({type(e).__name__}: {str(e)[:200]})") from None
        self._resume_state = ckpt

    # ---- phases -------------------------------------------------------------------------------------
    def setup_phase(self, phase: Phase, resuming: bool):
        """The phase's StepSetup, lr scheduler and trainable parameter names (also used by bench/)."""
        cfg = self.cfg
        if phase.name == "train" and cfg.update_blocks:
            restrict_to_stages(self.model, cfg.update_blocks, cfg.reinit_blocks and not resuming, cfg.seed + 3)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        names, params = [n for n, _ in named], [p for _, p in named]
        self.revision_model, cure = None, {}
        if phase.step == "cure":
            rev = copy.deepcopy(self.model).requires_grad_(False).train()
            if resuming:
                load_state(rev, self._resume_state["revision_model"], self.path("last.pt"))
            rev_params = dict(rev.named_parameters())
            flags = selective_flags(names, cfg.select, self.model.head_name)
            optimizer = CURESGD(
                [{"params": params, "selective": flags}], lr=phase.lr, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay, percentile=cfg.percentile, alpha=cfg.alpha, score=cfg.score,
                conserve=cfg.conserve, revision_rate=cfg.revision_rate, revision_decay=cfg.revision_decay,
                revision_params=[rev_params[n] for n in names], seed=cfg.seed + 2)
            cure = dict(gamma=cfg.gamma, selective=flags, revision_model=rev,
                        score_loss="kl" if cfg.preset == "official" else "ce")
            self.revision_model = rev
        else:
            optimizer = torch.optim.SGD(params, lr=phase.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        setup = StepSetup(self.model, optimizer, params, self.attack_gen, cfg.eps, cfg.attack_step_size,
                          cfg.attack_steps, beta=cfg.beta, autocast=self.autocast, ranks=self.ranks, **cure)
        scheduler = make_scheduler(setup.optimizer, cfg, phase)
        if resuming:
            try:
                setup.optimizer.load_state_dict(self._resume_state["optimizer"])
                scheduler.load_state_dict(self._resume_state["scheduler"])
            except (ValueError, KeyError, RuntimeError) as e:
                raise CheckpointError(f"{self.path('last.pt')}: optimizer state does not fit ({e})") from None
        return setup, scheduler, names

    def _sync_buffers(self) -> None:
        """Rank 0's BN buffers (of the revision model too) on every rank."""
        self.ranks.broadcast_([b for m in (self.model, self.revision_model) if m is not None for b in m.buffers()])

    def train_epoch(self, phase: Phase, setup: StepSetup, names: list, phase_epoch: int, label: str) -> dict:
        """One epoch of the phase's step over the training data (this rank's shards); returns its statistics."""
        cfg, step_fn, world = self.cfg, STEPS[phase.step], self.ranks.world
        n = len(self.data.train_x)
        steps = train_batch_count(n, cfg.batch_size, world)
        setup.forward = distributed.forward_module(self.model, self.device, self.ranks)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        kept_sum, seen, skipped = None, 0, 0
        # A skipped step must leave no trace, but its train-mode forwards already moved the BN running
        # statistics (of the revision model too): keep a copy to put back (buffers are small beside weights).
        buffers = [b for m in (self.model, self.revision_model) if m is not None for b in m.buffers()
                   if b.is_floating_point()] if cfg.skip_nonfinite else []
        bar = tqdm(total=steps, desc=label, disable=self.quiet, leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(batches(self.data.train_x, self.data.train_y, self.data.scale, cfg.batch_size,
                                           self.device, self.data_gen, self.data.augment, ranks=self.ranks)):
            if phase.step == "cure" and cfg.revision_schedule == "linear":
                done = (phase_epoch * steps + i) / (phase.epochs * steps)
                for group in setup.optimizer.param_groups:
                    group["revision_rate"] = cfg.revision_rate * (1.0 - done)
            saved = [b.clone() for b in buffers]
            result = step_fn(setup, x, y, len(y) * world / min(cfg.batch_size, n - i * cfg.batch_size))
            bar.update(1)
            if not result.finite:
                if not cfg.skip_nonfinite:  # the verdict is every rank's: all stop here
                    raise DivergedError(
                        f"non-finite loss or gradient at epoch {len(self.records) + 1} ({label}), step {i + 1} of "
                        f"{steps}: training stopped before that update, and nothing of this epoch was written "
                        "(last.pt, if any, holds the last completed epoch). Lower --lr, or continue with --resume "
                        "--skip-nonfinite to skip such steps")
                for b, v in zip(buffers, saved):
                    b.copy_(v)
                skipped += 1
                continue
            loss_sum += result.loss * len(y)
            correct += (result.logits.argmax(1) == y).sum()
            seen += len(y)
            if result.kept is not None:
                kept_sum = result.kept if kept_sum is None else kept_sum + result.kept
            if seen and not self.quiet and (i % 10 == 9 or i == steps - 1):  # a host sync: not every step
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{100.0 * float(correct) / seen:.1f}")
        bar.close()
        if self.ranks.distributed:  # DDP wrappers sit in reference cycles: free this one (buckets, hooks) now
            setup.forward = self.model
            gc.collect()
        totals = self.ranks.sum_(torch.stack([loss_sum.double(), correct.double(),
                                              torch.tensor(float(seen), dtype=torch.float64, device=self.device)]))
        loss_total, correct_total, seen = totals.tolist()
        seen = seen or math.nan  # every step skipped: no loss to report
        stats = {"loss": loss_total / seen, "train_acc": 100.0 * correct_total / seen}
        if cfg.skip_nonfinite:
            stats["skipped_steps"] = skipped
        if kept_sum is not None and any(setup.selective):
            kept = kept_sum.cpu().tolist()
            sizes = [p.numel() * (steps - skipped) for p in setup.params]
            chosen = [j for j, f in enumerate(setup.selective) if f]
            stats["tensor_update_fraction"] = {names[j]: kept[j] / sizes[j] for j in chosen}
            stats["update_fraction"] = sum(kept[j] for j in chosen) / sum(sizes[j] for j in chosen)
        return stats

    def _evaluate(self, model, final: bool, validation: bool = False) -> dict:
        """Per epoch: clean and PGD-20 on the first --eval-limit test examples, or on the whole validation
        split; final: everything on all test examples. The same attack seeds every time, so that epochs are
        compared on the same random starts."""
        cfg = self.cfg
        return evaluate(model, self.val if validation else self.data, cfg.eps, self.device,
                        step_size=cfg.eval_step_size, steps=cfg.eval_steps, attacks=("pgd20", "cw") if final
                        else ("pgd20",), limit=None if final or validation else cfg.eval_limit,
                        batch_size=cfg.eval_batch_size, seed=cfg.seed, autoattack=final and cfg.autoattack,
                        autocast=self.autocast, ranks=self.ranks, progress=None if self.quiet else tqdm.write)

    def _checkpoint(self, setup, scheduler, position) -> dict:
        """last.pt's content; on every rank (it gathers the ranks' attack streams), saved by rank 0."""
        rng = {"data": self.data_gen.get_state(), "attack": self.attack_gen.get_state(), **global_rng_state()}
        if self.ranks.distributed:
            rng["attack_ranks"] = self.ranks.gather(rng["attack"])
        return {"format": FORMAT, "config": self.cfg.to_dict(), "model_spec": self.spec,
                "world_size": self.ranks.world, **self._training_state(setup), "scheduler": scheduler.state_dict(),
                "position": {"phase": position[0], "phase_epoch": position[1]}, "rng": rng,
                "records": self.records, "best": self.best}

    def _save_best(self, record: dict) -> None:
        self.best = {"epoch": record["epoch"], "val_pgd20_acc": record.get("val_pgd20_acc")}
        ckpt = {"format": FORMAT, "config": self.cfg.to_dict(), "model_spec": self.spec,
                "model": self.model.state_dict(), "record": record}
        from_main(self.ranks, lambda: save_atomic(ckpt, self.path("best.pt")))  # a failed write stops every rank

    # ---- the run ------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        from_main(self.ranks, lambda: os.makedirs(self.out, exist_ok=True))
        start_phase, start_epoch = self.position
        for index, phase in enumerate(self.phases):
            first = start_epoch if index == start_phase else 0
            if index < start_phase or first >= phase.epochs:
                continue
            setup, scheduler, names = self.setup_phase(phase, resuming=first > 0)
            for phase_epoch in range(first, phase.epochs):
                epoch = len(self.records) + 1
                label = f"{phase.name} {phase_epoch + 1}/{phase.epochs}"
                began = time.perf_counter()
                lr = setup.optimizer.param_groups[0]["lr"]
                stats = self.train_epoch(phase, setup, names, phase_epoch, label)
                self._sync_buffers()
                scheduler.step()
                record = {"epoch": epoch, "phase": phase.name, "step": phase.step, "phase_epoch": phase_epoch + 1,
                          "lr": lr, **stats}
                if (phase_epoch + 1) % cfg.eval_every == 0 or phase_epoch + 1 == phase.epochs:
                    acc = self._evaluate(self.model, final=False)
                    record.update(clean_acc=acc["clean_acc"], pgd20_acc=acc["pgd20_acc"])
                    if len(self.val.test_y):
                        val = self._evaluate(self.model, final=False, validation=True)
                        record.update(val_clean_acc=val["clean_acc"], val_pgd20_acc=val["pgd20_acc"])
                if self.ranks.distributed:
                    record["rank_weights_sha256"] = self._rank_digests(setup, epoch)
                record["time_s"] = time.perf_counter() - began
                self.records.append(record)
                if phase.name == "train" and "val_pgd20_acc" in record and (
                        self.best is None or record["val_pgd20_acc"] > self.best["val_pgd20_acc"]):
                    self._save_best(record)
                ckpt = self._checkpoint(setup, scheduler, (index, phase_epoch + 1))
                from_main(self.ranks, lambda: (save_atomic(ckpt, self.path("last.pt")),
                                              write_csv(self.records, self.path("log.csv"))))
                if not self.quiet:
                    tqdm.write(epoch_line(label, record))
        return self._finish()

    def _rank_digests(self, setup: StepSetup, epoch: int) -> list:
        """Every rank's digest of what last.pt keeps of the training state (model, revision model, optimizer):
        equal when the ranks are in step, as they must be."""
        digests = self.ranks.gather(distributed.state_digest(self._training_state(setup)))
        if self.ranks.main and len(set(digests)) > 1:
            tqdm.write(f"warning: after epoch {epoch} the ranks' weights differ (rank_weights_sha256 in "
                       "metrics.json); please report this with the run's options")
        return digests

    def _training_state(self, setup: StepSetup) -> dict:
        return {"model": self.model.state_dict(), "optimizer": setup.optimizer.state_dict(),
                "revision_model": self.revision_model.state_dict() if self.revision_model is not None else None}

    def _finish(self) -> dict:
        began = time.perf_counter()
        last_epoch = len(self.records)
        final = {**self._evaluate(self.model, final=True), "epoch": last_epoch}
        selected_on = "validation" if self.best is not None else "last"
        if self.best is None:  # no validation split or no evaluated epoch in the method's phase: the last model
            self._save_best(self.records[-1] if self.records else {"epoch": 0})
        if self.best["epoch"] == last_epoch:
            best = dict(final)
        else:
            path = self.path("best.pt")
            model = model_from_checkpoint(from_main(self.ranks, lambda: read_checkpoint(path)), path)
            best = {**self._evaluate(model.to(self.device), final=True), "epoch": self.best["epoch"]}
        wall = sum(r["time_s"] for r in self.records) + time.perf_counter() - began
        metrics = {"config": self.cfg.to_dict(), "final": final, "best": best, "best_selected_on": selected_on,
                   "epochs": self.records,
                   "skipped_steps": sum(r.get("skipped_steps", 0) for r in self.records), "wall_time_s": wall,
                   "device": str(self.device), "torch": torch.__version__, "world_size": self.ranks.world}
        from_main(self.ranks, lambda: self._write_outputs(metrics))
        return metrics

    def _write_outputs(self, metrics: dict) -> None:
        write_csv(self.records, self.path("log.csv"))  # again: a kill may have come between last.pt and the log
        write_json_atomic(metrics, self.path("metrics.json"))
        if self.records:
            plots.plot_accuracy(self.records, self.path("accuracy.png"))
            plots.plot_update_fraction(self.records, self.path("update_fraction.png"))


def train(cfg: TrainConfig, out_dir: str, quiet: bool = False, resume: bool = False) -> dict:
    """Run (or, with resume, continue) a training run into out_dir; returns the metrics written there.
    Under torchrun, every process calls this, and they train as one data-parallel run."""
    with distributed.process_group(), cpu_threads(cfg.threads, cfg.model):
        trainer = Trainer(cfg, out_dir, quiet)
        if resume:
            trainer.load_last()
        return trainer.run()

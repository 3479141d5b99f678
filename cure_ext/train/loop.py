"""A training run: its phases, the epoch loop, per-epoch evaluation, checkpoints and outputs.

Phases: natural pre-training (skipped with --init-checkpoint), then the method's phase ("train"); CURE_Eff
instead runs a natural warm-up and CURE inside its --epochs. Every phase gets a fresh optimizer and lr
schedule; the revision model is a copy of the weights entering a CURE phase.

Best checkpoint: the epoch of the method's phase with the highest PGD-20 accuracy on the validation split,
--val-size training images held out before training (stratified, drawn from a generator seeded seed + 4, so
every rank and every resumed run holds out the same ones; --train-limit then takes the first images of the
rest). The test set never chooses anything: each evaluated epoch records its clean and PGD-20 accuracy on
the first --eval-limit test images only to show the course of training, and the final evaluation reports
the last and the best model on the whole test set. With --val-size 0 the last epoch is the best.

Random streams, all seeded from --seed and saved in last.pt: the data generator (order, augmentation), the
attack generator (random starts of the training attacks), CURESGD's own generator (revision draws), and a
fresh generator per evaluation (so evaluating never shifts the training streams). The global torch, numpy and
Python generators are seeded too and saved in last.pt, so that no library drawing from them can make a
resumed run differ from an uninterrupted one.

A step with a non-finite loss or gradient makes no update; the run then stops with DivergedError (exit 3)
before writing anything for that epoch, or, with --skip-nonfinite, counts the step and goes on.

Under torchrun (see distributed.py) every rank runs this loop on its shard of each batch; rank 0 alone
writes files and prints. Each rank draws its attack starts from its own stream, which last.pt keeps for
every rank. DDP broadcasts rank 0's BN buffers before each training forward, but the last forward of an
epoch moves each rank's own: they are broadcast once more after each epoch, so that every rank evaluates,
checkpoints and resumes the same model.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from .. import CURESGD
from . import distributed, plots
from .checkpoint import (FORMAT, load_state, model_from_checkpoint, model_spec, read_checkpoint, read_init_weights,
                         read_last, save_atomic)
from .config import TrainConfig
from .data import batches, load_dataset, train_batch_count
from .errors import CheckpointError, ConfigError, DivergedError
from .evaluate import evaluate
from .models import build_model
from .report import write_csv, write_json_atomic
from .selection import restrict_to_stages, selective_flags
from .steps import STEPS, StepSetup

@dataclass
class Phase:
    name: str  # pretrain | warmup | train
    step: str  # key of steps.STEPS
    epochs: int
    lr: float
    span: int  # epochs the lr schedule spans: the phase's own, or CURE_Eff's whole budget
    offset: int = 0  # where the phase starts inside that span


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    method_step = {"standard": "natural", "pgd-at": "pgd-at", "trades": "trades", "cure": "cure", "cure-eff": "cure"}
    if cfg.method == "cure-eff":  # one schedule over warm-up and CURE, as one run of train_warmup.py
        return [Phase("warmup", "natural", cfg.warmup_epochs, cfg.pretrain_lr, cfg.epochs),
                Phase("train", "cure", cfg.epochs - cfg.warmup_epochs, cfg.lr, cfg.epochs, cfg.warmup_epochs)]
    pre = [] if cfg.init_checkpoint else [Phase("pretrain", "natural", cfg.pretrain_epochs, cfg.pretrain_lr,
                                                cfg.pretrain_epochs)]
    return pre + [Phase("train", method_step[cfg.method], cfg.epochs, cfg.lr, cfg.epochs)]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this PyTorch sees no CUDA device")
    return distributed.rank_device(torch.device(name))


# A rank's attack stream is seeded seed + 1 + rank * ATTACK_SEED_STRIDE: rank 0's is the one-process stream,
# and no rank's seed meets another generator's (seed + 2, seed + 3, seed + 4) for any seed.
ATTACK_SEED_STRIDE = 1_000_003


@contextlib.contextmanager
def cpu_threads(threads: Optional[int], model_name: str):
    """Intra-op CPU threads for the run, restored afterwards. The small cnn runs on one thread: its ops are
    too small to split, and on shared cores spinning worker threads slow it down by 10x or more."""
    previous = torch.get_num_threads()
    wanted = threads or (1 if model_name == "cnn" else previous)
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class LrFactor:
    """The lr multiplier at a phase's epoch e, i.e. at epoch offset + e of the schedule's span. A plain
    object (not a lambda) so that LambdaLR's state dict holds it and checkpoints stay loadable."""

    def __init__(self, schedule: str, span: int, offset: int, milestones, gamma: float):
        self.schedule, self.span, self.offset, self.gamma = schedule, max(1, span), offset, gamma
        self.milestones = sorted({max(1, round(f * span)) for f in milestones})  # fractions -> epochs

    def __call__(self, epoch: int) -> float:
        t = self.offset + epoch
        if self.schedule == "multistep":
            return self.gamma ** sum(t >= m for m in self.milestones)
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t / self.span))
        return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, phase: Phase):
    """Per-epoch lr schedule; multistep milestones are fractions of the span (100 and 150 of 200 epochs)."""
    factor = LrFactor(cfg.lr_schedule, phase.span, phase.offset, cfg.lr_milestones, cfg.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def global_rng_state() -> dict:
    """The global torch, numpy and Python generators, in types that torch.load(weights_only=True) reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                      has_gauss, gauss], "python": random.getstate()}


def set_global_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str, quiet: bool = False):
        self.cfg, self.out = cfg, out_dir
        self.ranks = distributed.current()
        if cfg.batch_size < self.ranks.world:
            raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the number of processes "
                              f"({self.ranks.world}): every rank needs an example")
        self.quiet = quiet or not self.ranks.main
        self.device, (self.data, self.val) = self.ranks.agreed(lambda: (resolve_device(cfg.device), split_data(cfg)))
        self.autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cfg.bf16
                         else contextlib.nullcontext)
        self.spec = model_spec(cfg.model, self.data.num_classes, self.data.in_channels)
        self.model = build_model(cfg.model, self.data.num_classes, self.data.in_channels, cfg.seed)
        if cfg.init_checkpoint:
            load_state(self.model, self.ranks.from_main(lambda: read_init_weights(cfg.init_checkpoint)),
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
        ckpt = self.ranks.from_main(lambda: read_last(path))
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

    def _forward_module(self) -> torch.nn.Module:
        """The module of the training forwards: the model, or under torchrun a new DDP wrapper of it. New every
        epoch: DDP re-buckets the gradients after a wrapper's first step, and with three ranks or more the
        buckets decide the order of the sums; a resumed run, which starts at an epoch with a new wrapper,
        then sums every step as the uninterrupted run did."""
        if not self.ranks.distributed:
            return self.model
        # 1x1 convolutions' weight gradients differ from their bucket only in the strides of size-1 dims (the
        # same memory order), which DDP flags once per process; the copy into the bucket is made either way.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def _sync_buffers(self) -> None:
        """Rank 0's BN buffers (of the revision model too) on every rank."""
        self.ranks.broadcast_([b for m in (self.model, self.revision_model) if m is not None for b in m.buffers()])

    def train_epoch(self, phase: Phase, setup: StepSetup, names: list, phase_epoch: int, label: str) -> dict:
        """One epoch of the phase's step over the training data (this rank's shards); returns its statistics."""
        cfg, step_fn, world = self.cfg, STEPS[phase.step], self.ranks.world
        n = len(self.data.train_x)
        steps = train_batch_count(n, cfg.batch_size, world)
        setup.forward = self._forward_module()
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
        self.ranks.from_main(lambda: save_atomic(ckpt, self.path("best.pt")))  # a failed write stops every rank

    # ---- the run ------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        self.ranks.from_main(lambda: os.makedirs(self.out, exist_ok=True))
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
                self.ranks.from_main(lambda: (save_atomic(ckpt, self.path("last.pt")),
                                              write_csv(self.records, self.path("log.csv"))))
                self._log_epoch(label, record)
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

    def _log_epoch(self, label: str, r: dict) -> None:
        if self.quiet:
            return
        parts = [f"epoch {r['epoch']:3d} [{label}] loss {r['loss']:.3f} train {r['train_acc']:.1f}%"]
        if "val_pgd20_acc" in r:
            parts.append(f"val clean {r['val_clean_acc']:.1f}% PGD-20 {r['val_pgd20_acc']:.1f}%")
        if "clean_acc" in r:
            parts.append(f"test clean {r['clean_acc']:.1f}% PGD-20 {r['pgd20_acc']:.1f}%")
        if "update_fraction" in r:
            parts.append(f"updated {100 * r['update_fraction']:.1f}%")
        parts.append(f"{r['time_s']:.1f}s")
        tqdm.write(" | ".join(parts))

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
            model = model_from_checkpoint(self.ranks.from_main(lambda: read_checkpoint(path)), path)
            best = {**self._evaluate(model.to(self.device), final=True), "epoch": self.best["epoch"]}
        wall = sum(r["time_s"] for r in self.records) + time.perf_counter() - began
        metrics = {"config": self.cfg.to_dict(), "final": final, "best": best, "best_selected_on": selected_on,
                   "epochs": self.records,
                   "skipped_steps": sum(r.get("skipped_steps", 0) for r in self.records), "wall_time_s": wall,
                   "device": str(self.device), "torch": torch.__version__, "world_size": self.ranks.world}
        self.ranks.from_main(lambda: self._write_outputs(metrics))
        return metrics

    def _write_outputs(self, metrics: dict) -> None:
        write_csv(self.records, self.path("log.csv"))  # again: a kill may have come between last.pt and the log
        write_json_atomic(metrics, self.path("metrics.json"))
        if self.records:
            plots.plot_accuracy(self.records, self.path("accuracy.png"))
            plots.plot_update_fraction(self.records, self.path("update_fraction.png"))


def split_data(cfg: TrainConfig):
    """(training and test data, validation split) of the run: the validation split is held out of the whole
    training set first, so that --train-limit never changes which images it holds."""
    # val_size None: the config of a run from before the split (resumed), which held nothing out
    data, val = load_dataset(cfg.dataset, cfg.data_dir).held_out(cfg.val_size or 0, cfg.seed + 4)
    return data.limited(cfg.train_limit, cfg.test_limit), val


def train(cfg: TrainConfig, out_dir: str, quiet: bool = False, resume: bool = False) -> dict:
    """Run (or, with resume, continue) a training run into out_dir; returns the metrics written there.
    Under torchrun, every process calls this, and they train as one data-parallel run."""
    with distributed.process_group(), cpu_threads(cfg.threads, cfg.model):
        trainer = Trainer(cfg, out_dir, quiet)
        if resume:
            trainer.load_last()
        return trainer.run()

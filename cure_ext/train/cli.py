"""Command-line tools: `cure-train` (also `python -m cure_ext.train`), `cure-eval`, `cure-compare`.

Errors in the user's input (options, data, checkpoints, an unwritable output folder) are printed as one
paragraph with exit status 2, without a traceback, and never after overwriting an existing file; a run that
diverges (non-finite loss or gradient) stops with exit status 3, its last good last.pt kept.

Under torchrun, cure-train and cure-eval run as one job over the processes (see distributed.py): rank 0
checks, reads and writes the files and prints the results; an error that every rank meets is printed by
rank 0 alone, one that only some ranks meet by each of them.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from fractions import Fraction
from typing import Callable, Optional, Sequence

from ..presets import PRESETS
from ..ranks import SINGLE, Ranks, current
from . import distributed
from .autoattack import INSTALL, provider
from .checkpoint import load_checkpoint, read_last
from .compare import ABLATIONS, compare_table, run_compare
from .config import METHODS, SELECT_POLICIES, TrainConfig, make_config
from .data import LOADERS, load_dataset
from .device import cpu_threads, resolve_device
from .distributed import agreed, from_main
from .errors import ConfigError, UserError
from .evaluate import evaluate
from .loop import train
from .models import MODELS
from .report import recipes_table, results_table, write_json_atomic


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one paragraph like the others (its default adds a usage of many lines)."""

    def error(self, message: str):
        # Under torchrun every rank parses the same options: rank 0 alone says what is wrong.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if distributed.is_rank0() else None)


def number(text: str) -> float:
    """A float, also written as a fraction such as 8/255."""
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def stage_list(text: str) -> tuple:
    try:
        stages = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected residual stage numbers such as 2,3, got {text!r}") from None
    return stages


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """The options shared by cure-train and cure-compare; all default to None (= not given), so that the
    recipe and the derived defaults of config.make_config apply."""
    a = p.add_argument
    a("--recipe", help="named paper setting (see --list-recipes); default: the dataset's own")
    a("--preset", choices=list(PRESETS), help="CURE as in the paper (default) or as in the authors' code")
    a("--dataset", choices=list(LOADERS), help="default digits (embedded)")
    a("--data-dir", help="folder with the data set's files (fashion-mnist default: /usr/share/datasets/"
                         "fashion-mnist; others: ./data)")
    a("--model", choices=list(MODELS))
    a("--pretrain-epochs", type=int, help="natural pre-training epochs before the adversarial phase")
    a("--epochs", type=int, help="epochs of the method's phase (cure-eff: warm-up included)")
    a("--warmup-epochs", type=int, help="cure-eff: natural epochs at the start of --epochs (default 40%%)")
    a("--batch-size", type=int)
    a("--lr", type=number, help="learning rate of the method's phase (default 0.1)")
    a("--pretrain-lr", type=number, help="learning rate of natural pre-training / warm-up (default --lr)")
    a("--momentum", type=number)
    a("--weight-decay", type=number)
    a("--lr-schedule", choices=["multistep", "cosine", "constant"], help="per phase (default multistep)")
    a("--lr-milestones", type=number, nargs="+", help="multistep: fractions of the phase (default 0.5 0.75)")
    a("--lr-gamma", type=number, help="multistep decay factor (default 0.1)")
    a("--eps", type=number, help="ℓ∞ radius, e.g. 8/255 (digits default 0.2, Fashion-MNIST 0.1)")
    a("--attack-steps", type=int, help="training attack steps (default 10)")
    a("--attack-step-size", type=number, help="training attack step (default eps/4)")
    a("--eval-steps", type=int, help="PGD / CW evaluation steps (default 20)")
    a("--eval-step-size", type=number, help="evaluation attack step (default eps/4 = 2/255 at 8/255)")
    a("--eval-every", type=int, help="evaluate clean + PGD accuracy every N epochs (default 1)")
    a("--eval-limit", type=int, help="test examples of the per-epoch test evaluation, reported only (final: all)")
    a("--train-limit", type=int, help="train on the first N training examples (after --val-size) only")
    a("--val-size", type=int, help="training examples held out (stratified, fixed by --seed) to choose the best "
                                   "checkpoint by PGD-20; 0: best = last epoch (default: digits 144, others 1000)")
    a("--test-limit", type=int, help="evaluate on the first N test examples only (cure-eval --limit N matches)")
    a("--eval-batch-size", type=int)
    a("--percentile", type=number, help="fraction p of each selective tensor conserved per step")
    a("--alpha", type=number, help="weight of the natural gradient in the score")
    a("--beta", type=number, help="weight of the KL term, TRADES and CURE (preset paper 1, official 5)")
    a("--gamma", type=number, help="weight of the revision consistency term")
    a("--score", choices=["abs", "signed"], help="score form (default from --preset)")
    a("--select", choices=list(SELECT_POLICIES), help="which tensors are selective (default from --preset)")
    a("--conserve", choices=["grad", "freeze"], help="grad: zero the gradient (default); freeze: no change at all")
    a("--revision-rate", type=number, help="probability of a revision per step (default 0.2)")
    a("--revision-decay", type=number, help="EMA decay of the revision model (default 0.999)")
    a("--revision-schedule", choices=["constant", "linear"], help="linear: revision rate decays to 0")
    a("--update-blocks", type=stage_list, help="train only these residual stages, e.g. 2,3 (rest frozen)")
    a("--reinit-blocks", action="store_true", default=None, help="re-initialise the --update-blocks stages")
    a("--init-checkpoint", help="start the adversarial phase from this model (skips pre-training)")
    a("--device", help="cpu, cuda or auto (default)")
    a("--threads", type=int, help="CPU threads (default: 1 for the small cnn, else PyTorch's default)")
    a("--bf16", action="store_true", default=None, help="CUDA: bfloat16 autocast for attacks and forwards")
    a("--autoattack", action="store_true", default=None,
      help=f"final evaluation: also AutoAttack, standard version, seeded by --seed (needs: {INSTALL})")
    a("--skip-nonfinite", action="store_true", default=None,
      help="skip (and count) steps whose loss or gradient is not finite, instead of stopping the run")
    a("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def _config_options(args: argparse.Namespace) -> dict:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def _report(prog: str, error: BaseException) -> None:
    if not distributed.reports(error):
        return
    if distributed.launched_world() > 1 and not getattr(error, "shared", False):
        prog = f"{prog} [rank {os.environ.get('RANK', '?')}]"
    sys.stderr.write(f"{prog}: error: {error}\n")  # one write, so that the ranks' lines do not interleave
    sys.stderr.flush()


def _guard(prog: str, body: Callable[[], int], group: bool = True) -> int:
    """Runs a tool's body (under torchrun, inside the process group unless group=False) and reports its
    errors."""
    try:
        with distributed.process_group(leave_together=False) if group else contextlib.nullcontext(
                SINGLE) as ranks:
            return _settled(prog, body, ranks)
    except UserError as e:  # from setting up the process group
        _report(prog, e)
        return e.exit_code


def _settled(prog: str, body: Callable[[], int], ranks: Ranks) -> int:
    try:
        status, error = body(), None
    except (UserError, OSError) as e:  # OSError: the file system refused a write (disk full, read-only, ...)
        _report(prog, e)
        status, error = getattr(e, "exit_code", 2), e
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (a cure-train run continues with --resume --out DIR)", file=sys.stderr)
        return 130
    if error is None or distributed.together(error):
        ranks.barrier()  # leave together, rank 0's report printed: gloo can abort a rank whose peer left early
    return status


def _check_autoattack(wanted: Optional[bool]) -> None:
    if wanted and provider() is None:
        raise ConfigError(f"--autoattack needs AutoAttack, which is not installed: {INSTALL}")


# ---- cure-train -----------------------------------------------------------------------------------------

def train_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cure-train", description=(
        "Train a model with CURE or a baseline. With no options: the main job, CURE (paper preset) on the "
        "embedded digits data, natural pre-training included, then the evaluation table."))
    p.add_argument("--method", choices=list(METHODS), help="default cure")
    p.add_argument("--seed", type=int, help="fixes data order, init, attacks and revision draws (default 0)")
    _add_training_options(p)
    p.add_argument("--out", help="output folder (default runs/<method>-<dataset>-seed<k>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--list-recipes", action="store_true", help="print the named recipes and exit")
    return p


# Options a resumed run may change: where it runs, not what it computes (skip_nonfinite changes only what
# happens at a non-finite step: a run stopped by one continues past it with --resume --skip-nonfinite).
RUNTIME_OPTIONS = ("device", "threads", "skip_nonfinite")


def _resume_config(out: Optional[str], options: dict) -> TrainConfig:
    if not out:
        raise ConfigError("--resume needs --out, the folder of the run to continue")
    cfg = TrainConfig.from_dict(read_last(os.path.join(out, "last.pt"))["config"])
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if k not in RUNTIME_OPTIONS}
    differing = sorted(k for k, v in given.items() if getattr(cfg, k) != v)
    if differing:
        raise ConfigError("--resume continues the stored configuration; these options differ from it: "
                          + ", ".join(f"--{k.replace('_', '-')}" for k in differing))
    for key in RUNTIME_OPTIONS:
        if key in options:
            setattr(cfg, key, options[key])
    return cfg


# Files a run writes into --out; a new run never starts in a folder holding one of them.
OUTPUT_FILES = ("last.pt", "best.pt", "metrics.json", "log.csv")


def writable_folder(out: str) -> None:
    """Create --out and prove it writable before any training (root ignores permission bits, so try it)."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write to the output folder {out}: {e.strerror or e}") from None


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]):
    """Parsed options, or the exit status argparse chose (2 after its one-line usage error, 0 for --help),
    so that the entry points return a status instead of raising SystemExit."""
    try:
        return parser.parse_args(argv), None
    except SystemExit as e:
        return None, e.code if isinstance(e.code, int) else 2


def _run_folder(args: argparse.Namespace, options: dict) -> tuple[TrainConfig, str]:
    """The run's configuration and output folder, checked writable (and, for a new run, free of a run)."""
    if args.resume:
        cfg, out = _resume_config(args.out, options), args.out
    else:
        cfg = make_config(**options)
        out = args.out or os.path.join("runs", f"{cfg.method}-{cfg.dataset}-seed{cfg.seed}-"
                                               f"{time.strftime('%Y%m%d-%H%M%S')}")
        if any(os.path.exists(os.path.join(out, f)) for f in OUTPUT_FILES):
            raise ConfigError(f"{out} already holds a run; continue it with --resume or choose another --out")
    _check_autoattack(cfg.autoattack)  # before the folder is made
    writable_folder(out)
    return cfg, out


def _train(args: argparse.Namespace) -> int:
    options, ranks = _config_options(args), current()
    cfg, out = from_main(ranks, lambda: _run_folder(args, options))
    agreed(ranks, lambda: _check_autoattack(cfg.autoattack))  # every rank runs AutoAttack on its share
    began = time.perf_counter()
    metrics = train(cfg, out, quiet=args.quiet, resume=args.resume)
    if ranks.main:
        final, best = metrics["final"], metrics["best"]
        print(results_table([(f"last (epoch {final['epoch']})", final), (f"best (epoch {best['epoch']})", best)]))
        print(f"test accuracies on {final['n_test']} images; best chosen by "
              + (f"PGD-20 on {cfg.val_size} validation images held out of training"
                 if metrics["best_selected_on"] == "validation" else "none: it is the last epoch"))
        print(f"outputs in {out} ({time.perf_counter() - began:.0f} s)")
    return 0


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    args, status = _parse(train_parser(), argv)
    if args is None:
        return status
    if args.list_recipes:
        if distributed.is_rank0():
            print(recipes_table())
        return 0
    return _guard("cure-train", lambda: _train(args))


# ---- cure-eval ------------------------------------------------------------------------------------------

def eval_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cure-eval", description=(
        "Evaluate a saved model (best.pt or last.pt of a run): clean, PGD-20, CW∞-20, NRR, SUM on the test set "
        "of the data set it was trained on."))
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", help="folder of the data set (default: the one the run used)")
    p.add_argument("--eps", type=number, help="ℓ∞ radius (default: the run's)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--step-size", type=number, help="default eps/4")
    p.add_argument("--limit", type=int, help="first N test examples only")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads (default: 1 for the small cnn, else PyTorch's default)")
    p.add_argument("--autoattack", action="store_true",
                   help=f"also AutoAttack, standard version, seeded by --seed (needs: {INSTALL})")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p


def _eval(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    ranks = current()
    agreed(ranks, lambda: _check_autoattack(args.autoattack))
    model, config = from_main(ranks, lambda: load_checkpoint(args.checkpoint))
    data, device = agreed(ranks, lambda: (
        load_dataset(config["dataset"], args.data_dir or config.get("data_dir")), resolve_device(args.device)))
    eps = args.eps if args.eps is not None else config["eps"]
    with cpu_threads(args.threads, config["model"]):
        result = evaluate(model.to(device), data, eps, device, step_size=args.step_size or eps / 4,
                          steps=args.steps, limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                          autoattack=args.autoattack, ranks=ranks, progress=print if ranks.main else None)
    result["eps"] = eps
    if ranks.main:
        print(results_table([(os.path.basename(args.checkpoint), result)]))
    if args.json:
        from_main(ranks, lambda: write_json_atomic(result, args.json))
    return 0


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    args, status = _parse(eval_parser(), argv)
    if args is None:
        return status
    return _guard("cure-eval", lambda: _eval(args))


# ---- cure-compare ---------------------------------------------------------------------------------------

def compare_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cure-compare", description=(
        "Standard training, PGD-AT, TRADES and CURE under one protocol (same data, budget, seeds, and the "
        "same natural pre-training per seed): a table of mean ± std over seeds, CSV, JSON and trade-off plot."))
    p.add_argument("--methods", nargs="+", choices=list(METHODS) + list(ABLATIONS),
                   default=["standard", "pgd-at", "trades", "cure"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ablations", action="store_true",
                   help="add CURE with score masking only (γ=0, no revision) and with revision only (p=0)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD[:key=value,...]",
                   help="a row of its own: METHOD with these options, e.g. trades-beta6=trades:beta=6 (repeatable)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each in a process of its own (default 1: one after another, in this process)")
    p.add_argument("--deadline", type=number,
                   help="seconds: stop the runs still going then and report what finished (runs in processes)")
    _add_training_options(p)
    p.add_argument("--out", help="output folder (default runs/compare-<dataset>-<time>)")
    return p


def _compare(args: argparse.Namespace) -> int:
    if distributed.launched_world() > 1:
        raise ConfigError("cure-compare runs in one process; for several processes, run each method with "
                          "cure-train under torchrun")
    options = _config_options(args)
    dataset = make_config(**options).dataset  # validates the options before any training
    _check_autoattack(options.get("autoattack"))
    out = args.out or os.path.join("runs", f"compare-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = run_compare(options, args.methods, args.seeds, out, args.ablations, args.quiet, args.variant,
                         args.jobs, args.deadline)
    print(compare_table(result))
    for run in result["unfinished"]:
        print(f"not finished: {run['run']} ({run['reason']}; {run['out']})")
    print(f"outputs in {out}")
    return 1 if result["unfinished"] else 0


def compare_main(argv: Optional[Sequence[str]] = None) -> int:
    args, status = _parse(compare_parser(), argv)
    if args is None:
        return status
    return _guard("cure-compare", lambda: _compare(args), group=False)  # it refuses to run under torchrun

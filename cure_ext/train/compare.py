"""`cure-compare`: the methods under one protocol — same data, budget and seeds — as a table of mean ± std
over seeds with each method's Welch t-test against CURE, a CSV, a JSON and a trade-off plot.

Per seed, the natural pre-training runs once, at --pretrain-lr, and every method starts from it
(`--init-checkpoint`), so the rows differ only in the method's phase (the controlled protocol of the paper's
Table 5); `standard` continues natural training for the same number of epochs. CURE_Eff, if asked for, runs
its own warm-up. Every run of a seed holds out the same validation split (it depends on the seed and
--val-size only), so the pre-training never sees the images that choose the methods' best checkpoints.
Ablations (paper Table 7): score masking only = CURE with γ = 0 and no revision draws; revision only =
CURE with percentile 0.
--variant NAME=METHOD:key=value,... adds rows of one's own (TRADES with β = 6, CURE with the official selection).

With --jobs N the runs are processes of their own (`worker.py`), N at a time, the pre-trainings first: on one
GPU a small model leaves most of it idle, so side-by-side runs finish sooner. The outputs are rewritten as each
run finishes, and --deadline stops what is still running then (each run's last.pt stays resumable), so a study
cut short keeps what it finished. Numbers do not depend on --jobs.

Significance: for every metric, Welch's two-sided t-test (unequal variances, scipy) of each method's per-seed
values against CURE's; a p-value of 0.05 or more is marked "ns" (not significant). The test is undefined
with fewer than two seeds, or when neither side varies: then p is reported as n/a (null in the JSON, nan in
the CSV) and the difference is not called significant either.
"""
from __future__ import annotations

import csv
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

from scipy import stats

from . import plots, worker
from .config import METHODS, TrainConfig, make_config
from .errors import ConfigError
from .loop import train
from .report import format_table, write_json_atomic

ABLATIONS = {"cure-mask-only": ("cure", {"gamma": 0.0, "revision_rate": 0.0}),
             "cure-revision-only": ("cure", {"percentile": 0.0})}
LABELS = {"standard": "standard", "pgd-at": "PGD-AT", "trades": "TRADES", "cure": "CURE", "cure-eff": "CURE_Eff",
          "cure-mask-only": "CURE, score masking only", "cure-revision-only": "CURE, revision only"}
METRICS = [("clean_acc", "clean"), ("pgd20_acc", "PGD-20"), ("cw_acc", "CW∞-20"), ("aa_acc", "AA"),
           ("nrr_cw", "NRR"), ("nrr", "NRR (strongest)"), ("sum", "SUM")]
# Only when the runs ran AutoAttack: its accuracy, and the NRR with the strongest attack (without AutoAttack
# the weaker of PGD-20 and CW∞, which NRR with CW∞ already shows).
AA_METRICS = ("aa_acc", "nrr")
REFERENCE = "cure"
ALPHA = 0.05
TEST_NAME = "Welch's t-test, two-sided, unequal variances (scipy.stats.ttest_ind(equal_var=False))"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def welch_p(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """The p-value of Welch's t-test of a against b; None where the test is undefined (fewer than two values
    on a side, or no variance on either: t is then 0/0 or infinite)."""
    if len(a) < 2 or len(b) < 2 or (statistics.variance(a) == 0 and statistics.variance(b) == 0):
        return None
    with warnings.catch_warnings():  # scipy warns of precision loss when one side is constant (its variance is 0)
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def compared_metrics(runs: Sequence[dict]) -> list[tuple[str, str]]:
    with_aa = bool(runs) and all("aa_acc" in r for r in runs)
    return [(k, h) for k, h in METRICS if with_aa or k not in AA_METRICS]


def parse_variant(text: str) -> tuple[str, str, dict]:
    """`NAME=METHOD[:key=value,...]` (e.g. `trades-beta6=trades:beta=6`): a row of its own, the method run
    with these configuration values (options' names, dashes or underscores)."""
    name, _, rest = text.partition("=")
    method, _, pairs = rest.partition(":")
    if not name or method not in METHODS or name in LABELS:
        raise ConfigError(f"--variant {text!r}: expected NAME=METHOD[:key=value,...] with a new NAME and METHOD one "
                          f"of {', '.join(METHODS)}")
    overrides = {}
    for pair in filter(None, pairs.split(",")):
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in TrainConfig.__dataclass_fields__ or key in ("method", "seed", "init_checkpoint"):
            raise ConfigError(f"--variant {text!r}: {pair!r} is not key=value with a training option as key")
        overrides[key] = _value(value.strip())
    return name, method, overrides


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _rows(methods: Sequence[str], ablations: bool, variants: Sequence[str]) -> dict:
    """{entry: (method, configuration overrides, label)} in table order."""
    rows = {m: (m, {}, LABELS[m]) for m in methods}
    if ablations:
        rows.update({e: (*ABLATIONS[e], LABELS[e]) for e in ABLATIONS})
    for text in variants:
        name, method, overrides = parse_variant(text)
        rows[name] = (method, overrides, name)
    return rows


def run_compare(options: dict, methods: Sequence[str], seeds: Sequence[int], out_dir: str, ablations: bool = False,
                quiet: bool = False, variants: Sequence[str] = (), jobs: int = 1,
                deadline: Optional[float] = None) -> dict:
    """Train every (row, seed) into out_dir/<row>/seed<k>; returns {"runs", "summary", "significance",
    "unfinished"}. With jobs > 1 or a deadline, runs are separate processes, up to `jobs` at a time (the
    pre-trainings first); the outputs are rewritten as each run finishes, and at the deadline (seconds) the
    runs still going are stopped and listed as unfinished."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"{out_dir} is not empty; choose another --out for the comparison")
    if jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    rows = _rows(methods, ablations, variants)
    labels = {entry: label for entry, (_, _, label) in rows.items()}
    plan = [run for seed in seeds for run in _seed_plan(options, rows, seed, out_dir)]
    for run in plan:  # every configuration checked before anything trains
        make_config(**{**run.options, "init_checkpoint": None} if run.after else run.options)
    results: list = []
    os.makedirs(out_dir, exist_ok=True)

    def finished(run: "_Run", metrics: dict) -> None:
        if run.entry is not None:
            results.append({"method": run.entry, "label": labels[run.entry], "seed": run.options["seed"],
                            **{k: metrics["final"][k] for k, _ in METRICS if k in metrics["final"]}})
            _write_outputs(summarize(results, list(rows), labels), out_dir)

    if jobs == 1 and deadline is None:
        unfinished = []
        for run in plan:
            finished(run, train(make_config(**run.options), run.out, quiet))
    else:
        unfinished = _run_processes(plan, jobs, deadline, finished, quiet)
    result = summarize(results, list(rows), labels)
    result["unfinished"] = unfinished
    _write_outputs(result, out_dir)
    return result


@dataclass
class _Run:
    entry: Optional[str]  # the table row; None for a seed's shared natural pre-training
    options: dict
    out: str
    after: Optional["_Run"] = None  # the pre-training it starts from


def _seed_plan(options: dict, rows: dict, seed: int, out_dir: str) -> list:
    base = {**options, "seed": seed}
    natural = make_config(**{**base, "method": "standard"})
    pretrain = None
    if options.get("init_checkpoint") is None and natural.pretrain_epochs > 0 and any(
            method != "cure-eff" for method, _, _ in rows.values()):
        # A standard run whose own phase is the pre-training: its lr and epochs are the pre-training's.
        pretrain = _Run(None, {**base, "method": "standard", "epochs": natural.pretrain_epochs, "pretrain_epochs": 0,
                               "lr": natural.pretrain_lr}, os.path.join(out_dir, "pretrain", f"seed{seed}"))
    plan = [pretrain] if pretrain else []
    for entry, (method, extra, _) in rows.items():
        opts = {**base, **extra, "method": method}
        after = None
        if method == "cure-eff":
            opts.pop("pretrain_epochs", None)
        elif pretrain is not None:
            opts["init_checkpoint"], after = os.path.join(pretrain.out, "last.pt"), pretrain
        plan.append(_Run(entry, opts, os.path.join(out_dir, entry, f"seed{seed}"), after))
    return plan


def _run_processes(plan: list, jobs: int, deadline: Optional[float], finished, quiet: bool) -> list:
    """Runs the plan as `python -m cure_ext.train.worker` processes, up to `jobs` at once, each started once the
    pre-training it needs has finished; returns the runs not finished (failed, after a failed pre-training, or
    stopped at the deadline), each with the reason."""
    stop_at = None if deadline is None else time.monotonic() + deadline
    waiting, running, done, failed, unfinished = list(plan), [], set(), set(), []

    def give_up(run: _Run, reason: str) -> None:
        failed.add(id(run))
        unfinished.append({"run": _name(run), "out": run.out, "reason": reason})

    while waiting or running:
        for run in [r for r in waiting if r.after is not None and id(r.after) in failed]:
            waiting.remove(run)
            give_up(run, "its pre-training did not finish")
        for run in [r for r in waiting if r.after is None or id(r.after) in done][:jobs - len(running)]:
            waiting.remove(run)
            running.append((run, worker.start(make_config(**run.options), run.out)))
        time.sleep(0.2)
        for run, proc in [(r, p) for r, p in running if p.poll() is not None]:
            running.remove((run, proc))
            if proc.returncode == 0:
                done.add(id(run))
                finished(run, worker.metrics(run.out))
            else:
                give_up(run, f"exit status {proc.returncode}: {worker.last_error(run.out)}")
            if not quiet:
                print(f"cure-compare: {_name(run)} {'finished' if proc.returncode == 0 else 'failed'}", flush=True)
        if stop_at is not None and time.monotonic() > stop_at:
            for run, proc in running:
                worker.stop(proc)
                give_up(run, "stopped at the deadline")
            for run in waiting:
                give_up(run, "not started before the deadline")
            break
    return unfinished


def _name(run: _Run) -> str:
    return f"{run.entry or 'pretrain'} seed {run.options['seed']}"


def summarize(runs: Sequence[dict], entries: Sequence[str], labels: Optional[dict] = None) -> dict:
    """Mean ± std per row and metric over the seeds, and (when CURE is among them) every other row's p-value
    against CURE, as `<metric>_p`. Rows with no finished run are left out."""
    labels = labels or LABELS
    metrics = compared_metrics(runs)
    entries = [e for e in entries if any(r["method"] == e for r in runs)]
    values = {e: {k: [r[k] for r in runs if r["method"] == e] for k, _ in metrics} for e in entries}
    summary = []
    for entry in entries:
        row = {"method": entry, "label": labels[entry], "seeds": sum(r["method"] == entry for r in runs)}
        for key, _ in metrics:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values[entry][key])
            if REFERENCE in values and entry != REFERENCE:
                row[f"{key}_p"] = welch_p(values[entry][key], values[REFERENCE][key])
        summary.append(row)
    significance = {"test": TEST_NAME, "against": REFERENCE if REFERENCE in values else None, "alpha": ALPHA,
                    "metrics": [k for k, _ in metrics]}
    return {"runs": list(runs), "summary": summary, "significance": significance}


def _p_text(p: Optional[float]) -> str:
    if p is None:
        return "p=n/a"
    shown = "p<0.001" if p < 0.001 else f"p={p:.3f}"
    return shown if p < ALPHA else f"{shown} ns"


def _write_outputs(result: dict, out_dir: str) -> None:
    metrics = result["significance"]["metrics"]
    with open(os.path.join(out_dir, "compare.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "label", "seed"] + metrics)
        for r in result["runs"]:
            writer.writerow([r["method"], r["label"], r["seed"]] + [f"{r[k]:.4f}" for k in metrics])
        for s in result["summary"]:
            for stat in ("mean", "std"):
                writer.writerow([s["method"], s["label"], stat] + [f"{s[f'{k}_{stat}']:.4f}" for k in metrics])
            if f"{metrics[0]}_p" in s:  # every method but CURE, when CURE ran
                writer.writerow([s["method"], s["label"], f"p_vs_{REFERENCE}"] + [
                    "nan" if s[f"{k}_p"] is None else f"{s[f'{k}_p']:.4g}" for k in metrics])
    write_json_atomic(result, os.path.join(out_dir, "compare.json"))
    if result["summary"]:  # nothing to plot before a run has finished
        plots.plot_tradeoff([{"label": s["label"], "clean_mean": s["clean_acc_mean"], "clean_std": s["clean_acc_std"],
                              "cw_mean": s["cw_acc_mean"], "cw_std": s["cw_acc_std"]} for s in result["summary"]],
                            os.path.join(out_dir, "tradeoff.png"))


def compare_table(result: dict) -> str:
    """The table of mean ± std, each cell of a method other than CURE with its p-value, and a legend."""
    metrics = [(k, h) for k, h in METRICS if k in result["significance"]["metrics"]]
    rows = [[s["label"]] + [f"{s[f'{k}_mean']:.2f} ± {s[f'{k}_std']:.2f}"
                            + (f" {_p_text(s[f'{k}_p'])}" if f"{k}_p" in s else "") for k, _ in metrics]
            for s in result["summary"]]
    table = format_table(["method"] + [h for _, h in metrics], rows)
    if result["significance"]["against"] is None:
        return table + "\n(no p-values: CURE is not among the methods compared)"
    return table + (f"\np: Welch's t-test (two-sided, unequal variances) of each method against CURE over the seeds;"
                    f" ns: not significant at {ALPHA}; n/a: undefined (fewer than 2 seeds, or no variance on "
                    "either side), not significant either")

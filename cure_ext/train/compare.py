"""`cure-compare`: the methods under one protocol — same data, budget and seeds — as a table of mean ± std
over seeds with each method's Welch t-test against CURE, a CSV, a JSON and a trade-off plot.

Per seed, the natural pre-training runs once, at --pretrain-lr, and every method starts from it
(`--init-checkpoint`), so the rows differ only in the method's phase (the controlled protocol of the paper's
Table 5); `standard` continues natural training for the same number of epochs. CURE_Eff, if asked for, runs
its own warm-up. Every run of a seed holds out the same validation split (it depends on the seed and
--val-size only), so the pre-training never sees the images that choose the methods' best checkpoints.
Ablations (paper Table 7): score masking only = CURE with γ = 0 and no revision draws; revision only =
CURE with percentile 0.

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
import warnings
from typing import Optional, Sequence

from scipy import stats

from . import plots
from .config import make_config
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


def run_compare(options: dict, methods: Sequence[str], seeds: Sequence[int], out_dir: str, ablations: bool = False,
                quiet: bool = False) -> dict:
    """Train every (method, seed) into out_dir/<method>/seed<k>; returns {"runs", "summary", "significance"}."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"{out_dir} is not empty; choose another --out for the comparison")
    entries = list(dict.fromkeys(list(methods) + (list(ABLATIONS) if ablations else [])))
    runs = []
    for seed in seeds:
        base = {**options, "seed": seed}
        init = options.get("init_checkpoint")
        natural = make_config(**{**base, "method": "standard"})
        if init is None and natural.pretrain_epochs > 0 and any(e != "cure-eff" for e in entries):
            pre_out = os.path.join(out_dir, "pretrain", f"seed{seed}")
            # A standard run whose own phase is the pre-training: its lr and epochs are the pre-training's.
            pre_cfg = make_config(**{**base, "method": "standard", "epochs": natural.pretrain_epochs,
                                     "pretrain_epochs": 0, "lr": natural.pretrain_lr})
            train(pre_cfg, pre_out, quiet)
            init = os.path.join(pre_out, "last.pt")
        for entry in entries:
            method, extra = ABLATIONS.get(entry, (entry, {}))
            opts = {**base, **extra, "method": method}
            if method != "cure-eff":
                opts["init_checkpoint"] = init
            else:
                opts.pop("pretrain_epochs", None)
            metrics = train(make_config(**opts), os.path.join(out_dir, entry, f"seed{seed}"), quiet)
            runs.append({"method": entry, "label": LABELS[entry], "seed": seed,
                         **{k: metrics["final"][k] for k, _ in METRICS if k in metrics["final"]}})
    result = summarize(runs, entries)
    _write_outputs(result, out_dir)
    return result


def summarize(runs: Sequence[dict], entries: Sequence[str]) -> dict:
    """Mean ± std per method and metric over the seeds, and (when CURE is among them) every other method's
    p-value against CURE, as `<metric>_p`."""
    metrics = compared_metrics(runs)
    values = {e: {k: [r[k] for r in runs if r["method"] == e] for k, _ in metrics} for e in entries}
    summary = []
    for entry in entries:
        row = {"method": entry, "label": LABELS[entry], "seeds": sum(r["method"] == entry for r in runs)}
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

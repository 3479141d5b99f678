"""`cure-compare`: the methods under one protocol — same data, budget and seeds — as a table of mean ± std
over seeds, a CSV, a JSON and a trade-off plot.

Per seed, the natural pre-training runs once and every method starts from it (`--init-checkpoint`), so
the rows differ only in the method's phase (the controlled protocol of the paper's Table 5); `standard`
continues natural training for the same number of epochs. CURE_Eff, if asked for, runs its own warm-up.
Ablations (paper Table 7): score masking only = CURE with γ = 0 and no revision draws; revision only =
CURE with percentile 0.
"""
from __future__ import annotations

import csv
import os
import statistics
from typing import Sequence

from . import plots
from .config import make_config
from .errors import ConfigError
from .loop import train
from .report import format_table, write_json_atomic

ABLATIONS = {"cure-mask-only": ("cure", {"gamma": 0.0, "revision_rate": 0.0}),
             "cure-revision-only": ("cure", {"percentile": 0.0})}
LABELS = {"standard": "standard", "pgd-at": "PGD-AT", "trades": "TRADES", "cure": "CURE", "cure-eff": "CURE_Eff",
          "cure-mask-only": "CURE, score masking only", "cure-revision-only": "CURE, revision only"}
METRICS = [("clean_acc", "clean"), ("pgd20_acc", "PGD-20"), ("cw_acc", "CW∞-20"), ("nrr_cw", "NRR"), ("sum", "SUM")]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_compare(options: dict, methods: Sequence[str], seeds: Sequence[int], out_dir: str, ablations: bool = False,
                quiet: bool = False) -> dict:
    """Train every (method, seed) into out_dir/<method>/seed<k>; returns {"runs": [...], "summary": [...]}."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError(f"{out_dir} is not empty; choose another --out for the comparison")
    entries = list(dict.fromkeys(list(methods) + (list(ABLATIONS) if ablations else [])))
    runs = []
    for seed in seeds:
        base = {**options, "seed": seed}
        init = options.get("init_checkpoint")
        pretrain_epochs = make_config(**{**base, "method": "standard"}).pretrain_epochs
        if init is None and pretrain_epochs > 0 and any(e != "cure-eff" for e in entries):
            pre_out = os.path.join(out_dir, "pretrain", f"seed{seed}")
            pre_cfg = make_config(**{**base, "method": "standard", "epochs": pretrain_epochs, "pretrain_epochs": 0})
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
                         **{k: metrics["final"][k] for k, _ in METRICS}})
    summary = []
    for entry in entries:
        rows = [r for r in runs if r["method"] == entry]
        stats = {"method": entry, "label": LABELS[entry], "seeds": len(rows)}
        for key, _ in METRICS:
            stats[f"{key}_mean"], stats[f"{key}_std"] = _mean_std([r[key] for r in rows])
        summary.append(stats)
    result = {"runs": runs, "summary": summary}
    _write_outputs(result, out_dir)
    return result


def _write_outputs(result: dict, out_dir: str) -> None:
    with open(os.path.join(out_dir, "compare.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "label", "seed"] + [k for k, _ in METRICS])
        for r in result["runs"]:
            writer.writerow([r["method"], r["label"], r["seed"]] + [f"{r[k]:.4f}" for k, _ in METRICS])
        for s in result["summary"]:
            for stat in ("mean", "std"):
                writer.writerow([s["method"], s["label"], stat] + [f"{s[f'{k}_{stat}']:.4f}" for k, _ in METRICS])
    write_json_atomic(result, os.path.join(out_dir, "compare.json"))
    plots.plot_tradeoff([{"label": s["label"], "clean_mean": s["clean_acc_mean"], "clean_std": s["clean_acc_std"],
                          "cw_mean": s["cw_acc_mean"], "cw_std": s["cw_acc_std"]} for s in result["summary"]],
                        os.path.join(out_dir, "tradeoff.png"))


def compare_table(result: dict) -> str:
    rows = [[s["label"]] + [f"{s[f'{k}_mean']:.2f} ± {s[f'{k}_std']:.2f}" for k, _ in METRICS]
            for s in result["summary"]]
    return format_table(["method"] + [h for _, h in METRICS], rows)

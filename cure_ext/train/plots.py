"""PNG plots of a run and of a comparison (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy(records: Sequence[dict], path: str) -> None:
    """Train, clean and PGD-20 accuracy (test, and validation when held out) per epoch, phases marked apart."""
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [r["epoch"] for r in records]
    ax.plot(epochs, [r["train_acc"] for r in records], label="train (batch)", color="0.6", lw=1)
    evaluated = [r for r in records if "clean_acc" in r]
    ax.plot([r["epoch"] for r in evaluated], [r["clean_acc"] for r in evaluated], "o-", label="clean test", ms=3)
    ax.plot([r["epoch"] for r in evaluated], [r["pgd20_acc"] for r in evaluated], "s-", label="PGD-20 test", ms=3)
    validated = [r for r in records if "val_pgd20_acc" in r]
    if validated:
        ax.plot([r["epoch"] for r in validated], [r["val_clean_acc"] for r in validated], "o--", ms=3,
                label="clean validation")
        ax.plot([r["epoch"] for r in validated], [r["val_pgd20_acc"] for r in validated], "s--", ms=3,
                label="PGD-20 validation (chooses best)")
    for prev, cur in zip(records, records[1:]):
        if cur["phase"] != prev["phase"]:
            ax.axvline(prev["epoch"] + 0.5, color="k", ls=":", lw=1)
            ax.text(prev["epoch"] + 0.6, 2, cur["phase"], fontsize=8)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100), title="accuracy per epoch")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_update_fraction(records: Sequence[dict], path: str) -> bool:
    """Per selective tensor, the % of entries updated in the first and the last CURE epoch (the paper's
    Fig. 6b); False (no file) when no epoch recorded update fractions."""
    cure = [r for r in records if r.get("tensor_update_fraction")]
    if not cure:
        return False
    first, last = cure[0]["tensor_update_fraction"], cure[-1]["tensor_update_fraction"]
    names = list(first)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names) + 2), 4.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [100 * first[n] for n in names], 0.4, label=f"epoch {cure[0]['epoch']}")
    ax.bar([x + 0.2 for x in xs], [100 * last[n] for n in names], 0.4, label=f"epoch {cure[-1]['epoch']}")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set(ylabel="% of entries updated", ylim=(0, 100), title="per-tensor update fraction (CURE)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_tradeoff(points: Sequence[dict], path: str) -> None:
    """Clean vs CW∞ accuracy, one point per method (mean ± std over seeds)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for p in points:
        ax.errorbar(p["cw_mean"], p["clean_mean"], xerr=p["cw_std"], yerr=p["clean_std"], fmt="o", capsize=3,
                    label=p["label"])
    ax.set(xlabel="CW∞-20 accuracy (%)", ylabel="clean accuracy (%)", title="natural vs robust accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Run outputs in text form: the per-epoch CSV log, metrics.json and the printed tables."""
from __future__ import annotations

import csv
import json
import os
from typing import Callable, Sequence

from .config import make_config
from .recipes import list_recipes

# Columns of the result tables: (metrics key, heading). NRR uses CW∞ as in the paper's tables; SUM uses the
# strongest attack run (AutoAttack when it ran, as in the paper's Table 8).
TABLE_COLUMNS = [("clean_acc", "clean"), ("pgd20_acc", "PGD-20"), ("cw_acc", "CW∞-20"), ("aa_acc", "AA"),
                 ("nrr_cw", "NRR"), ("sum", "SUM")]
CSV_FIELDS = ["epoch", "phase", "step", "phase_epoch", "lr", "loss", "train_acc", "val_clean_acc", "val_pgd20_acc",
              "clean_acc", "pgd20_acc", "update_fraction", "skipped_steps", "time_s"]


def write_atomic(path: str, write: Callable, mode: str = "w") -> None:
    """write(f) into a temporary file beside `path`, flushed to disk, then renamed over `path`: a kill or a
    failure at any point leaves either the old file or the complete new one, never a torn one."""
    tmp = f"{path}.tmp"
    with open(tmp, mode, **({} if "b" in mode else {"newline": ""})) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable (not possible on every platform)
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(obj, path: str) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"))


def write_csv(records: Sequence[dict], path: str) -> None:
    """The per-epoch log, rewritten whole after each epoch (so a resumed run's log has no duplicates)."""
    def write(f):
        writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in CSV_FIELDS})

    write_atomic(path, write)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def results_table(named: Sequence[tuple[str, dict]]) -> str:
    """One row per (label, metrics) pair, accuracies in percent; AA only when some row has it."""
    cols = [(k, h) for k, h in TABLE_COLUMNS if any(k in m for _, m in named)]
    rows = [[label] + [f"{m[k]:.2f}" if k in m else "–" for k, _ in cols] for label, m in named]
    return format_table(["model"] + [h for _, h in cols], rows)


def recipes_table() -> str:
    """Markdown table of the named recipes, resolved as cure-train resolves them, beside CURE's published
    numbers for the setting (– where the paper gives none)."""
    published = ["clean", "pgd20", "cw", "aa", "nrr_cw"]
    lines = ["| recipe | data | model | method | p | α | γ | β | ε | train attack | lr, schedule | epochs "
             "| Nat | PGD-20 | C&W | AA | NRR | source |", "|" + "---|" * 18]
    for r in list_recipes():
        c = make_config(recipe=r.name)
        small = c.dataset in ("digits", "fashion-mnist")
        eps = f"{c.eps:g}" if small else f"{c.eps * 255:.0f}/255"
        step = f"{c.attack_step_size:g}" if small else f"{c.attack_step_size * 255:.0f}/255"
        schedule = {"multistep": "×{:g} at {}".format(c.lr_gamma, ", ".join(f"{m:.0%}" for m in c.lr_milestones)),
                    "cosine": "cosine", "constant": "constant"}[c.lr_schedule]
        epochs = (f"{c.warmup_epochs} natural + {c.epochs - c.warmup_epochs} CURE" if c.method == "cure-eff"
                  else f"{c.pretrain_epochs} natural + {c.epochs} CURE")
        nums = " | ".join(f"{r.published[k]:.2f}" if k in r.published else "–" for k in published)
        lines.append(f"| `{r.name}` | {c.dataset} | {c.model} | {c.method} | {c.percentile:g} | {c.alpha:g} | "
                     f"{c.gamma:g} | {c.beta:g} | {eps} | PGD-{c.attack_steps}, step {step} | {c.lr:g}, {schedule} | "
                     f"{epochs} | {nums} | {r.published.get('source', 'ours (not in the paper)')} |")
    return "\n".join(lines)


def epoch_line(label: str, r: dict) -> str:
    """The line printed after an epoch of a run: its record in short."""
    parts = [f"epoch {r['epoch']:3d} [{label}] loss {r['loss']:.3f} train {r['train_acc']:.1f}%"]
    if "val_pgd20_acc" in r:
        parts.append(f"val clean {r['val_clean_acc']:.1f}% PGD-20 {r['val_pgd20_acc']:.1f}%")
    if "clean_acc" in r:
        parts.append(f"test clean {r['clean_acc']:.1f}% PGD-20 {r['pgd20_acc']:.1f}%")
    if "update_fraction" in r:
        parts.append(f"updated {100 * r['update_fraction']:.1f}%")
    parts.append(f"{r['time_s']:.1f}s")
    return " | ".join(parts)

"""The tables printed from a record: the short summary a run prints last, and the README's markdown table."""
from __future__ import annotations

import math

from . import overhead


def fmt(x, spec=".2f", suffix="") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:{spec}}{suffix}"


def cells(record: dict, fn) -> list:
    """fn applied to each model's step record; "-" where the figure is missing (a part failed or skipped)."""
    out = []
    for m in record["step"]:
        try:
            out.append(fn(record["step"][m]))
        except (KeyError, TypeError, ZeroDivisionError):
            out.append("-")
    return out


def summary_table(record: dict) -> str:
    """The short table printed last: times, ratios (variant / fused), bandwidth, iteration."""
    models = list(record["step"])
    w = 12
    lines = [f"{record['device']} ({record['device_type']}, {record['threads']} threads), torch {record['torch']}, "
             f"{record['date']}" + (" [quick]" if record["quick"] else "") + (" [tiny shapes]" if record["tiny_shapes"] else "")
             + (f", load average {record['loadavg_start'][0]} -> {record['loadavg_end'][0]}"
                if record.get("loadavg_start") and record.get("loadavg_end") else "")]
    head = f"{'':<34s}" + "".join(f"{m:>{w}s}" for m in models)
    lines.append(head)
    lines.append("-" * len(head))

    def row(label, fn):
        lines.append(f"{label:<34s}" + "".join(f"{v:>{w}s}" for v in cells(record, fn)))

    row("fused step (ms)", lambda r: fmt(r["fused_ms"], ".3f"))
    row("byte floor at copy bw (ms)", lambda r: fmt(r["floor_ms"], ".3f"))
    for name, label in (("reference", "reference / fused"), ("official", "official-style / fused"),
                        ("torch_step", "per-tensor torch step / fused"),
                        ("torch_foreach_step", "torch kthvalue+foreach / fused"),
                        ("kthvalue", "kthvalue threshold only / fused"), ("topk", "topk threshold only / fused"),
                        ("sgd_fused", "SGD(fused=True) / fused"), ("sgd_foreach", "SGD(foreach=True) / fused")):
        row(label, lambda r, n=name: fmt(r["ratios"][n], ".2f", "x"))
    if record["device_type"] == "cpu":
        row("torch step / fused, 2 threads", lambda r: fmt(r["threads"]["2"]["torch_step_over_fused"], ".2f", "x"))
    row("bf16: fused step (ms)", lambda r: fmt(r["bf16"]["fused_ms"], ".3f"))
    row("bf16: reference / fused", lambda r: fmt(r["bf16"]["ratios"]["reference"], ".2f", "x"))
    row("bf16: official-style / fused", lambda r: fmt(r["bf16"]["ratios"]["official"], ".2f", "x"))
    row("official preset: official / fused", lambda r: fmt(r["official_preset"]["official_over_fused"], ".2f", "x"))
    row("achieved GB/s (floor bytes)", lambda r: fmt(r["achieved_gbps"], ".1f"))
    row("bandwidth fraction of copy", lambda r: fmt(100 * r["bandwidth_fraction"], ".1f", "%"))
    if record["device_type"] == "cuda":
        row("launches fused / reference", lambda r: f"{r['counts']['fused'].get('kernel_launches')}/"
                                                     f"{r['counts']['reference'].get('kernel_launches')}")
        row("host syncs fused / reference", lambda r: f"{r['counts']['fused'].get('host_syncs')}/"
                                                       f"{r['counts']['reference'].get('host_syncs')}")
    else:
        row("ops dispatched fused / reference", lambda r: f"{r['counts']['fused']['ops']}/{r['counts']['reference']['ops']}")
    lines.append(f"copy bandwidth: {record['copy_bandwidth']['gbps']:.1f} GB/s")
    if record.get("overhead"):
        lines += overhead.summary_lines(record["overhead"])
    it = record.get("iteration")
    if it:
        if it.get("error"):
            lines.append(f"iteration: not measured ({it['error']})")
        else:
            for key, label in (("fp32", "fp32"), ("bf16", "bf16 autocast"), ("cpu_epoch", "epoch")):
                sub = it.get(key)
                if isinstance(sub, dict) and "cure_ms" in sub:
                    lines.append(f"iteration {label} ({sub.get('workload', '')}): CURE {sub['cure_ms']:.1f} ms, "
                                 f"TRADES {sub['trades_ms']:.1f} ms, PGD-AT {fmt(sub.get('pgd_at_ms'), '.1f')} ms, "
                                 f"CURE/TRADES {sub['cure_over_trades']:.3f}")
    return "\n".join(lines)


def markdown_table(record: dict) -> str:
    """The README's results table for one record: one column per model."""
    models = list(record["step"])
    ms = lambda key: (lambda r: fmt(r[key], ".1f" if r[key] >= 10 else ".3f"))  # noqa: E731
    x = lambda fn: (lambda r: fmt(fn(r), ".1f", "×"))  # noqa: E731
    rows = [
        ("fused step, ms", ms("fused_ms")),
        ("fused step without revision, ms", ms("fused_norevise_ms")),
        ("reference, ms", ms("reference_ms")),
        ("official-style, ms", ms("official_ms")),
        ("per-tensor torch step, ms", ms("torch_step_ms")),
        ("SGD(fused=True), no selection, ms", ms("torch_fused_sgd_ms")),
        ("byte floor at copy bandwidth, ms", ms("floor_ms")),
        ("reference / fused", x(lambda r: r["ratios"]["reference"])),
        ("official-style / fused", x(lambda r: r["ratios"]["official"])),
        ("per-tensor torch step / fused", x(lambda r: r["ratios"]["torch_step"])),
        ("torch kthvalue + foreach / fused", x(lambda r: r["ratios"]["torch_foreach_step"])),
        ("kthvalue threshold only / fused", x(lambda r: r["ratios"]["kthvalue"])),
        ("SGD(fused=True) / fused", x(lambda r: r["ratios"]["sgd_fused"])),
        ("official preset: official-style / fused", x(lambda r: r["official_preset"]["official_over_fused"])),
        ("bf16 operands: fused step, ms", lambda r: fmt(r["bf16"]["fused_ms"], ".3f")),
        ("bf16 operands: reference / fused", x(lambda r: r["bf16"]["ratios"]["reference"])),
        ("bf16 operands: official-style / fused", x(lambda r: r["bf16"]["ratios"]["official"])),
        ("achieved GB/s (floor bytes / fused time)", lambda r: fmt(r["achieved_gbps"], ".1f")),
        ("fraction of copy bandwidth", lambda r: fmt(100 * r["bandwidth_fraction"], ".1f", " %")),
    ]
    if record["device_type"] == "cpu":
        for n in ("2", "1"):
            rows.insert(1, (f"fused step, {n} thread{'s' if n != '1' else ''}, ms",
                            lambda r, n=n: fmt(r["threads"][n]["fused_ms"], ".1f")))
        rows.append(("per-tensor torch step / fused, 1 thread",
                     x(lambda r: r["threads"]["1"]["torch_step_over_fused"])))
        rows.append(("per-tensor torch step / fused, 2 threads",
                     x(lambda r: r["threads"]["2"]["torch_step_over_fused"])))
        rows.append(("operators dispatched per step, fused / reference",
                     lambda r: f"{r['counts']['fused']['ops']} / {r['counts']['reference']['ops']}"))
    else:
        rows.append(("kernel launches per step, fused / reference",
                     lambda r: f"{r['counts']['fused']['kernel_launches']} / {r['counts']['reference']['kernel_launches']}"))
        rows.append(("host syncs per step, fused / reference / official-style",
                     lambda r: f"{r['counts']['fused']['host_syncs']} / {r['counts']['reference']['host_syncs']} / "
                               f"{r['counts']['official']['host_syncs']}"))
    lines = [f"{record['device']} ({record['device_type']}, {record['threads']} threads), torch {record['torch']}, "
             f"{record['date']}" + (", --quick" if record.get("quick") else ""), "",
             "| | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(cells(record, fn)) + " |")
    lines.append(f"\nCopy bandwidth {record['copy_bandwidth']['gbps']:.1f} GB/s"
                 + (f"; load average {record['loadavg_start'][0]} at the start, {record['loadavg_end'][0]} at the end "
                    f"on {record.get('cpu_count')} CPUs" if record.get("loadavg_start") and record.get("loadavg_end")
                    else "") + ".")
    sc = record.get("scaling")
    if sc:
        lines += ["", "Scaling of the fused step (same total split into more tensors; more elements in 64 tensors):", "",
                  "| tensors | elements | fused ms | GB/s (floor) | per-tensor torch step ms |", "|---:|---:|---:|---:|---:|"]
        for p in sc["by_tensors"] + sc["by_size"]:
            if "error" in p:
                lines.append(f"| {p['tensors']} | {p['numel'] / 2**20:.0f}M | {p['error']} | | |")
                continue
            lines.append(f"| {p['tensors']} | {p['numel'] / 2**20:.0f}M | {p['fused_ms']:.1f} | {p['achieved_gbps']:.1f} | "
                         f"{fmt(p.get('torch_step_ms'), '.1f')} |")
    oh = record.get("overhead")
    if oh:
        names = list(overhead.VARIANTS)
        lines += ["", f"Fixed cost per call, tensors of {oh['numel']} elements"
                  + (f", {oh['threads']} thread" if oh.get("threads") else "") + " (µs; ratio over SGD(fused=True)):",
                  "", "| tensors | " + " | ".join(overhead.VARIANTS[n] for n in names) + " |",
                  "|---:|" + "---:|" * len(names)]
        for p in oh["points"]:
            lines.append(f"| {p['tensors']} | " + " | ".join(
                f"{p['us'][n]:.0f} ({p['over_sgd_fused'][n]:.2f}×)" if n in p["us"] and p["over_sgd_fused"] else "-"
                for n in names) + " |")
    it = record.get("iteration") or {}
    if "cure_ms" in it:
        lines.append(f"Training iteration ({it['workload']}): CURE {it['cure_ms']:.0f} ms, TRADES {it['trades_ms']:.0f} ms, "
                     f"PGD-AT {it['pgd_at_ms']:.0f} ms; CURE / TRADES = {it['cure_over_trades']:.2f}.")
    return "\n".join(lines)

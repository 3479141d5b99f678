"""`python -m bench`: every benchmark for the available devices in one run, a JSON record per device under
bench/results/ (SPEC §5) and a short table of ratios printed last."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .record import measure_device, write_record
from .settings import log
from .step_section import MODELS
from .tables import markdown_table, summary_table

# The parts of a run that --skip can leave out (bf16: the step section on bfloat16 operands).
PARTS = ("overhead", "step", "bf16", "scaling", "iteration")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small repeat counts and scaling sizes (CI smoke, CPU)")
    p.add_argument("--devices", default=None,
                   help="comma-separated: cpu,cuda (default: cpu, plus cuda when available)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    p.add_argument("--out", default=None,
                   help="directory for the JSON records (default bench/results/), or a .json path for one device")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: " + ",".join(PARTS))
    p.add_argument("--table", metavar="RECORD.json", default=None,
                   help="print the README's markdown table of an existing record and exit (no benchmark)")
    p.add_argument("--tiny", action="store_true",
                   help="testing only: the same architectures with every width divided by 16")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        for d in args.devices:
            if d not in ("cpu", "cuda"):
                p.error(f"unknown device {d!r}; choose cpu or cuda")
            if d == "cuda" and not torch.cuda.is_available():
                p.error("--devices cuda: torch.cuda.is_available() is False on this machine")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - set(PARTS)
    if unknown:
        p.error(f"unknown --skip part(s): {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        try:
            record = json.loads(Path(args.table).read_text())
        except (OSError, ValueError) as exc:
            print(f"python -m bench --table: cannot read {args.table}: {exc}", file=sys.stderr)
            return 2
        print(markdown_table(record))
        return 0
    t0 = time.perf_counter()
    records = []
    for d in args.devices:
        record = measure_device(torch.device(d), args.models, args)
        out = args.out
        if out and out.endswith(".json") and len(args.devices) > 1:  # one file per device
            out = f"{out[:-5]}-{d}.json"
        path = write_record(record, out)
        log(f"  wrote {path}")
        records.append(record)
    log(f"total {time.perf_counter() - t0:.0f}s")
    print()
    for record in records:
        print(summary_table(record))
        print()
    return 0

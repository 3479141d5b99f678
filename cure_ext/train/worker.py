"""One training run of `cure-compare --jobs N` in a process of its own: `main([OUT])` (started by `start`)
trains the configuration stored in OUT/request.json into OUT, its output in OUT/worker.log."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from .config import TrainConfig
from .errors import UserError
from .report import write_json_atomic

REQUEST, LOG = "request.json", "worker.log"
# `python -m`/`-c` put the current folder first on sys.path: started inside a checkout, the worker would import
# the source tree instead of the installed cure_ext (the one this process runs). `-P` would avoid it but needs
# Python 3.11, so the worker starts from `-c` and drops that entry (absent under -P or PYTHONSAFEPATH).
_START = ("import sys\nif sys.path[0] == '': del sys.path[0]\n"
          f"from {__name__} import main\nsys.exit(main(sys.argv[1:]))")


def start(cfg: TrainConfig, out: str) -> subprocess.Popen:
    os.makedirs(out, exist_ok=True)
    write_json_atomic(cfg.to_dict(), os.path.join(out, REQUEST))
    with open(os.path.join(out, LOG), "w") as log:
        # its own process group: stopping it stops what it started (data-loading threads, nothing more)
        return subprocess.Popen([sys.executable, "-c", _START, out], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL: the run's last.pt stays what its last finished epoch wrote (resumable)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def metrics(out: str) -> dict:
    return read_json(os.path.join(out, "metrics.json"))


def last_error(out: str) -> str:
    """The last line the run printed (its error, for a failed run)."""
    try:
        with open(os.path.join(out, LOG), errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def main(argv: list) -> int:
    from .loop import train

    out = argv[0]
    try:
        train(TrainConfig.from_dict(read_json(os.path.join(out, REQUEST))), out, quiet=True)
    except (UserError, OSError) as e:  # one line, as cure-train reports these; cure-compare quotes it
        print(f"error: {e}", flush=True)
        return getattr(e, "exit_code", 2)
    return 0


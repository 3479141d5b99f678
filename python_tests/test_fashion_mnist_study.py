"""bench/fashion_mnist_study.sh (issue 15's study, for a GPU) in its dry run: the same command, tiny, on the CPU,
on Fashion-MNIST-format files written here; every row of the study comes out, with the files it promises."""
import json
import os
import subprocess

import numpy as np
import pytest

from test_train_data import write_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ["standard", "PGD-AT", "TRADES", "CURE", "CURE, score masking only", "CURE, revision only", "trades-beta6",
        "cure-official-select", "cure-beta5"]


@pytest.mark.slow
def test_the_study_dry_run_writes_every_row(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "fmnist"
    data.mkdir()
    for split, n in (("train", 400), ("t10k", 100)):
        write_idx(data / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(data / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "bench/fashion_mnist_study.sh", "--dry-run", "--data-dir", str(data),
                           "--out", str(out), "--budget", "900"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["compare.csv", "compare.json", "study.log", "study.md", "table.txt",
                                       "tradeoff.png", "update_fraction.png"]
    result = json.loads((out / "compare.json").read_text())
    assert [s["label"] for s in result["summary"]] == ROWS and result["unfinished"] == []
    assert all(s["seeds"] == 2 for s in result["summary"])
    table = (out / "table.txt").read_text()
    assert all(label in table for label in ROWS) and "Welch" in table
    assert "--variant cure-beta5=cure:beta=5" in (out / "study.md").read_text()

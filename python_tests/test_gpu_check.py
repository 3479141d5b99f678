"""bench/gpu_check.sh: its time boxes against a device lease (read from the script), its command line, and
its dry-run behaviour (the steps themselves run in CI's dry run and on the GPU machine)."""
import os
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh"
TEXT = SCRIPT.read_text()
DEFAULT = ["build", "ctest", "pytest", "sanitize", "train", "bench"]
LEASE_CALL_S = 8 * 60  # the default call's target on the device
RERUN_S = 4 * 60  # a rerun of what failed, the extension carried
CALL_LIMIT_S = 10 * 60  # one device command at most
FILES_BACK = 8  # files the device call returns from $OUT


def run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def assoc(name):
    """A `declare -A NAME=([key]=value ...)` array of the script, as a dict."""
    body = re.search(rf"declare -A {name}=\((.*?)\)\n", TEXT, re.S).group(1)
    return {k: v for k, v in re.findall(r"\[([\w-]+)\]=(\w+)", body)}


def scalar(name):
    return int(re.search(rf"^{name}=(\d+)", TEXT, re.M).group(1))


BOX = {k: int(v) for k, v in assoc("BOX").items()}


def test_lists_its_steps_with_their_boxes():
    r = run("--list")
    assert r.returncode == 0
    rows = [line.split() for line in r.stdout.splitlines()]
    assert [row[0] for row in rows if row[2] == "default"] == DEFAULT
    assert [row[0] for row in rows if row[2] == "separate"] == ["bench-full"]
    assert {row[0]: int(row[1]) for row in rows} == BOX


def test_the_boxes_fit_the_lease():
    budget = scalar("DEFAULT_BUDGET")
    assert sum(BOX[s] for s in DEFAULT) <= budget <= LEASE_CALL_S - 20  # ~10 s outside the boxes, transfers
    assert BOX["pytest"] + BOX["sanitize"] <= RERUN_S
    assert max(BOX[s] for s in DEFAULT) + BOX["sanitize"] <= RERUN_S  # any one step and sanitize, rerun
    assert BOX["bench-full"] <= scalar("MAX_BUDGET") <= CALL_LIMIT_S - 30
    sanitizers = {k: int(v) for k, v in assoc("SANITIZER_BOX").items()}
    assert set(sanitizers) == {"memcheck", "racecheck", "synccheck", "initcheck"}
    assert sum(sanitizers.values()) < BOX["sanitize"]  # leaves time for the C++ tree's (re)build


def test_a_full_call_returns_at_most_8_files():
    logs = set(assoc("LOG").values())
    assert set(assoc("LOG")) == set(BOX)
    assert len(logs) + len(["summary.txt", "record.json", "extension.tar.gz"]) <= FILES_BACK


@pytest.mark.parametrize("args,message", [(("--only", "bench,sanitise"), "--only: unknown step 'sanitise'"),
                                          (("--budget", "8m"), "--budget must be a whole number"),
                                          (("--frobnicate",), "unknown argument '--frobnicate'")])
def test_bad_arguments_are_one_line_and_exit_2(args, message, tmp_path):
    r = run(*args, "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def summary_rows(out):
    rows = [line.split() for line in (out / "summary.txt").read_text().splitlines()]
    return {row[0]: row[1] for row in rows if row and row[0] in BOX}


def test_a_spent_budget_is_reported_for_every_step_left(tmp_path):
    r = run("--no-gpu", "--only", "sanitize,train", "--budget", "0", "--out", str(tmp_path))
    assert r.returncode == 1
    summary = (tmp_path / "summary.txt").read_text()
    assert "no GPU (dry run)" in summary and summary.count("budget spent before the step") == 2
    assert summary_rows(tmp_path) == {"build": "-", "ctest": "-", "pytest": "-", "sanitize": "TIMEOUT",
                                      "train": "TIMEOUT", "bench": "-", "bench-full": "-"}


def test_a_failing_step_does_not_stop_the_later_ones(tmp_path):
    """With a Python that fails at once, train fails; bench still runs (and skips: no GPU); exit 1."""
    r = run("--no-gpu", "--only", "train,bench,bench-full", "--out", str(tmp_path), env={"PYTHON": "false"})
    assert r.returncode == 1, r.stdout + r.stderr
    rows = summary_rows(tmp_path)
    assert rows["train"] == "FAILED" and rows["bench"] == "skipped" and rows["bench-full"] == "skipped"
    assert sorted(os.listdir(tmp_path)) == ["bench.log", "summary.txt", "train.log"]


def test_the_dry_run_skips_the_cuda_steps_and_leaves_no_temporary_file(tmp_path):
    r = run("--no-gpu", "--only", "pytest,sanitize,bench,bench-full", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(summary_rows(tmp_path).values()) == {"-", "skipped"}
    files = sorted(os.listdir(tmp_path))
    assert files == ["bench.log", "cxx.log", "pytest.log", "summary.txt"] and len(files) <= FILES_BACK
    assert f"{len(files)} files in" in (tmp_path / "summary.txt").read_text()

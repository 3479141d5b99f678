"""bench/gpu_check.sh's command line (the steps themselves run in CI's dry run and on the GPU machine)."""
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.sh"


def run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_lists_its_steps():
    r = run("--list")
    assert r.returncode == 0
    assert r.stdout.split() == ["build", "ctest", "pytest", "sanitize", "train", "bench"]


@pytest.mark.parametrize("args,message", [(("--only", "bench,sanitise"), "--only: unknown step 'sanitise'"),
                                          (("--budget", "8m"), "--budget must be a whole number"),
                                          (("--frobnicate",), "unknown argument '--frobnicate'")])
def test_bad_arguments_are_one_line_and_exit_2(args, message, tmp_path):
    r = run(*args, "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_steps_not_selected_are_listed_in_the_summary(tmp_path):
    """With --only and a budget too small for the step, the run stops at once and says so."""
    r = run("--no-gpu", "--only", "sanitize", "--budget", "0", "--out", str(tmp_path))
    assert r.returncode == 1
    summary = (tmp_path / "summary.txt").read_text()
    assert "no GPU (dry run)" in summary
    assert "sanitize  TIMEOUT" in summary and "budget spent" in summary
    assert "build     -" in summary and "not selected" in summary

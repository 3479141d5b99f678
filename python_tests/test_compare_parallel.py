"""cure-compare with runs in processes of their own (--jobs, --deadline) and rows of one's own (--variant): the
same numbers as the one-process comparison, what a deadline or a failed run leaves, and bad variants."""
import os

import pytest

from cure_ext.train import cli, compare
from train_runs import read_json

TINY = ["--seeds", "0", "1", "--pretrain-epochs", "1", "--epochs", "1", "--attack-steps", "1", "--eval-steps", "2",
        "--train-limit", "200", "--test-limit", "60", "--val-size", "50", "--quiet"]


def without_times(result):
    return sorted((r["method"], r["seed"], tuple(sorted(r.items()))) for r in result["runs"])


def test_processes_give_the_one_process_numbers_and_variants_are_rows(tmp_path, capsys):
    rows = ["--methods", "trades", "cure", "--variant", "trades-beta6=trades:beta=6"]
    assert cli.compare_main(rows + TINY + ["--out", str(tmp_path / "one")]) == 0
    assert cli.compare_main(rows + TINY + ["--jobs", "3", "--out", str(tmp_path / "three")]) == 0
    one, three = (read_json(str(tmp_path / d / "compare.json")) for d in ("one", "three"))
    assert without_times(one) == without_times(three) and three["unfinished"] == []
    assert [s["label"] for s in three["summary"]] == ["TRADES", "CURE", "trades-beta6"]
    variant = read_json(str(tmp_path / "three" / "trades-beta6" / "seed1" / "metrics.json"))["config"]
    assert variant["method"] == "trades" and variant["beta"] == 6 and variant["init_checkpoint"].endswith(
        os.path.join("pretrain", "seed1", "last.pt"))


def test_a_deadline_keeps_what_finished_and_names_the_rest(tmp_path, capsys):
    out = str(tmp_path / "cut")
    status = cli.compare_main(["--methods", "standard", "cure", *TINY, "--epochs", "30", "--jobs", "2",
                               "--deadline", "0.5", "--out", out])
    printed = capsys.readouterr().out
    assert status == 1
    result = read_json(os.path.join(out, "compare.json"))
    reasons = {u["run"]: u["reason"] for u in result["unfinished"]}
    assert {"pretrain seed 0", "pretrain seed 1"} <= set(reasons) and result["runs"] == []
    assert reasons["pretrain seed 0"] == "stopped at the deadline"
    assert reasons["cure seed 1"] == "not started before the deadline"
    assert "not finished: cure seed 1" in printed


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "fail")
    real_start = compare.worker.start

    def start(cfg, run_out):
        if cfg.method == "trades":
            cfg.data_dir, cfg.dataset = str(tmp_path / "missing"), "fashion-mnist"  # this run's data is missing
        return real_start(cfg, run_out)

    monkeypatch.setattr(compare.worker, "start", start)
    assert cli.compare_main(["--methods", "trades", "cure", *TINY, "--seeds", "0", "--jobs", "2", "--out", out]) == 1
    result = read_json(os.path.join(out, "compare.json"))
    assert [r["method"] for r in result["runs"]] == ["cure"]
    (failed,) = result["unfinished"]
    assert failed["run"] == "trades seed 0" and failed["reason"].startswith("exit status 2: error:")
    assert "missing" in failed["reason"]


def test_runs_after_a_failed_pretraining_are_not_started(tmp_path, monkeypatch):
    out = str(tmp_path / "fail")
    real_start = compare.worker.start

    def start(cfg, run_out):
        if cfg.method == "standard":  # the shared pre-training
            cfg.data_dir, cfg.dataset = str(tmp_path / "missing"), "fashion-mnist"
        return real_start(cfg, run_out)

    monkeypatch.setattr(compare.worker, "start", start)
    assert cli.compare_main(["--methods", "trades", "cure", *TINY, "--seeds", "0", "--jobs", "2", "--out", out]) == 1
    result = read_json(os.path.join(out, "compare.json"))
    reasons = {u["run"]: u["reason"] for u in result["unfinished"]}
    assert result["runs"] == [] and reasons["pretrain seed 0"].startswith("exit status 2")
    assert reasons["trades seed 0"] == reasons["cure seed 0"] == "its pre-training did not finish"


@pytest.mark.parametrize("variant, match", [
    ("noequals", "NAME=METHOD"), ("x=bogus", "NAME=METHOD"), ("cure=cure", "NAME=METHOD"),
    ("x=cure:beta", "key=value"), ("x=cure:nonsense=1", "key=value"), ("x=cure:seed=3", "key=value"),
    ("x=cure:percentile=2", "percentile")])
def test_bad_variants_are_one_line_and_nothing_runs(tmp_path, capsys, variant, match):
    out = tmp_path / "bad"
    assert cli.compare_main(["--methods", "cure", *TINY, "--variant", variant, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cure-compare: error:") and match in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not os.listdir(out)

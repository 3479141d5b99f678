"""Reliability of cure-train / cure-eval (issue 5): a killed run resumes to the bit-exact result of an
uninterrupted one, bad input ends in one paragraph and a non-zero exit without touching existing files, and a
non-finite loss or gradient stops the run (or is skipped with --skip-nonfinite)."""
import gzip
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from cure_ext.cure import all_finite
from cure_ext.train import cli, steps
from cure_ext.train.checkpoint import FORMAT, read_checkpoint
from cure_ext.train.models import build_model
from train_runs import read_metrics, without_times

# A few seconds per run on two shared cores.
TINY = ["--pretrain-epochs", "1", "--epochs", "2", "--train-limit", "200", "--test-limit", "60", "--eval-limit", "30",
        "--batch-size", "50", "--attack-steps", "1", "--eval-steps", "2", "--quiet"]
KILLABLE = ["--pretrain-epochs", "1", "--epochs", "3", "--train-limit", "400", "--test-limit", "100", "--eval-limit",
            "50", "--attack-steps", "2", "--eval-steps", "3", "--quiet"]


def snapshot(folder):
    """Every file under folder, by relative path, with its bytes."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def assert_same_weights(a, b):
    sa, sb = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reliability") / "run")
    assert cli.train_main(TINY + ["--out", out]) == 0
    return out


def train_process(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "cure_ext.train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# ---- 1. crash and resume ------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume_ends_bit_exactly_where_an_uninterrupted_run_ends(tmp_path):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    ref = train_process(KILLABLE + ["--out", reference], tmp_path)
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err

    proc = train_process(KILLABLE + ["--out", killed], tmp_path)
    last = os.path.join(killed, "last.pt")
    deadline = time.monotonic() + 300
    while not os.path.exists(last) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.path.exists(last), proc.communicate()[1]
    delay = random.uniform(0.0, 2.0)  # into a later epoch, an evaluation, or a checkpoint write
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    was_killed = proc.returncode == -signal.SIGKILL
    read_checkpoint(last)  # whatever the kill interrupted, last.pt is a complete checkpoint

    resumed = train_process(["--resume", "--out", killed, "--quiet"], tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, (delay, err)
    assert_same_weights(os.path.join(reference, "last.pt"), last)
    assert_same_weights(os.path.join(reference, "best.pt"), os.path.join(killed, "best.pt"))
    assert without_times(read_metrics(killed)) == without_times(read_metrics(reference)), (delay, was_killed)
    assert not [f for f in os.listdir(killed) if f.endswith(".tmp") and f != "last.pt.tmp"]


def test_a_kill_while_last_pt_is_written_leaves_the_previous_one(tmp_path):
    """The child writes a checkpoint, then dies (SIGKILL) half-way through writing the next one."""
    path = str(tmp_path / "last.pt")
    script = textwrap.dedent(f"""
        import os, signal, torch
        from cure_ext.train.checkpoint import FORMAT, save_atomic
        first = {{"format": FORMAT, "config": {{}}, "model_spec": {{"name": "cnn", "num_classes": 10,
                  "in_channels": 1}}, "model": {{"w": torch.arange(1000.0)}}}}
        save_atomic(first, {path!r})
        def dies_half_way(obj, f, *args, **kwargs):
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dies_half_way
        save_atomic({{**first, "model": {{"w": torch.zeros(1000)}}}}, {path!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert os.path.getsize(path + ".tmp") > 0  # the torn write went to the temporary file ...
    assert torch.equal(read_checkpoint(path)["model"]["w"], torch.arange(1000.0))  # ... last.pt is the old one


# ---- 2. bad input -------------------------------------------------------------------------------------

def _cifar_dir(tmp, content):
    root = tmp / "cifar" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(content)
    return str(tmp / "cifar")


def _svhn_dir(tmp):
    root = tmp / "svhn"
    root.mkdir()
    for split in ("train", "test"):
        (root / f"{split}_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, but nothing after this header")
    return str(tmp)


def _fashion_dir(tmp):
    root = tmp / "fmnist"
    root.mkdir()
    header = bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (root / name).write_bytes(gzip.compress(header + bytes(1000)))  # a truncated download
    return str(root)


def _file(tmp, name, content):
    path = tmp / name
    path.write_bytes(content)
    return str(path)


def _state_file(tmp, name, state):
    path = str(tmp / name)
    torch.save(state, path)
    return path


def _tampered_last(run_dir, tmp, **changes):
    """A copy of the run's last.pt with entries replaced, in a folder of its own."""
    ckpt = torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)
    folder = tmp / "tampered"
    folder.mkdir()
    torch.save({**ckpt, **changes}, str(folder / "last.pt"))
    return str(folder)


SEVEN_CLASSES = lambda: build_model("cnn", 7, 1, seed=0).state_dict()  # noqa: E731

# (id, tool, argv from (run_dir, tmp_path), words the message must contain)
BAD_INPUT = [
    ("negative-epochs", "train", lambda r, t: ["--epochs", "-1"], "--epochs must be >= 0"),
    ("percentile-above-1", "train", lambda r, t: ["--percentile", "1.5"], "--percentile must be in [0, 1]"),
    ("percentile-below-0", "train", lambda r, t: ["--percentile", "-0.1"], "--percentile must be in [0, 1]"),
    ("negative-eps", "train", lambda r, t: ["--eps", "-0.1"], "--eps must be > 0"),
    ("negative-val-size", "train", lambda r, t: ["--val-size", "-1"], "--val-size must be >= 0"),
    ("val-size-of-the-training-set", "train", lambda r, t: TINY + ["--val-size", "1437", "--out", str(t / "o")],
     "--val-size 1437 must be >= 0 and smaller than the training set (1437 images)"),
    ("zero-batch", "train", lambda r, t: ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("not-a-number", "train", lambda r, t: ["--lr", "fast"], "not a number"),
    ("unknown-method", "train", lambda r, t: ["--method", "fgsm"], "invalid choice: 'fgsm'"),
    ("unknown-dataset", "train", lambda r, t: ["--dataset", "mnist"], "invalid choice: 'mnist'"),
    ("unknown-recipe", "train", lambda r, t: ["--recipe", "imagenet"], "unknown recipe"),
    ("missing-data-dir", "train", lambda r, t: ["--dataset", "cifar10", "--data-dir", str(t / "nowhere"),
                                                "--out", str(t / "o")], "missing data"),
    ("missing-fashion-files", "train", lambda r, t: ["--dataset", "fashion-mnist", "--data-dir", str(t),
                                                     "--out", str(t / "o")], "missing data file"),
    ("truncated-fashion-mnist", "train", lambda r, t: ["--dataset", "fashion-mnist", "--data-dir", _fashion_dir(t),
                                                       "--out", str(t / "o")], "truncated or corrupt"),
    ("garbage-cifar", "train", lambda r, t: ["--dataset", "cifar10", "--data-dir", _cifar_dir(t, b"\x00garbage"),
                                             "--out", str(t / "o")], "is not a CIFAR python batch"),
    ("truncated-cifar", "train", lambda r, t: ["--dataset", "cifar10", "--out", str(t / "o"), "--data-dir",
                                               _cifar_dir(t, pickle.dumps(
                                                   {b"data": b"x" * 3072, b"labels": [1]})[:40])],
     "is not a CIFAR python batch"),
    ("garbage-svhn", "train", lambda r, t: ["--dataset", "svhn", "--data-dir", _svhn_dir(t), "--out", str(t / "o")],
     "is not an SVHN .mat file"),
    ("out-under-a-file", "train", lambda r, t: TINY + ["--out", os.path.join(_file(t, "afile", b"x"), "out")],
     "cannot write to the output folder"),
    ("out-is-a-file", "train", lambda r, t: TINY + ["--out", _file(t, "afile", b"x")],
     "cannot write to the output folder"),
    ("out-holds-a-run", "train", lambda r, t: TINY + ["--out", r], "already holds a run"),
    ("resume-changes-an-option", "train", lambda r, t: ["--resume", "--out", r, "--eps", "0.3"], "--eps"),
    ("resume-changes-the-val-size", "train", lambda r, t: ["--resume", "--out", r, "--val-size", "10"], "--val-size"),
    ("resume-without-a-run", "train", lambda r, t: ["--resume", "--out", str(t)], "no checkpoint at"),
    ("resume-garbage", "train", lambda r, t: ["--resume", "--out", os.path.dirname(_file(t, "last.pt", b"\x00" * 64))],
     "not a readable checkpoint"),
    ("resume-from-a-best-pt", "train",
     lambda r, t: ["--resume", "--out", _best_as_last(r, t)], "cannot be resumed from"),
    ("resume-other-classes", "train",
     lambda r, t: ["--resume", "--out", _tampered_last(r, t, model=SEVEN_CLASSES(),
                                                       model_spec={"name": "cnn", "num_classes": 7, "in_channels": 1})],
     "holds a"),
    ("resume-damaged-state", "train", lambda r, t: ["--resume", "--out", _tampered_last(r, t, rng={"data": 3})],
     "damaged run state"),
    ("init-garbage", "train", lambda r, t: TINY + ["--init-checkpoint", _file(t, "g.pt", b"garbage"),
                                                   "--out", str(t / "o")], "not a readable checkpoint"),
    ("init-other-model", "train",
     lambda r, t: TINY + ["--init-checkpoint", _state_file(t, "m.pt", {"fc.weight": torch.zeros(3, 4)}),
                          "--out", str(t / "o")], "does not fit the model"),
    ("init-other-classes", "train", lambda r, t: TINY + ["--init-checkpoint", _state_file(t, "m.pt", SEVEN_CLASSES()),
                                                         "--out", str(t / "o")], "does not fit the model"),
    ("init-missing", "train", lambda r, t: TINY + ["--init-checkpoint", str(t / "none.pt"), "--out", str(t / "o")],
     "no checkpoint at"),
    ("eval-garbage", "eval", lambda r, t: [_file(t, "g.pt", b"\x80\x04garbage")], "not a readable checkpoint"),
    ("eval-foreign", "eval", lambda r, t: [_state_file(t, "m.pt", SEVEN_CLASSES())], "not a cure_ext.train checkpoint"),
    ("eval-incomplete", "eval", lambda r, t: [_state_file(t, "m.pt", {"format": FORMAT})], "incomplete or damaged"),
    ("eval-other-classes", "eval",
     lambda r, t: [_state_file(t, "m.pt", {**torch.load(os.path.join(r, "best.pt"), weights_only=True),
                                           "model": SEVEN_CLASSES()})], "does not fit the model"),
    ("eval-config-without-dataset", "eval",
     lambda r, t: [_state_file(t, "m.pt", {**torch.load(os.path.join(r, "best.pt"), weights_only=True),
                                           "config": {"eps": 0.2}})], "config lacks dataset"),
    ("eval-bad-limit", "eval", lambda r, t: [os.path.join(r, "best.pt"), "--limit", "0"], "--limit must be >= 1"),
]


def _best_as_last(run_dir, tmp):
    folder = tmp / "best-as-last"
    folder.mkdir()
    with open(os.path.join(run_dir, "best.pt"), "rb") as f:
        (folder / "last.pt").write_bytes(f.read())
    return str(folder)


@pytest.mark.parametrize("tool, make_argv, message", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_paragraph_a_nonzero_exit_and_touches_no_file(run_dir, tmp_path, capsys, tool, make_argv,
                                                                       message):
    argv = make_argv(run_dir, tmp_path)
    before_run, before_tmp = snapshot(run_dir), snapshot(tmp_path)
    main = cli.train_main if tool == "train" else cli.eval_main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(run_dir) == before_run
    after_tmp = snapshot(tmp_path)
    assert {k: v for k, v in after_tmp.items() if k in before_tmp} == before_tmp  # nothing overwritten or deleted
    assert not any(k.endswith((".pt", ".json", ".csv")) for k in set(after_tmp) - set(before_tmp))


# ---- 3. numerical faults ------------------------------------------------------------------------------

def test_all_finite():
    ok, bad = [torch.ones(3), None], [torch.tensor([1.0, float("inf")])]
    assert all_finite(torch.tensor(1.0), ok)
    assert not all_finite(torch.tensor(float("nan")), ok)
    assert not all_finite(torch.tensor(1.0), ok, bad)


def inject_nan(monkeypatch, at_calls, on_call=None):
    """The CURE step gets a NaN input on the given (1-based) calls: its loss and gradients are NaN."""
    real, calls = steps.STEPS["cure"], []

    def step(setup, x, y, weight):
        calls.append(1)
        if len(calls) in at_calls:
            if on_call:
                on_call()
            x = torch.full_like(x, float("nan"))
        return real(setup, x, y, weight)

    monkeypatch.setitem(steps.STEPS, "cure", step)


def test_a_nonfinite_step_stops_the_run_naming_epoch_and_step_and_keeps_last_pt(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    seen = {}
    # 200 examples in batches of 50: 4 CURE steps per epoch; call 7 is step 3 of the second CURE epoch (epoch 3).
    inject_nan(monkeypatch, {7}, lambda: seen.update(before=snapshot(out)))
    assert cli.train_main(TINY + ["--out", out]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "non-finite loss or gradient at epoch 3" in err and "step 3 of 4" in err, err
    assert "--skip-nonfinite" in err
    assert snapshot(out) == seen["before"]  # last.pt, best.pt and log.csv of epoch 2, untouched
    ckpt = read_checkpoint(os.path.join(out, "last.pt"))
    assert len(ckpt["records"]) == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not os.path.exists(os.path.join(out, "metrics.json"))

    # A run stopped so continues past the bad step with --resume --skip-nonfinite.
    monkeypatch.undo()
    inject_nan(monkeypatch, {3})
    assert cli.train_main(["--resume", "--out", out, "--skip-nonfinite", "--quiet"]) == 0
    m = read_metrics(out)
    assert m["skipped_steps"] == 1 and m["epochs"][-1]["skipped_steps"] == 1 and m["config"]["skip_nonfinite"]


def test_skip_nonfinite_skips_and_counts_the_steps(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    inject_nan(monkeypatch, {2, 6})
    assert cli.train_main(TINY + ["--skip-nonfinite", "--out", out]) == 0
    m = read_metrics(out)
    assert m["skipped_steps"] == 2 and [r.get("skipped_steps") for r in m["epochs"]] == [0, 1, 1]
    assert 0.69 < m["epochs"][1]["update_fraction"] < 0.72  # counted over the steps that updated
    model = read_checkpoint(os.path.join(out, "last.pt"))["model"]
    assert all(torch.isfinite(v).all() for v in model.values())


def test_a_diverging_lr_stops_the_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.train_main(["--method", "standard", "--pretrain-epochs", "0", "--epochs", "1", "--lr", "1e30",
                           "--train-limit", "200", "--test-limit", "30", "--eval-steps", "1", "--quiet",
                           "--out", out]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss or gradient at epoch 1" in err and "Traceback" not in err, err
    assert not os.path.exists(os.path.join(out, "last.pt"))

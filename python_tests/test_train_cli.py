"""End-to-end: cure-train / cure-eval / cure-compare on digits with a tiny budget."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cure_ext import CURESGD
from cure_ext.train import cli, compare, config, loop, worker
from cure_ext.train.checkpoint import load_checkpoint
from cure_ext.train.device import cpu_threads
from train_runs import read_metrics, without_times

TINY = ["--pretrain-epochs", "1", "--epochs", "2", "--attack-steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cure") / "run")
    assert cli.train_main(TINY + ["--out", out]) == 0
    return out


def test_a_run_writes_its_outputs(run_dir):
    for name in ("metrics.json", "last.pt", "best.pt", "log.csv", "accuracy.png", "update_fraction.png"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    assert not [f for f in os.listdir(run_dir) if f.endswith(".tmp")]
    m = read_metrics(run_dir)
    for key in ("clean_acc", "pgd20_acc", "cw_acc", "nrr_cw", "sum"):
        assert 0 <= m["final"][key] <= 200
    assert m["final"]["nrr_cw"] == pytest.approx(
        2 * m["final"]["clean_acc"] * m["final"]["cw_acc"] / (m["final"]["clean_acc"] + m["final"]["cw_acc"]))
    assert m["config"]["method"] == "cure" and m["config"]["preset"] == "paper" and m["config"]["beta"] == 1.0
    assert m["config"]["eps"] == 0.2 and m["config"]["dataset"] == "digits"
    assert [r["phase"] for r in m["epochs"]] == ["pretrain", "train", "train"]
    cure_epochs = [r for r in m["epochs"] if r["phase"] == "train"]
    for r in cure_epochs:
        assert 0.69 < r["update_fraction"] < 0.72  # p = 0.3 conserved per tensor
        assert "linear.weight" not in r["tensor_update_fraction"]
        assert "layer1.0.conv1.weight" in r["tensor_update_fraction"]
    # Per-epoch and final evaluations use the same attack seeds: on the same weights they agree.
    by_epoch = {r["epoch"]: r for r in m["epochs"]}
    assert m["final"]["pgd20_acc"] == by_epoch[3]["pgd20_acc"] and m["final"]["clean_acc"] == by_epoch[3]["clean_acc"]
    # best.pt: the CURE epoch with the highest PGD-20 accuracy on the validation split (the first of equals).
    assert m["best_selected_on"] == "validation" and m["config"]["val_size"] == 144
    val_pgd = [r["val_pgd20_acc"] for r in cure_epochs]
    assert m["best"]["epoch"] == cure_epochs[val_pgd.index(max(val_pgd))]["epoch"]
    assert torch.load(os.path.join(run_dir, "best.pt"), weights_only=True)["record"]["epoch"] == m["best"]["epoch"]
    assert all(0 <= r["val_clean_acc"] <= 100 and 0 <= r["val_pgd20_acc"] <= 100 for r in m["epochs"])
    assert m["best"]["n_test"] == m["final"]["n_test"] == 360  # both reported on the whole test set
    with open(os.path.join(run_dir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[1]["phase"] == "train" and float(rows[2]["pgd20_acc"]) >= 0
    assert float(rows[2]["val_pgd20_acc"]) == pytest.approx(m["epochs"][2]["val_pgd20_acc"], rel=1e-5)


@pytest.mark.parametrize("val_size", [None, 0])
def test_best_is_chosen_on_validation_never_on_the_test_set(tmp_path, monkeypatch, capsys, val_size):
    """Per-epoch PGD-20 accuracies scripted so that validation and test disagree: best.pt follows the
    validation split; with --val-size 0 the last epoch is the best. The test set only reports."""
    scripted = {True: {2: 40.0, 3: 30.0, 4: 20.0}, False: {2: 10.0, 3: 20.0, 4: 50.0}}  # validation?, epoch
    sizes = set()
    real = loop.Trainer._evaluate

    def evaluate(self, model, final, validation=False):
        acc = real(self, model, final, validation)
        if not final:
            sizes.add((validation, acc["n_test"]))
            acc["pgd20_acc"] = scripted[validation].get(len(self.records) + 1, 0.0)  # 0 in pre-training
        return acc

    monkeypatch.setattr(loop.Trainer, "_evaluate", evaluate)
    out = str(tmp_path / "run")
    extra = [] if val_size is None else ["--val-size", str(val_size)]
    assert cli.train_main(["--pretrain-epochs", "1", "--epochs", "3", "--train-limit", "200", "--attack-steps", "1",
                           "--eval-steps", "1", "--eval-limit", "50", "--quiet", "--out", out, *extra]) == 0
    m = read_metrics(out)
    best_pt = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    if val_size is None:
        assert sizes == {(True, 144), (False, 50)}  # the whole validation split; the first --eval-limit test images
        assert m["best_selected_on"] == "validation" and m["best"]["epoch"] == best_pt["record"]["epoch"] == 2
        assert [r["val_pgd20_acc"] for r in m["epochs"]] == [0.0, 40.0, 30.0, 20.0]
        assert "best chosen by PGD-20 on 144 validation images" in capsys.readouterr().out
    else:
        assert sizes == {(False, 50)} and not any("val_pgd20_acc" in r for r in m["epochs"])
        assert m["best_selected_on"] == "last" and m["best"]["epoch"] == best_pt["record"]["epoch"] == 4
        assert m["best"] == m["final"]
        assert "best chosen by none: it is the last epoch" in capsys.readouterr().out
    assert [r["pgd20_acc"] for r in m["epochs"]] == [0.0, 10.0, 20.0, 50.0]  # recorded, never chosen on


def digits_test_set():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    _, x, _, y = train_test_split((d.images / 16).astype(np.float32), d.target, test_size=0.2, random_state=0,
                                  stratify=d.target)
    return torch.from_numpy(x)[:, None], torch.from_numpy(y)


def independent_pgd(model, x, y, eps, step, steps, seed):
    g = torch.Generator().manual_seed(seed)
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def test_load_checkpoint_reproduces_the_recorded_accuracy(run_dir):
    model, config = load_checkpoint(os.path.join(run_dir, "last.pt"))
    assert not model.training and config["dataset"] == "digits"
    x, y = digits_test_set()
    final = read_metrics(run_dir)["final"]
    with torch.no_grad():
        clean = 100.0 * int((model(x).argmax(1) == y).sum()) / len(y)
    assert clean == pytest.approx(final["clean_acc"], abs=1e-9)
    eps = config["eps"]
    with cpu_threads(None, "cnn"):
        robust = [100.0 * int((model(independent_pgd(model, x, y, eps, eps / 4, 20, s)).argmax(1) == y).sum())
                  / len(y) for s in range(3)]
    # Random starts differ from the trainer's; PGD-20 accuracy moves by a few examples of 360 between starts.
    assert abs(np.mean(robust) - final["pgd20_acc"]) < 2.5, (robust, final["pgd20_acc"])
    best_model, best_config = load_checkpoint(os.path.join(run_dir, "best.pt"))
    assert best_config == config and not best_model.training


def test_same_seed_same_metrics(run_dir, tmp_path):
    out = str(tmp_path / "again")
    assert cli.train_main(TINY + ["--out", out]) == 0
    assert without_times(read_metrics(out)) == without_times(read_metrics(run_dir))


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_ends(run_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "killed")
    real = loop.Trainer.train_epoch
    calls = []

    def dies_in_the_second_cure_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "train_epoch", dies_in_the_second_cure_epoch)
    assert cli.train_main(TINY + ["--out", out]) == 130
    assert not os.path.exists(os.path.join(out, "metrics.json"))
    monkeypatch.setattr(loop.Trainer, "train_epoch", real)
    assert cli.train_main(["--resume", "--out", out, "--quiet"]) == 0
    assert without_times(read_metrics(out)) == without_times(read_metrics(run_dir))


def test_update_blocks_trains_only_those_stages(run_dir, tmp_path):
    out = str(tmp_path / "blocks")
    init = os.path.join(run_dir, "last.pt")
    assert cli.train_main(["--method", "pgd-at", "--init-checkpoint", init, "--update-blocks", "2", "--epochs", "1",
                           "--attack-steps", "2", "--eval-steps", "2", "--quiet", "--out", out]) == 0
    before, _ = load_checkpoint(init)
    after, config = load_checkpoint(os.path.join(out, "last.pt"))
    assert config["update_blocks"] == [2] or config["update_blocks"] == (2,)
    for (name, p), q in zip(before.named_parameters(), after.parameters()):
        if name.startswith("layer2."):
            assert not torch.equal(p, q), name
        else:
            assert torch.equal(p, q), name


def test_cure_eff_with_the_official_preset_and_a_decaying_revision_rate(tmp_path, monkeypatch):
    rates = []
    real_step = CURESGD.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["revision_rate"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(CURESGD, "step", recording_step)
    out = str(tmp_path / "eff")
    assert cli.train_main(["--method", "cure-eff", "--preset", "official", "--epochs", "3", "--warmup-epochs", "1",
                           "--revision-schedule", "linear", "--revision-rate", "0.5", "--attack-steps", "2",
                           "--eval-steps", "2", "--quiet", "--out", out]) == 0
    steps = len(rates)
    assert steps == 22  # 2 CURE epochs of 11 batches (1,293 training images: 144 are held out for validation)
    assert rates == pytest.approx([0.5 * (1 - t / steps) for t in range(steps)])
    m = read_metrics(out)
    assert [r["phase"] for r in m["epochs"]] == ["warmup", "train", "train"]
    assert m["config"]["beta"] == 5.0 and m["config"]["score"] == "signed" and m["config"]["pretrain_epochs"] == 0
    assert sorted(m["epochs"][1]["tensor_update_fraction"]) == [f"layer{i}.0.conv1.weight" for i in (1, 2, 3)]


def test_bad_input_is_one_paragraph_and_exit_2(run_dir, tmp_path, capsys):
    def fails(argv, match):
        assert cli.train_main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("cure-train: error:") and match in err, err

    fails(["--percentile", "2", "--quiet"], "--percentile must be in [0, 1]")
    fails(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "c"), "--quiet"],
          "missing data")
    before = os.path.getmtime(os.path.join(run_dir, "last.pt"))
    fails(TINY + ["--out", run_dir], "already holds a run")
    assert os.path.getmtime(os.path.join(run_dir, "last.pt")) == before
    fails(["--resume", "--out", run_dir, "--eps", "0.3", "--quiet"], "--eps")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    fails(["--init-checkpoint", str(bad), "--out", str(tmp_path / "d"), "--quiet"], "not a readable checkpoint")
    fails(["--recipe", "cifar10-resnet18", "--dataset", "digits"], "is for cifar10")
    assert cli.eval_main([str(bad)]) == 2
    assert "cure-eval: error:" in capsys.readouterr().err


def test_module_entry_point_lists_the_recipes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cure_ext.train", "--list-recipes"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "cifar10-resnet18" in result.stdout and "86.76" in result.stdout and "wrn34-10" in result.stdout


def test_a_compare_worker_started_inside_a_checkout_runs_this_cure_ext(tmp_path, monkeypatch):
    """`cure-compare --jobs N` run in a folder holding a cure_ext/ (a checkout, after a non-editable install):
    its workers import the cure_ext this process runs, not the folder's (here a decoy failing on import)."""
    (tmp_path / "cure_ext").mkdir()
    (tmp_path / "cure_ext" / "__init__.py").write_text("raise ImportError('the decoy in the current folder')\n")
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "run")
    proc = worker.start(config.make_config(dataset="cifar10", data_dir=str(tmp_path / "nothing")), out)
    assert proc.wait(timeout=300) == 2, worker.last_error(out)
    assert worker.last_error(out).startswith("error: missing data: no cifar-10-batches-py/"), worker.last_error(out)


def test_cure_eval_on_a_saved_model(run_dir, tmp_path, capsys):
    path = str(tmp_path / "eval.json")
    assert cli.eval_main([os.path.join(run_dir, "best.pt"), "--limit", "100", "--steps", "5", "--json", path]) == 0
    assert "PGD-20" in capsys.readouterr().out
    with open(path) as f:
        result = json.load(f)
    assert result["n_test"] == 100 and result["eps"] == 0.2 and "nrr_cw" in result


def test_compare_protocol(tmp_path, monkeypatch):
    """Every method of a seed starts from that seed's pre-training; ablations change only their settings."""
    seen = []

    def fake_train(cfg, out, quiet=False, resume=False):
        seen.append((cfg, out))
        os.makedirs(out)
        bonus = {"standard": 0, "trades": 5, "cure": 10}.get(cfg.method, 0) + cfg.seed
        acc = {"clean_acc": 90.0 - bonus, "pgd20_acc": 10.0 + bonus, "cw_acc": 9.0 + bonus}
        return {"final": {**acc, "nrr_cw": 1.0, "sum": acc["clean_acc"] + acc["cw_acc"]}}

    monkeypatch.setattr(compare, "train", fake_train)
    out = str(tmp_path / "cmp")
    result = compare.run_compare({"pretrain_epochs": 2, "epochs": 1}, ["standard", "trades", "cure"], [0, 1], out,
                                 ablations=True, quiet=True)
    by_name = {(os.path.basename(os.path.dirname(o)), c.seed): c for c, o in seen}
    for seed in (0, 1):
        pre = by_name[("pretrain", seed)]
        assert pre.method == "standard" and pre.epochs == 2 and pre.pretrain_epochs == 0
        init = os.path.join(out, "pretrain", f"seed{seed}", "last.pt")
        for name in ("standard", "trades", "cure", "cure-mask-only", "cure-revision-only"):
            assert by_name[(name, seed)].init_checkpoint == init
    assert by_name[("cure-mask-only", 0)].gamma == 0 and by_name[("cure-mask-only", 0)].revision_rate == 0
    assert by_name[("cure-mask-only", 0)].percentile == 0.3
    assert by_name[("cure-revision-only", 0)].percentile == 0 and by_name[("cure-revision-only", 0)].gamma == 1.0
    cure = next(s for s in result["summary"] if s["method"] == "cure")
    assert cure["clean_acc_mean"] == pytest.approx(79.5) and cure["clean_acc_std"] == pytest.approx(0.7071, abs=1e-4)
    for name in ("compare.csv", "compare.json", "tradeoff.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert "79.50 ± 0.71" in compare.compare_table(result)


def test_compare_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    assert cli.compare_main(["--methods", "standard", "cure", "--seeds", "0", "--pretrain-epochs", "1",
                             "--epochs", "1", "--attack-steps", "1", "--eval-steps", "2", "--quiet",
                             "--out", out]) == 0
    table = capsys.readouterr().out
    assert "CURE" in table and "standard" in table and "±" in table
    with open(os.path.join(out, "compare.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"standard", "cure"}

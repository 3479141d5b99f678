"""AutoAttack through its original implementation (pyautoattack, or the authors' `autoattack` module), and our
attacks measured against it."""
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from cure_ext.train import autoattack as aa
from cure_ext.train.cli import compare_main, eval_main, train_main
from cure_ext.train.data import batches, load_dataset
from cure_ext.train.evaluate import evaluate
from cure_ext.train.device import cpu_threads
from cure_ext.train.steps import StepSetup, natural_step, pgd_at_step

import pyautoattack

EPS = 0.2
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    with cpu_threads(None, "cnn"):
        yield


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None)


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def trained_mlp(digits, natural_epochs, pgd_at_epochs):
    """A small model trained with the trainer's own steps (PGD-AT: 5 steps of ε/4)."""
    with cpu_threads(None, "cnn"):
        model = mlp(0)
        params = list(model.parameters())
        setup = StepSetup(model, torch.optim.SGD(params, lr=0.05, momentum=0.9), params,
                          torch.Generator().manual_seed(1), EPS, EPS / 4, 5)
        order = torch.Generator().manual_seed(0)
        for epoch in range(natural_epochs + pgd_at_epochs):
            for x, y in batches(digits.train_x, digits.train_y, digits.scale, 64, CPU, order):
                (natural_step if epoch < natural_epochs else pgd_at_step)(setup, x, y)
    return model.eval()


@pytest.fixture(scope="module")
def robust_mlp(digits):
    return trained_mlp(digits, 2, 8)


@pytest.fixture(scope="module")
def natural_mlp(digits):
    return trained_mlp(digits, 3, 0)


def digits_test(digits, n=None):
    return digits.test_x[:n].float() / digits.scale, digits.test_y[:n]


def test_real_autoattack_is_stronger_than_pgd20_and_stays_in_the_ball(robust_mlp, digits):
    """The standard AutoAttack, run for real: adversarial examples in the ε-ball and in [0, 1], the mask
    is what the model says of them, progress per attack, and AA ≤ PGD-20 ≤ clean accuracy."""
    x, y = digits_test(digits, 32)
    lines = []
    x_adv, robust = aa.run_autoattack(robust_mlp, x, y, EPS, seed=0, batch_size=256, device=CPU,
                                      progress=lines.append)
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(robust, robust_mlp(x_adv).argmax(1) == y)
    assert [line.split(":")[0] for line in lines] == [f"AutoAttack {a}" for a in ("apgd-ce", "apgd-t", "fab-t",
                                                                                    "square")]
    assert lines[-1].startswith(f"AutoAttack square: {int(robust.sum())} of 32 examples left")
    acc = evaluate(robust_mlp, digits, EPS, CPU, step_size=EPS / 4, attacks=("pgd20",), limit=32)
    aa_acc = 100.0 * float(robust.float().mean())
    assert 0 < aa_acc <= acc["pgd20_acc"] <= acc["clean_acc"]


@pytest.mark.slow
def test_attack_by_attack_equals_the_providers_standard_evaluation(robust_mlp, digits):
    """run_autoattack runs the attacks one by one to report progress: the provider's own standard run
    breaks exactly the same examples."""
    x, y = digits_test(digits, 32)
    _, robust = aa.run_autoattack(robust_mlp, x, y, EPS, seed=0, batch_size=256, device=CPU)
    adversary = pyautoattack.AutoAttack(robust_mlp, norm="Linf", eps=EPS, version="standard", seed=0, device="cpu")
    _, labels = adversary.run_standard_evaluation(x, y, batch_size=256)
    assert torch.equal(robust, labels == y)


def test_our_attacks_against_apgd_ce(robust_mlp, digits):
    """Against an implementation we did not write, on the whole test set: the provider's clean accuracy is
    ours, and its APGD-CE (100 iterations, the standard version's) is at least as strong as our PGD-20 (within
    1 point), and not far stronger (a PGD-20 that failed to attack would be)."""
    ours = evaluate(robust_mlp, digits, EPS, CPU, step_size=EPS / 4, attacks=("pgd20",))
    x, y = digits_test(digits)
    adversary = pyautoattack.AutoAttack(robust_mlp, norm="Linf", eps=EPS, version="standard", seed=0, device="cpu")
    adversary.attacks_to_run = ["apgd-ce"]
    x_adv, labels = adversary.run_standard_evaluation(x, y, batch_size=256)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    apgd_ce = 100.0 * float((labels == y).float().mean())
    assert ours["clean_acc"] == 100.0 * adversary.clean_accuracy(x, y, bs=256)
    assert apgd_ce - 1.0 <= ours["pgd20_acc"] <= apgd_ce + 8.0
    assert ours["pgd20_acc"] < ours["clean_acc"] - 30


def test_autoattack_is_seeded_and_leaves_the_global_generator_alone(natural_mlp, digits):
    """On a model without robustness (APGD-CE alone breaks every example: AutoAttack in a second)."""
    model, (x, y) = natural_mlp, digits_test(digits, 24)
    state = torch.get_rng_state()
    runs = [aa.run_autoattack(model, x, y, 0.3, seed=s, batch_size=16, device=CPU) for s in (0, 0, 1)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])  # APGD's random start follows the seed


AUTHORS_STANDIN = '''
"""Stand-in for the authors' `autoattack` (fra31/auto-attack): their AutoAttack's signatures, exactly,
recording the calls and running pyautoattack underneath."""
import pyautoattack

calls = []


class AutoAttack:
    def __init__(self, model, norm='Linf', eps=.3, seed=None, verbose=True, attacks_to_run=[], version='standard',
                 is_tf_model=False, device='cuda', log_path=None):
        calls.append(dict(norm=norm, eps=eps, seed=seed, verbose=verbose, version=version, device=device))
        self._inner = pyautoattack.AutoAttack(model, norm=norm, eps=eps, seed=seed, version=version, device=device)
        self.attacks_to_run = self._inner.attacks_to_run

    def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False, state_path=None):
        calls.append(dict(attacks=list(self.attacks_to_run), n=len(y_orig), bs=bs, return_labels=return_labels))
        self._inner.attacks_to_run = self.attacks_to_run
        x_adv, y_adv = self._inner.run_standard_evaluation(x_orig, y_orig, batch_size=bs)
        return (x_adv, y_adv) if return_labels else x_adv
'''


def test_the_authors_module_is_preferred_and_called_with_its_own_signature(natural_mlp, digits, tmp_path,
                                                                          monkeypatch):
    """Where `autoattack` is importable it is used, with the authors' keywords (a recording stand-in with
    their signatures, running pyautoattack underneath: the same result as the pyautoattack branch)."""
    model, (x, y) = natural_mlp, digits_test(digits, 24)
    via_pyautoattack = aa.run_autoattack(model, x, y, 0.3, seed=3, batch_size=16, device=CPU)
    (tmp_path / "autoattack").mkdir()
    (tmp_path / "autoattack" / "__init__.py").write_text(textwrap.dedent(AUTHORS_STANDIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert aa.provider() == "autoattack"
        via_authors = aa.run_autoattack(model, x, y, 0.3, seed=3, batch_size=16, device=CPU)
        import autoattack
    finally:
        sys.modules.pop("autoattack", None)  # the stand-in must not outlive the test
    assert autoattack.calls[0] == dict(norm="Linf", eps=0.3, seed=3, verbose=False, version="standard", device="cpu")
    assert autoattack.calls[1] == dict(attacks=["apgd-ce"], n=24, bs=16, return_labels=True)
    assert torch.equal(via_authors[0], via_pyautoattack[0]) and torch.equal(via_authors[1], via_pyautoattack[1])


@pytest.fixture
def no_provider(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in aa.PROVIDERS else find_spec(name, *a))


@pytest.mark.parametrize("main,argv", [
    (train_main, ["--autoattack", "--out", "{tmp}/run"]),
    (eval_main, ["{tmp}/run/best.pt", "--autoattack"]),
    (compare_main, ["--autoattack", "--out", "{tmp}/run"])])
def test_autoattack_without_a_provider_is_refused_before_anything_runs(main, argv, no_provider, tmp_path, capsys):
    assert aa.provider() is None
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--autoattack" in err and 'pip install "cure_ext[autoattack]"' in err
    assert list(tmp_path.iterdir()) == []


TRAIN = ["--method", "standard", "--pretrain-epochs", "0", "--epochs", "2", "--eps", "0.3", "--test-limit", "24",
         "--autoattack", "--quiet", "--seed", "1"]


def test_cure_train_and_cure_eval_report_the_same_seeded_aa(tmp_path, capsys):
    """cure-train --autoattack puts aa_acc in metrics.json's last and best results and the AA column in its
    table; cure-eval --autoattack with the same seed and examples gives the same number, every time."""
    out = tmp_path / "run"
    assert train_main(TRAIN + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AA" in printed.splitlines()[0] and "AutoAttack" not in printed  # --quiet: no progress lines
    metrics = json.loads((out / "metrics.json").read_text())
    for which in ("final", "best"):
        r = metrics[which]
        assert r["aa_acc"] <= min(r["pgd20_acc"], r["cw_acc"]) and r["robust_acc"] == r["aa_acc"]
    results = []
    for k in range(2):
        assert eval_main([str(out / "last.pt"), "--autoattack", "--limit", "24", "--seed", "1", "--device", "cpu",
                          "--json", str(tmp_path / f"eval{k}.json")]) == 0
        results.append(json.loads((tmp_path / f"eval{k}.json").read_text()))
    assert "AutoAttack apgd-ce:" in capsys.readouterr().out
    assert results[0]["aa_acc"] == results[1]["aa_acc"] == metrics["final"]["aa_acc"]
    assert results[0]["nrr"] == metrics["final"]["nrr"]


@pytest.mark.slow
def test_cure_eval_autoattack_under_torchrun(tmp_path):
    """Under torchrun each rank runs AutoAttack on its share of the test batches and the counts are summed."""
    out = tmp_path / "run"
    assert train_main(TRAIN + ["--out", str(out)]) == 0
    args = [str(out / "last.pt"), "--autoattack", "--limit", "24", "--batch-size", "8", "--seed", "1", "--json"]
    script = "import sys; from cure_ext.train.cli import eval_main; sys.exit(eval_main())"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--no-python", sys.executable, "-c", script, *args, str(tmp_path / "two.json")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("AutoAttack square:") == 1  # rank 0's progress only
    assert eval_main(args + [str(tmp_path / "one.json")]) == 0
    two, one = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("two", "one"))
    assert two["n_test"] == 24 and two["aa_acc"] <= min(two["pgd20_acc"], two["cw_acc"])
    assert all(two[k] == one[k] for k in ("clean_acc", "pgd20_acc", "cw_acc", "nrr_cw"))  # exact under torchrun


@pytest.mark.slow
def test_cure_compare_autoattack_gives_every_run_aa(tmp_path):
    out = tmp_path / "cmp"
    assert compare_main(["--methods", "standard", "pgd-at", "--seeds", "0", "--pretrain-epochs", "0", "--epochs", "1",
                         "--train-limit", "256", "--test-limit", "16", "--eps", "0.3", "--attack-steps", "2",
                         "--autoattack", "--quiet", "--out", str(out)]) == 0
    for method in ("standard", "pgd-at"):
        final = json.loads((out / method / "seed0" / "metrics.json").read_text())["final"]
        assert final["aa_acc"] <= min(final["pgd20_acc"], final["cw_acc"]) and final["robust_acc"] == final["aa_acc"]

"""cure-compare's statistics: Welch's t-test p-values against CURE (checked against closed forms and R's
t.test), their marking in the table, the CSV and the JSON, the degenerate cases, and the pre-training lr."""
import csv
import json
import math
import os

import pytest
from scipy import stats

from cure_ext.train import cli, compare
from train_runs import read_json


def student4_two_sided(t):
    """P(|T| > t) for Student's t with 4 degrees of freedom, in closed form."""
    x = abs(t)
    cdf = 0.5 + 3 / 8 * x / math.sqrt(1 + x * x / 4) * (1 - x * x / (12 * (1 + x * x / 4)))
    return 2 * (1 - cdf)


def test_welch_p_on_known_numbers():
    # Equal sizes and variances: t = -3/sqrt(2/3), Welch's df = 4; R's t.test(1:3, 4:6) prints p-value = 0.02131.
    p = compare.welch_p([1, 2, 3], [4, 5, 6])
    assert p == pytest.approx(student4_two_sided(-3 / math.sqrt(2 / 3)), rel=1e-12)
    assert p == pytest.approx(0.02131, abs=5e-6)
    assert compare.welch_p([4, 5, 6], [1, 2, 3]) == p  # two-sided
    # Unequal sizes and variances: the Welch-Satterthwaite degrees of freedom, by hand.
    a, b = [10.0, 12.0, 14.0, 20.0], [1.0, 1.5, 2.0]
    va, vb = stats.tvar(a) / len(a), stats.tvar(b) / len(b)
    t = (sum(a) / len(a) - sum(b) / len(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert compare.welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-10)
    # One side without variance: still defined; df = 2, where P(|T| > t) = 1 - t / sqrt(2 + t^2).
    t = (5.0 - 7 / 3) / math.sqrt(stats.tvar([1.0, 2.0, 4.0]) / 3)
    assert compare.welch_p([5.0, 5.0, 5.0], [1.0, 2.0, 4.0]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)


@pytest.mark.parametrize("a, b", [([1.0], [2.0, 3.0]), ([1.0, 2.0], [3.0]), ([1.0, 1.0], [1.0, 1.0]),
                                  ([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]), ([], [])])
def test_welch_p_is_none_where_the_test_is_undefined(a, b):
    assert compare.welch_p(a, b) is None


# Per-seed finals of a comparison (3 seeds): CURE and TRADES differ clearly in clean accuracy, not in PGD-20.
FINALS = {
    "cure": [dict(clean_acc=98.0, pgd20_acc=59.0), dict(clean_acc=98.5, pgd20_acc=62.0),
             dict(clean_acc=97.6, pgd20_acc=56.0)],
    "trades": [dict(clean_acc=96.9, pgd20_acc=55.0), dict(clean_acc=97.2, pgd20_acc=63.0),
               dict(clean_acc=97.0, pgd20_acc=48.0)],
    "standard": [dict(clean_acc=99.0, pgd20_acc=0.0), dict(clean_acc=99.2, pgd20_acc=0.0),
                 dict(clean_acc=98.8, pgd20_acc=0.0)],
}


def final_of(method, seed, with_aa):
    acc = dict(FINALS[method][seed])
    acc["cw_acc"] = acc["pgd20_acc"] - 1 if acc["pgd20_acc"] else 0.0
    if with_aa:
        acc["aa_acc"] = max(0.0, acc["cw_acc"] - 2.0 - seed)
    strongest = min(v for k, v in acc.items() if k != "clean_acc")
    nrr = lambda a, r: 0.0 if a + r == 0 else 2 * a * r / (a + r)  # noqa: E731
    acc.update(nrr_cw=nrr(acc["clean_acc"], acc["cw_acc"]), nrr=nrr(acc["clean_acc"], strongest),
               sum=acc["clean_acc"] + strongest)
    return acc


def fake_compare(monkeypatch, tmp_path, seeds, with_aa, options=None):
    seen = []

    def fake_train(cfg, out, quiet=False, resume=False):
        seen.append((cfg, out))
        os.makedirs(out)
        if os.path.basename(os.path.dirname(out)) == "pretrain":
            return {"final": {}}
        return {"final": final_of(cfg.method, cfg.seed, with_aa)}

    monkeypatch.setattr(compare, "train", fake_train)
    out = str(tmp_path / "cmp")
    result = compare.run_compare({"pretrain_epochs": 2, "epochs": 1, **(options or {})},
                                 ["standard", "trades", "cure"], seeds, out, quiet=True)
    return result, out, seen


def per_seed(method, key, seeds, with_aa=False):
    return [final_of(method, s, with_aa)[key] for s in seeds]


@pytest.mark.parametrize("with_aa", [False, True])
def test_the_table_csv_and_json_carry_p_values_against_cure(monkeypatch, tmp_path, with_aa):
    seeds = [0, 1, 2]
    result, out, _ = fake_compare(monkeypatch, tmp_path, seeds, with_aa)
    keys = ["clean_acc", "pgd20_acc", "cw_acc"] + (["aa_acc"] if with_aa else []) + ["nrr_cw"] + (
        ["nrr"] if with_aa else []) + ["sum"]
    assert result["significance"]["metrics"] == keys and result["significance"]["against"] == "cure"
    expected = {(m, k): stats.ttest_ind(per_seed(m, k, seeds, with_aa), per_seed("cure", k, seeds, with_aa),
                                        equal_var=False).pvalue for m in ("trades", "standard") for k in keys}
    rows = {s["method"]: s for s in result["summary"]}
    for (m, k), p in expected.items():
        if m == "standard" and k in ("pgd20_acc", "cw_acc", "aa_acc"):
            p = stats.ttest_ind([0.0] * 3, per_seed("cure", k, seeds, with_aa), equal_var=False).pvalue
        assert rows[m][f"{k}_p"] == pytest.approx(p, rel=1e-12), (m, k)
    assert not any(k.endswith("_p") for k in rows["cure"])
    assert expected[("trades", "clean_acc")] < 0.05 <= expected[("trades", "pgd20_acc")]  # the data's premise

    table = compare.compare_table(result)
    header, _, *lines, legend = table.splitlines()
    assert ("AA" in header.split()) == with_aa and ("(strongest)" in header) == with_aa
    trades = next(line for line in lines if line.startswith("TRADES"))
    assert f"97.03 ± 0.15 p={expected[('trades', 'clean_acc')]:.3f}" in trades
    assert f"p={expected[('trades', 'clean_acc')]:.3f} ns" not in trades
    assert f"55.33 ± 7.51 p={expected[('trades', 'pgd20_acc')]:.3f} ns" in trades
    cure = next(line for line in lines if line.startswith("CURE"))
    assert "p=" not in cure and "98.03 ± 0.45" in cure
    assert "Welch" in legend and "ns: not significant at 0.05" in legend

    with open(os.path.join(out, "compare.csv")) as f:
        csv_rows = list(csv.DictReader(f))
    p_rows = {r["method"]: r for r in csv_rows if r["seed"] == "p_vs_cure"}
    assert set(p_rows) == {"trades", "standard"} and list(csv_rows[0]) == ["method", "label", "seed"] + keys
    for k in keys:
        assert float(p_rows["trades"][k]) == pytest.approx(expected[("trades", k)], rel=1e-3)
    assert read_json(os.path.join(out, "compare.json"))["summary"][1]["clean_acc_p"] == pytest.approx(
        expected[("trades", "clean_acc")])


def test_one_seed_gives_undefined_p_values_said_so_without_failing(monkeypatch, tmp_path):
    result, out, _ = fake_compare(monkeypatch, tmp_path, [0], with_aa=False)
    rows = {s["method"]: s for s in result["summary"]}
    assert rows["trades"]["clean_acc_p"] is None and rows["trades"]["clean_acc_std"] == 0.0
    table = compare.compare_table(result)
    assert "p=n/a" in table and "n/a: undefined (fewer than 2 seeds" in table
    with open(os.path.join(out, "compare.csv")) as f:
        p_rows = [r for r in csv.DictReader(f) if r["seed"] == "p_vs_cure"]
    assert all(r["clean_acc"] == "nan" for r in p_rows)
    with open(os.path.join(out, "compare.json")) as f:
        text = f.read()
    assert "NaN" not in text and json.loads(text)["summary"][0]["clean_acc_p"] is None


def test_without_cure_there_is_nothing_to_test_against():
    runs = [{"method": m, "label": compare.LABELS[m], "seed": s, **final_of(m, s, False)}
            for m in ("standard", "trades") for s in (0, 1, 2)]
    result = compare.summarize(runs, ["standard", "trades"])
    assert result["significance"]["against"] is None
    assert not any(k.endswith("_p") for s in result["summary"] for k in s)
    assert "no p-values: CURE is not among the methods compared" in compare.compare_table(result)


@pytest.mark.parametrize("options, pretrain_lr, lr", [({"lr": 0.05, "pretrain_lr": 0.2}, 0.2, 0.05),
                                                     ({"lr": 0.05}, 0.05, 0.05)])
def test_the_shared_pretraining_runs_at_the_pretrain_lr(monkeypatch, tmp_path, options, pretrain_lr, lr):
    _, out, seen = fake_compare(monkeypatch, tmp_path, [0, 1], with_aa=False, options=options)
    for cfg, path in seen:
        if os.path.basename(os.path.dirname(path)) == "pretrain":
            assert (cfg.method, cfg.lr, cfg.epochs, cfg.pretrain_epochs) == ("standard", pretrain_lr, 2, 0)
        else:
            assert cfg.lr == lr and cfg.init_checkpoint.endswith(os.path.join(f"seed{cfg.seed}", "last.pt"))
    assert len(seen) == 2 * 4


def test_cure_compare_end_to_end_with_a_pretrain_lr_and_the_validation_split(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    assert cli.compare_main(["--methods", "standard", "cure", "--seeds", "0", "1", "--pretrain-epochs", "1",
                             "--epochs", "1", "--attack-steps", "1", "--eval-steps", "2", "--train-limit", "300",
                             "--val-size", "100", "--pretrain-lr", "0.05", "--quiet", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "Welch" in printed and "CURE" in printed
    pre = read_json(os.path.join(out, "pretrain", "seed1", "metrics.json"))
    assert pre["config"]["lr"] == 0.05 and pre["config"]["method"] == "standard"
    cure = read_json(os.path.join(out, "cure", "seed1", "metrics.json"))
    assert cure["config"]["lr"] == 0.1 and cure["config"]["pretrain_lr"] == 0.05
    assert cure["config"]["val_size"] == pre["config"]["val_size"] == 100 and cure["best_selected_on"] == "validation"
    result = read_json(os.path.join(out, "compare.json"))
    standard, runs = next(s for s in result["summary"] if s["method"] == "standard"), result["runs"]
    cure_clean = [r["clean_acc"] for r in runs if r["method"] == "cure"]
    std_clean = [r["clean_acc"] for r in runs if r["method"] == "standard"]
    assert standard["clean_acc_p"] == compare.welch_p(std_clean, cure_clean)

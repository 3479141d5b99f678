"""Configuration resolution: recipes, presets and derived defaults."""
import pytest

from cure_ext.train.config import TrainConfig, make_config
from cure_ext.train.errors import ConfigError
from cure_ext.train.recipes import RECIPES, list_recipes
from cure_ext.train.report import recipes_table


def test_the_main_job_defaults():
    cfg = make_config()
    assert (cfg.method, cfg.preset, cfg.dataset, cfg.model, cfg.recipe) == ("cure", "paper", "digits", "cnn",
                                                                             "digits-cnn")
    assert (cfg.score, cfg.select, cfg.beta, cfg.gamma, cfg.percentile, cfg.alpha) == ("abs", "paper", 1.0, 1.0,
                                                                                       0.3, 0.1)
    assert cfg.attack_step_size == cfg.eval_step_size == cfg.eps / 4 and cfg.pretrain_lr == cfg.lr
    assert cfg.val_size == 144  # 10% of the digits training set


def test_validation_split_sizes():
    assert make_config(recipe="cifar10-resnet18").val_size == 1000
    assert make_config(dataset="fashion-mnist").val_size == 1000 and make_config(dataset="svhn").val_size == 1000
    assert make_config(val_size=0).val_size == 0 and make_config(val_size=500).val_size == 500


def test_presets_and_method_defaults():
    official = make_config(preset="official")
    assert (official.score, official.select, official.beta) == ("signed", "official", 5.0)
    assert make_config(method="trades").beta == 1.0 and make_config(method="trades", preset="official").beta == 5.0
    assert make_config(preset="official", beta=2.0, select="all").beta == 2.0
    eff = make_config(method="cure-eff", epochs=10)
    assert eff.warmup_epochs == 4 and eff.pretrain_epochs == 0


def test_paper_recipes():
    cfg = make_config(recipe="cifar10-wrn34-10")
    assert (cfg.dataset, cfg.model, cfg.percentile, cfg.alpha, cfg.gamma) == ("cifar10", "wrn34-10", 0.5, 0.3, 0.5)
    assert cfg.eps == pytest.approx(8 / 255) and cfg.attack_step_size == pytest.approx(2 / 255)
    assert cfg.eval_step_size == pytest.approx(2 / 255) and (cfg.epochs, cfg.lr, cfg.batch_size) == (200, 0.1, 128)
    assert make_config(dataset="svhn").alpha == 0.2  # the dataset's default recipe
    assert make_config(recipe="cifar10-preactresnet18").percentile == 0.2
    assert make_config(recipe="cifar10-resnet18-eff").method == "cure-eff"
    assert make_config(recipe="cifar10-resnet18", method="trades", beta=6.0).beta == 6.0
    table = recipes_table()
    assert len(table.splitlines()) == len(list_recipes()) + 2
    assert "| `cifar10-resnet18` |" in table and "86.76" in table and "65.40" in table
    assert "| PGD-10, step 2/255 | 0.1, ×0.1 at 50%, 75% | 100 natural + 200 CURE |" in table
    assert RECIPES["svhn-resnet18"].published["clean"] == 92.77


@pytest.mark.parametrize("options,message", [
    (dict(percentile=1.5), "--percentile"),
    (dict(method="sgd"), "unknown method"),
    (dict(dataset="mnist"), "unknown dataset"),
    (dict(recipe="nope"), "unknown recipe"),
    (dict(method="cure-eff", pretrain_epochs=3), "--warmup-epochs"),
    (dict(method="cure-eff", epochs=2, warmup_epochs=3), "--warmup-epochs"),
    (dict(reinit_blocks=True), "--reinit-blocks needs --update-blocks"),
    (dict(eps=0), "--eps"),
    (dict(val_size=-1), "--val-size must be >= 0"),
    (dict(lr_milestones=(0.5, 2.0)), "--lr-milestones"),
])
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        make_config(**options)


def test_config_round_trips_through_a_dict():
    cfg = make_config(update_blocks=(2, 3), lr_milestones=[0.3])
    again = TrainConfig.from_dict({**cfg.to_dict(), "update_blocks": [2, 3], "lr_milestones": [0.3]})
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown configuration keys: bogus"):
        TrainConfig.from_dict({"bogus": 1})


def phase_lrs(cfg):
    import torch

    from cure_ext.train.phases import make_scheduler, plan_phases

    out = {}
    for phase in plan_phases(cfg):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=phase.lr)
        scheduler = make_scheduler(opt, cfg, phase)
        lrs = []
        for _ in range(phase.epochs):
            lrs.append(round(opt.param_groups[0]["lr"], 8))
            opt.step()
            scheduler.step()
        out[phase.name] = lrs
    return out


def test_lr_schedules():
    paper = phase_lrs(make_config(recipe="cifar10-resnet18"))["train"]
    assert paper[99] == 0.1 and paper[100] == 0.01 and paper[149] == 0.01 and paper[150] == 0.001  # 100, 150
    # CURE_Eff: one schedule across its warm-up and CURE epochs.
    eff = phase_lrs(make_config(method="cure-eff", epochs=8, warmup_epochs=3))
    assert eff == {"warmup": [0.1] * 3, "train": [0.1, 0.01, 0.01, 0.001, 0.001]}
    cosine = phase_lrs(make_config(lr_schedule="cosine", pretrain_epochs=1, epochs=4, lr=0.2))["train"]
    assert cosine == pytest.approx([0.2, 0.2 * (1 + 2 ** -0.5) / 2, 0.1, 0.2 * (1 - 2 ** -0.5) / 2])
    assert phase_lrs(make_config(lr_schedule="constant", epochs=3))["train"] == [0.1] * 3

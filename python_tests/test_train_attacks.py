"""Attacks, the CW margin loss and the trade-off summaries of the evaluation protocol."""
import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from cure_ext.attacks import ce_objective, cw_objective, eval_mode, pgd, trades_adversary
from cure_ext.train.evaluate import nrr, summarize
from cure_ext.losses import cw_margin_loss, kl_batchmean


def small_model(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.train()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 1, 4, 4, generator=g)
    x[:8] = 0.0  # examples on the box boundary: clipping must keep them in [0, 1]
    x[8:16] = 1.0
    return x, torch.randint(0, 5, (64,), generator=g)


@pytest.mark.parametrize("objective,start", [(ce_objective, "uniform"), (cw_objective, "uniform"),
                                             (ce_objective, "normal")])
def test_pgd_stays_in_ball_and_box_and_raises_the_loss(batch, objective, start):
    x, y = batch
    model = small_model()
    eps = 0.1
    x_adv = pgd(model, x, objective(y), eps, eps / 4, 10, start, torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert model.training, "the attack must restore the model's mode"
    with eval_mode(model), torch.no_grad():
        before, after = objective(y)(model(x)), objective(y)(model(x_adv))
    assert after > before + 1e-3


def test_pgd_start_is_seeded_and_zero_steps_is_the_clipped_start(batch):
    x, y = batch
    model = small_model()
    a = pgd(model, x, ce_objective(y), 0.1, 0.025, 0, "uniform", torch.Generator().manual_seed(5))
    b = pgd(model, x, ce_objective(y), 0.1, 0.025, 0, "uniform", torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= 0.1 + 1e-6 and (a - x).abs().max() > 0.05  # a real uniform start
    assert a.min() >= 0 and a.max() <= 1


def test_pgd_runs_the_model_in_eval_mode(batch):
    x, y = batch
    model = small_model()
    running = model[2].running_mean.clone()
    pgd(model, x, ce_objective(y), 0.1, 0.025, 3, "uniform", torch.Generator().manual_seed(0))
    assert torch.equal(model[2].running_mean, running), "BN statistics changed during the attack"


def test_trades_adversary_raises_the_kl(batch):
    x, y = batch
    model = small_model()
    x_adv = trades_adversary(model, x, 0.1, 0.025, 10, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with eval_mode(model), torch.no_grad():
        kl = kl_batchmean(model(x), model(x_adv))
        kl_noise = kl_batchmean(model(x), model((x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1)))
    assert kl > kl_noise and kl > 0.01


def test_cw_margin_loss_on_known_logits():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 2.5], [-100.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    # margins z_y - max_{j != y} z_j: 2, -0.5, -100; loss = -max(margin + 50, 0)
    assert torch.allclose(cw_margin_loss(logits, y), torch.tensor([-52.0, -49.5, 0.0]))
    assert torch.allclose(cw_margin_loss(logits, y, kappa=0.0), torch.tensor([-2.0, 0.0, 0.0]))


def test_kl_batchmean_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    p, q = F.softmax(a, 1), F.softmax(b, 1)
    expected = (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(kl_batchmean(a, b), expected, atol=1e-6)


def test_nrr_and_sum_on_known_numbers():
    # The paper's Table 1, CURE ResNet-18: 2·86.76·52.48 / 139.24 = 65.40.
    assert nrr(86.76, 52.48) == pytest.approx(65.40, abs=0.005)
    assert nrr(0.0, 0.0) == 0.0
    assert nrr(50.0, 50.0) == 50.0
    s = summarize({"clean_acc": 90.0, "pgd20_acc": 40.0, "cw_acc": 30.0})
    assert s["robust_acc"] == 30.0
    assert s["nrr_cw"] == pytest.approx(2 * 90 * 30 / 120) == s["nrr"]
    assert s["sum"] == 120.0
    s = summarize({"clean_acc": 80.0, "pgd20_acc": 50.0, "cw_acc": 45.0, "aa_acc": 40.0})
    assert s["sum"] == 120.0 and s["nrr"] == pytest.approx(2 * 80 * 40 / 120)
    assert s["nrr_cw"] == pytest.approx(2 * 80 * 45 / 125)
    assert math.isfinite(s["nrr"])

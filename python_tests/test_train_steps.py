"""The CURE objective and the per-method training steps."""
import copy
import math

import pytest
import torch
from torch import nn

import cure_ext.cure
from cure_ext import CURESGD
from cure_ext.attacks import trades_adversary
from cure_ext.losses import cure_loss
from cure_ext.selection import selective_flags
from cure_ext.train.device import cpu_threads
from cure_ext.train.models import build_model
from cure_ext.train.steps import StepSetup, cure_step, trades_step


@pytest.fixture(autouse=True)
def trainer_threads():
    """The CPU threads the trainer uses for the small cnn (one: fast on shared cores)."""
    with cpu_threads(None, "cnn"):
        yield


def softmax_rows(z):
    out = []
    for row in z.tolist():
        m = max(row)
        e = [math.exp(v - m) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def kl_rows(p_logits, q_logits):
    p, q = softmax_rows(p_logits), softmax_rows(q_logits)
    return sum(sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)) / len(p)


def test_cure_loss_equals_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lin, rev = nn.Linear(3, 4), nn.Linear(3, 4)
    x = torch.rand(5, 3, generator=g)
    x_adv = x + 0.1 * torch.rand(5, 3, generator=g)
    y = torch.tensor([0, 3, 1, 2, 3])
    z, z_adv = lin(x), lin(x_adv)
    r, r_adv = rev(x), rev(x_adv)
    beta, gamma = 2.5, 0.7
    loss = cure_loss(z, z_adv, y, beta, gamma, r, r_adv)
    ce = -sum(math.log(softmax_rows(z)[i][y[i]]) for i in range(5)) / 5
    kl_rob = kl_rows(z, z_adv)
    kl_cons = kl_rows(r, z) + kl_rows(r_adv, z_adv)
    assert loss.ce_nat.item() == pytest.approx(ce, rel=1e-5)
    assert loss.kl_rob.item() == pytest.approx(kl_rob, rel=1e-4, abs=1e-7)
    assert loss.kl_cons.item() == pytest.approx(kl_cons, rel=1e-4)
    assert loss.total.item() == pytest.approx(ce + beta * kl_rob + gamma * kl_cons, rel=1e-5)
    loss.total.backward()
    assert all(p.grad is None for p in rev.parameters()), "the revision model is a target, not trained"
    with pytest.raises(ValueError, match="revision"):
        cure_loss(z, z_adv, y, beta, gamma)
    assert cure_loss(z, z_adv, y, beta, 0.0).kl_cons is None


def digits_batch(n=64):
    g = torch.Generator().manual_seed(7)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def cure_setup(model, *, percentile, gamma, revision_rate, preset="paper", select="paper", seed=0):
    rev = copy.deepcopy(model).requires_grad_(False).train()
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    flags = selective_flags(names, select, model.head_name)
    opt = CURESGD([{"params": params, "selective": flags}], lr=0.1, momentum=0.9, weight_decay=5e-4,
                  percentile=percentile, alpha=0.1, score="abs" if preset == "paper" else "signed",
                  revision_rate=revision_rate, revision_params=list(rev.parameters()), seed=seed)
    return StepSetup(model, opt, params, torch.Generator().manual_seed(seed), 0.2, 0.05, 3, beta=1.0, gamma=gamma,
                     selective=flags, score_loss="kl" if preset == "official" else "ce", revision_model=rev)


def test_cure_with_p0_gamma0_no_revision_is_a_trades_step(monkeypatch):
    """Given the same adversarial examples, CURE with p = 0, γ = 0 and no revision makes TRADES's update, step
    after step (momentum buffers included). Each step's examples are PGD's on the CURE model, handed to both
    steps: the two models drift apart at rounding level (by how much depends on the CPU's vector
    instructions), and PGD's sign() would turn that into different adversarial examples."""
    x, y = digits_batch()
    a = build_model("cnn", 10, 1, seed=0)
    b = copy.deepcopy(a)
    cure = cure_setup(a, percentile=0.0, gamma=0.0, revision_rate=0.0)
    params = list(b.parameters())
    trades = StepSetup(b, torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4), params,
                       torch.Generator().manual_seed(0), 0.2, 0.05, 3, beta=1.0)
    attack = torch.Generator().manual_seed(0)
    for _ in range(3):
        x_adv = trades_adversary(a, x, 0.2, 0.05, 3, attack)
        monkeypatch.setattr(cure_ext.cure, "trades_adversary", lambda model, inputs, *args: x_adv)
        rc, rt = cure_step(cure, x, y), trades_step(trades, x, y)
        assert torch.allclose(rc.loss, rt.loss, atol=1e-6)
        assert rc.kept.tolist() == [p.numel() for p in params]
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-6, rtol=0), n
    for p, q in zip(a.buffers(), b.buffers()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5)


class SpyOptimizer:
    """Records what cure_step hands to the optimizer instead of stepping."""

    def __init__(self, params):
        self.params = params

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self, nat_grads, adv_grads):
        self.nat, self.adv = nat_grads, adv_grads
        self.grads = [p.grad.clone() for p in self.params]
        return torch.zeros(len(self.params), dtype=torch.int64)


@pytest.mark.parametrize("preset,select", [("paper", "paper"), ("official", "official")])
def test_cure_step_gradients(preset, select):
    """nat_grads = ∇CE(x), adv_grads = ∇CE(x_adv) (paper) or ∇KL_rob (official), grads = ∇L, score gradients
    only for the selective tensors."""
    x, y = digits_batch()
    model = build_model("cnn", 10, 1, seed=0)
    reference = copy.deepcopy(model)
    setup = cure_setup(model, percentile=0.3, gamma=1.0, revision_rate=0.2, preset=preset, select=select)
    rev = copy.deepcopy(setup.revision_model)
    setup.optimizer = spy = SpyOptimizer(setup.params)
    setup.beta = 5.0 if preset == "official" else 1.0
    cure_step(setup, x, y)

    x_adv = trades_adversary(reference, x, 0.2, 0.05, 3, torch.Generator().manual_seed(0))
    reference.train()
    z, z_adv = reference(x), reference(x_adv)
    with torch.no_grad():
        r, r_adv = rev(x), rev(x_adv)
    loss = cure_loss(z, z_adv, y, setup.beta, 1.0, r, r_adv)
    params = list(reference.parameters())
    g_nat = torch.autograd.grad(loss.ce_nat, params, retain_graph=True)
    adv_loss = loss.kl_rob if preset == "official" else nn.functional.cross_entropy(z_adv, y)
    g_adv = torch.autograd.grad(adv_loss, params, retain_graph=True)
    g = torch.autograd.grad(loss.total, params)
    flags = setup.selective
    assert any(flags) and not all(flags)
    for i, f in enumerate(flags):
        assert torch.allclose(spy.grads[i], g[i], atol=1e-6)
        if f:
            assert torch.allclose(spy.nat[i], g_nat[i], atol=1e-6)
            assert torch.allclose(spy.adv[i], g_adv[i], atol=1e-6)
        else:
            assert spy.nat[i] is None and spy.adv[i] is None


def test_cure_step_conserves_the_lowest_scores():
    x, y = digits_batch()
    model = build_model("cnn", 10, 1, seed=0)
    setup = cure_setup(model, percentile=0.3, gamma=1.0, revision_rate=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    rev_before = [p.clone() for p in setup.revision_model.parameters()]
    kept = cure_step(setup, x, y).kept
    sizes = [p.numel() for p in model.parameters()]
    for k, n, f in zip(kept.tolist(), sizes, setup.selective):
        assert k == (n - math.floor(0.3 * n) if f else n)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    # revision_rate = 1: the revision model moved towards the new weights.
    assert any(not torch.equal(p, q) for p, q in zip(setup.revision_model.parameters(), rev_before))

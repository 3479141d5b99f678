"""CURESGD against the reference op over several steps, its state_dict round trip and lr schedulers."""
import copy
import math

import pytest
import torch

import cure_ext
from cure_ext import reference
from step_cases import new_seed


def make_model(seed, dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3)).to(dtype=dtype, device=device)


def fake_grads(model, gen):
    """Fills p.grad and returns (nat, adv) score gradients, all drawn from `gen`."""
    nat, adv = [], []
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen).to(p)
        nat.append(torch.randn(p.shape, generator=gen).to(p))
        adv.append(torch.randn(p.shape, generator=gen).to(p))
    return nat, adv


def groups(model):
    params = list(model.parameters())
    # Two groups: a per-parameter selective list, and a non-selective head with other hyper-parameters.
    return [dict(params=params[:4], selective=[True, False, True, True]),
            dict(params=params[4:], selective=False, lr=0.05, weight_decay=0.0)]


def manual_reference_steps(model, rev_model, seed, steps, revision_seed, **hyper):
    """What CURESGD must do, written out with the reference op."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.Generator().manual_seed(revision_seed)
    params, revs = list(model.parameters()), list(rev_model.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    g1, g2 = slice(0, 4), slice(4, None)
    for t in range(1, steps + 1):
        nat, adv = fake_grads(model, gen)
        revise = torch.rand((), generator=draws).item() < hyper["revision_rate"]
        decay = min(1 - 1 / (t + 1), hyper["revision_decay"])
        common = dict(momentum=hyper["momentum"], percentile=hyper["percentile"], alpha=hyper["alpha"],
                      revise=revise, revision_decay=decay)
        reference.selective_step(params[g1], [p.grad for p in params[g1]], nat[g1], adv[g1], bufs[g1], revs[g1],
                                 lr=hyper["lr"], weight_decay=hyper["weight_decay"],
                                 selective=[True, False, True, True], **common)
        reference.selective_step(params[g2], [p.grad for p in params[g2]], nat[g2], adv[g2], bufs[g2], revs[g2],
                                 lr=0.05, weight_decay=0.0, selective=[False] * len(params[g2]), **common)


HYPER = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, percentile=0.3, alpha=0.1, revision_rate=0.5,
             revision_decay=0.999)


@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_curesgd_matches_manual_reference_steps(device, implementation):
    seed = new_seed()
    model = make_model(seed, device=device)
    rev_model = copy.deepcopy(model)
    ref_model, ref_rev = copy.deepcopy(model), copy.deepcopy(model)
    opt = cure_ext.CURESGD(groups(model), revision_params=list(rev_model.parameters()), seed=seed + 1,
                           implementation=implementation, **HYPER)
    gen = torch.Generator().manual_seed(seed)
    steps = 20  # P(no revision draw at rate 0.5) = 2^-20: the check below must not fail by chance (6: 1/64)
    for _ in range(steps):
        nat, adv = fake_grads(model, gen)
        kept = opt.step(nat, adv)
        assert kept.shape == (len(list(model.parameters())),)
    manual_reference_steps(ref_model, ref_rev, seed, steps, seed + 1, **HYPER)
    for a, b in zip(list(model.parameters()) + list(rev_model.parameters()),
                    list(ref_model.parameters()) + list(ref_rev.parameters())):
        torch.testing.assert_close(a, b)
    # Revision really happened with these draws or the test proves nothing.
    assert any(not torch.equal(a, b) for a, b in zip(rev_model.parameters(), make_model(seed, device=device).parameters()))


def test_kept_counts_follow_selective_flags():
    model = make_model(0)
    opt = cure_ext.CURESGD(groups(model), **HYPER)
    kept = opt.step(*fake_grads(model, torch.Generator().manual_seed(0)))
    sizes = [p.numel() for p in model.parameters()]
    flags = [True, False, True, True] + [False] * (len(sizes) - 4)
    assert kept.tolist() == [n - math.floor(0.3 * n) if f else n for n, f in zip(sizes, flags)]
    assert torch.equal(opt.last_kept, kept)


def test_state_dict_round_trip_continues_identically():
    seed = new_seed()
    model = make_model(seed)
    rev = copy.deepcopy(model)
    opt = cure_ext.CURESGD(groups(model), revision_params=list(rev.parameters()), seed=7, **HYPER)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        opt.step(*fake_grads(model, gen))
    saved = copy.deepcopy((model.state_dict(), rev.state_dict(), opt.state_dict(), gen.get_state()))

    for _ in range(4):
        opt.step(*fake_grads(model, gen))
    expected = [p.clone() for p in list(model.parameters()) + list(rev.parameters())]

    model2 = make_model(seed + 100)
    rev2 = copy.deepcopy(model2)
    opt2 = cure_ext.CURESGD(groups(model2), revision_params=list(rev2.parameters()), seed=999, **HYPER)
    model2.load_state_dict(saved[0])
    rev2.load_state_dict(saved[1])
    opt2.load_state_dict(saved[2])
    gen.set_state(saved[3])
    for _ in range(4):
        opt2.step(*fake_grads(model2, gen))
    got = list(model2.parameters()) + list(rev2.parameters())
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    # The revision model's own tensors are still the ones the optimizer updates.
    assert all(r is p for r, p in zip(opt2.revision_tensors(), rev2.parameters()))


@pytest.mark.parametrize("break_it", ["no revision", "wrong shape", "bad generator"])
def test_a_refused_state_dict_leaves_the_optimizer_as_it_was(break_it):
    model = make_model(0)
    rev = copy.deepcopy(model)
    opt = cure_ext.CURESGD(groups(model), revision_params=list(rev.parameters()), seed=7, **HYPER)
    gen = torch.Generator().manual_seed(0)
    opt.step(*fake_grads(model, gen))
    bad = copy.deepcopy(opt.state_dict())
    last = len(list(model.parameters())) - 1
    if break_it == "no revision":
        del bad["state"][last]["revision"]
    elif break_it == "wrong shape":
        bad["state"][last]["revision"] = torch.zeros(list(model.parameters())[last].numel() + 1)
    else:
        bad["cure"]["generator"] = torch.zeros(3, dtype=torch.uint8)
    for _ in range(2):
        opt.step(*fake_grads(model, gen))
    before = copy.deepcopy(opt.state_dict())
    revision_before = [r.clone() for r in opt.revision_tensors()]
    with pytest.raises(ValueError, match="load_state_dict"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["cure"]["step"] == before["cure"]["step"] == 3
    assert torch.equal(after["cure"]["generator"], before["cure"]["generator"])
    for i, entry in before["state"].items():
        assert all(torch.equal(after["state"][i][k], v) for k, v in entry.items())
    assert all(torch.equal(r, b) for r, b in zip(opt.revision_tensors(), revision_before))


def test_lr_scheduler_changes_the_step():
    model = make_model(0)
    opt = cure_ext.CURESGD(model.parameters(), lr=0.1, percentile=0.0, revision_rate=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    w = next(model.parameters())
    before = w.detach().clone()
    for p in model.parameters():
        p.grad = None
    w.grad = torch.ones_like(w)
    score = [torch.ones_like(w)] + [None] * 5
    opt.step(score, score)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    opt.step(score, score)
    torch.testing.assert_close(w.detach(), before - 0.1 - 0.01)


def test_internal_revision_copies_and_skipped_params():
    model = make_model(0)
    opt = cure_ext.CURESGD(model.parameters(), lr=0.1, revision_rate=1.0, revision_decay=0.5)
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    params[0].grad = torch.ones_like(params[0])
    kept = opt.step([torch.ones_like(params[0])] + [None] * 5, [torch.ones_like(params[0])] + [None] * 5)
    assert kept.tolist()[1:] == [0] * 5  # grad None: skipped
    assert all(torch.equal(p, s) for p, s in zip(params[1:], start[1:]))
    # t = 1: decay = min(1 - 1/2, 0.5) = 0.5, so the revision is the mean of old and new weights.
    torch.testing.assert_close(opt.revision_tensors()[0], (start[0] + params[0].detach()) / 2)


@pytest.mark.parametrize("bad,pattern", [
    (dict(selective=[True]), "selective"),
    (dict(selective="all"), "selective must be a bool"),
    (dict(revision_rate=1.5), r"CURESGD: revision_rate must be in \[0.0, 1.0\], got 1.5"),
    (dict(revision_rate=-0.1), "revision_rate"),
    (dict(revision_decay=1.01), "CURESGD: revision_decay must be in"),
    (dict(lr=-1), r"CURESGD: lr must be >= 0.0, got -1"),
    (dict(momentum=-0.9), "CURESGD: momentum must be >= 0.0"),
    (dict(weight_decay=-5e-4), "CURESGD: weight_decay must be >= 0.0"),
    (dict(percentile=1.5), r"CURESGD: percentile must be in \[0.0, 1.0\], got 1.5"),
    (dict(percentile=-0.1), "CURESGD: percentile must be in"),
    (dict(alpha=1.2), "CURESGD: alpha must be in"),
    (dict(alpha=float("nan")), "CURESGD: alpha must be in"),
    (dict(nesterov=True), "CURESGD: nesterov requires momentum > 0"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), "CURESGD: nesterov requires momentum > 0 and dampening == 0"),
    (dict(score="l2"), "CURESGD: score must be one of"),
    (dict(conserve="zero"), "CURESGD: conserve must be one of"),
    (dict(implementation="numpy"), "implementation"),
])
def test_constructor_rejects_bad_options(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        cure_ext.CURESGD(make_model(0).parameters(), lr=bad.pop("lr", 0.1), **bad)


@pytest.mark.parametrize("override,pattern", [
    (dict(lr=-0.1), "CURESGD: param group 1: lr must be >= 0.0"),
    (dict(percentile=2.0), "CURESGD: param group 1: percentile must be in"),
    (dict(revision_rate=3.0), "CURESGD: param group 1: revision_rate must be in"),
    (dict(momentum=0.0, nesterov=True), "CURESGD: param group 1: nesterov requires momentum > 0"),
    (dict(score="raw"), "CURESGD: param group 1: score must be one of"),
    (dict(selective=[True, False, True]), "selective must be a bool or 2 bools"),
])
def test_bad_group_overrides_are_refused_at_construction_and_by_add_param_group(override, pattern):
    params = list(make_model(0).parameters())
    with pytest.raises(ValueError, match=pattern):
        cure_ext.CURESGD([dict(params=params[:4]), dict(params=params[4:], **override)], lr=0.1)
    opt = cure_ext.CURESGD([dict(params=params[:4])], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=pattern):
        opt.add_param_group(dict(params=params[4:], **override))
    assert len(opt.param_groups) == 1 and len(opt.state) == 4  # nothing added


def test_step_without_score_gradients_says_what_to_pass():
    model = make_model(0)
    opt = cure_ext.CURESGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"parameter 0 is selective.*call opt.step\(nat_grads, adv_grads\)"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    plain = cure_ext.CURESGD(model.parameters(), lr=0.1, selective=False)  # not selective: plain SGD
    sgd_model = copy.deepcopy(model)  # a deep copy leaves .grad behind
    for q in sgd_model.parameters():
        q.grad = torch.ones_like(q)
    plain.step()
    torch.optim.SGD(sgd_model.parameters(), lr=0.1).step()
    for a, b, start in zip(model.parameters(), sgd_model.parameters(), before):
        assert not torch.equal(a, start)
        torch.testing.assert_close(a, b)


def _untouched(opt, model, before):
    """Nothing of a refused step stayed: weights, no momentum buffer, the revision draws, the step count."""
    draws, weights = before
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), weights))
    assert not any("momentum_buffer" in s for s in opt.state.values())
    assert torch.equal(opt.state_dict()["cure"]["generator"], draws)
    assert opt.state_dict()["cure"]["step"] == 0 and opt.last_kept is None


@pytest.mark.parametrize("group,entry,make,pattern", [
    (1, 5, lambda t: t[:2], r"CURESGD.step: adv_grads\[5\] has shape \(2,\), params\[5\] has \(3,\)"),
    (1, 4, lambda t: None, r"CURESGD.step: adv_grads\[4\] is None but params\[4\] is selective"),
    (0, 3, lambda t: t.double(), r"CURESGD.step: adv_grads\[3\] has dtype torch.float64"),
    (0, 2, lambda t: None, r"CURESGD.step: adv_grads\[2\] is None but params\[2\] is selective"),
])
def test_a_bad_score_gradient_in_any_group_leaves_every_group_untouched(group, entry, make, pattern):
    """Two groups; a bad adv_grads entry in either one: the error names the index in the user's list."""
    model = make_model(0)
    params = list(model.parameters())
    opt = cure_ext.CURESGD([dict(params=params[:4]), dict(params=params[4:], lr=0.05)], lr=0.1, momentum=0.9,
                           revision_rate=0.5, seed=3)
    nat, adv = fake_grads(model, torch.Generator().manual_seed(0))
    params[1].grad = None  # skipped: the first group's call lists 3 tensors, the error still says index 2 or 3
    adv[entry] = make(adv[entry])
    before = (opt.state_dict()["cure"]["generator"], [p.detach().clone() for p in params])
    with pytest.raises(ValueError, match=pattern):
        opt.step(nat, adv)
    _untouched(opt, model, before)
    adv[entry] = fake_grads(model, torch.Generator().manual_seed(0))[1][entry]  # repaired: the step runs
    params[1].grad = None
    twin = copy.deepcopy(model)
    twin_params = list(twin.parameters())
    reference_opt = cure_ext.CURESGD([dict(params=twin_params[:4]), dict(params=twin_params[4:], lr=0.05)], lr=0.1,
                                     momentum=0.9, revision_rate=0.5, seed=3)
    for p, q in zip(params, twin_params):
        q.grad = None if p.grad is None else p.grad.clone()
    assert torch.equal(opt.step(nat, adv), reference_opt.step(nat, adv))  # the same draw as a fresh optimizer
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))


def test_step_rejects_misaligned_score_grads():
    model = make_model(0)
    opt = cure_ext.CURESGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="nat_grads"):
        opt.step([None], [None] * 6)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_edits_between_steps_are_followed():
    """CURESGD keeps each group's tensor lists across steps; every edit torch.optim allows between steps
    (flags, momentum, a missing gradient, a new group) must act exactly as in a freshly built optimizer
    that loads the same state."""
    models = [make_model(3), make_model(3)]
    extra = [torch.nn.Parameter(torch.ones(5)) for _ in models]
    hyper = {k: v for k, v in HYPER.items() if k != "revision_rate"}
    opts = [cure_ext.CURESGD(groups(m), revision_rate=0.5, seed=7, **hyper) for m in models]
    edits = [
        lambda o, m, x: None,
        lambda o, m, x: o.param_groups[0].update(selective=[False, True, True, False]),
        lambda o, m, x: o.param_groups[1].update(momentum=0.0),
        lambda o, m, x: setattr(list(m.parameters())[1], "grad", None),
        lambda o, m, x: o.add_param_group(dict(params=[x], selective=True)),
        lambda o, m, x: o.param_groups[1].update(momentum=0.5, selective=True),
    ]
    gen = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)]
    for step, edit in enumerate(edits):
        for j, (model, x) in enumerate(zip(models, extra)):
            nat, adv = fake_grads(model, gen[j])
            if step >= 4:  # the added group's parameter
                x.grad = torch.full_like(x, 0.5)
                nat, adv = nat + [torch.arange(5.0)], adv + [torch.ones(5)]
            if j == 1:  # a fresh optimizer each step: nothing kept from earlier steps
                fresh = cure_ext.CURESGD([dict(g) for g in opts[1].param_groups], revision_rate=0.5, **hyper)
                fresh.load_state_dict(opts[1].state_dict())
                opts[1] = fresh
            edit(opts[j], model, x)
            opts[j].step(nat, adv)
        assert torch.equal(opts[0].last_kept, opts[1].last_kept), step
        for a, b in zip(list(models[0].parameters()) + [extra[0]], list(models[1].parameters()) + [extra[1]]):
            assert torch.equal(a, b), step
        for a, b in zip(opts[0].revision_tensors(), opts[1].revision_tensors()):
            assert torch.equal(a, b), step

"""`cure_ext.CURE` (issue 13): CURE's step for any classifier in the user's own loop. Checked against a step
written here from the parts (attack, losses, autograd, the reference optimizer), on the CPU and CUDA; head and
selection rules; autocast; DDP (2 gloo ranks equal one process); state_dict continuation bit-exact; bad input
refused before anything changes; `import cure_ext` without the trainer; the example script."""
import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
import torch.nn.functional as F

import cure_ext
from cure_ext import CURESGD
from cure_ext.attacks import trades_adversary
from cure_ext.losses import cure_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Net(nn.Module):
    """Not one of ours: BN, a hidden nn.Linear, and a head called `out`."""

    def __init__(self, classes=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten())
        self.hidden = nn.Linear(6 * 16, 12)
        self.out = nn.Linear(12, classes)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(self.body(x))))


def batch(n=10, classes=4, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 4, 4, generator=g).to(device),
            torch.randint(0, classes, (n,), generator=g).to(device))


def net(device="cpu", seed=0):
    torch.manual_seed(seed)
    return Net().to(device)


KW = dict(lr=0.2, momentum=0.9, weight_decay=1e-3, eps=0.1, step_size=0.03, steps=3, percentile=0.4, alpha=0.3,
          gamma=0.5, revision_rate=0.6, revision_decay=0.9)


def state(model, cure=None):
    """Every tensor the steps change: the model's (BN buffers too), the revision model's, the momenta."""
    out = [t.detach().clone() for t in model.state_dict().values()]
    if cure is not None:
        out += [t.detach().clone() for t in cure.revision_model.state_dict().values()]
        out += [s["momentum_buffer"].clone() for s in cure.optimizer.state.values() if "momentum_buffer" in s]
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


# ---- the step, against one written here from the parts ----------------------------------------------------

def hand_step(model, rev_model, opt, gen, x, y, flags, beta, gamma):
    """CURE's step as SPEC §1/§3 describe it, on the reference optimizer."""
    x_adv = trades_adversary(model, x, KW["eps"], KW["step_size"], KW["steps"], gen)
    model.train()
    z_nat, z_adv = model(x), model(x_adv)
    with torch.no_grad():
        r_nat, r_adv = rev_model(x), rev_model(x_adv)
    loss = cure_loss(z_nat, z_adv, y, beta, gamma, r_nat, r_adv)
    params = list(model.parameters())
    chosen = [p for p, f in zip(params, flags) if f]
    g_nat = iter(torch.autograd.grad(F.cross_entropy(z_nat, y), chosen, retain_graph=True))
    g_adv = iter(torch.autograd.grad(F.cross_entropy(z_adv, y), chosen, retain_graph=True))
    opt.zero_grad()
    loss.total.backward()
    return opt.step([next(g_nat) if f else None for f in flags], [next(g_adv) if f else None for f in flags])


def test_a_cure_step_is_the_step_written_from_its_parts(device, monkeypatch):
    # The two models' gradients must agree bit for bit (kept is compared exactly): on CUDA, cuDNN's default
    # convolution backward algorithms may accumulate in a different order on every run.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    model, x, y = net(device), *batch(device=device)
    twin, rev_twin = copy.deepcopy(model), copy.deepcopy(model).requires_grad_(False)
    cure = cure_ext.CURE(model, **KW, seed=5)
    flags = [True, True, True, True, True, True, False, False]  # paper: all but the head `out`
    assert cure.selective == flags
    opt = CURESGD([{"params": list(twin.parameters()), "selective": flags}], lr=KW["lr"], momentum=KW["momentum"],
                  weight_decay=KW["weight_decay"], percentile=KW["percentile"], alpha=KW["alpha"],
                  revision_rate=KW["revision_rate"], revision_decay=KW["revision_decay"],
                  revision_params=list(rev_twin.parameters()), seed=6, implementation="reference")
    gen = torch.Generator(device).manual_seed(5)
    for step in range(3):
        out = cure.step(x, y)
        kept = hand_step(twin, rev_twin, opt, gen, x, y, flags, 1.0, KW["gamma"])
        assert out.finite and out.loss.requires_grad is False
        assert torch.equal(out.kept, kept)
        assert int(out.kept[0]) < model.body[0].weight.numel()  # the masks conserve entries
        for a, b in zip(state(model) + state(cure.revision_model), state(twin) + state(rev_twin)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(state(cure.revision_model)[0], state(net(device))[0])  # revised


def test_the_trainers_cure_step_is_the_cure_objects():
    from cure_ext.train import steps
    model, x, y = net(), *batch()
    twin = copy.deepcopy(model)
    cure = cure_ext.CURE(model, **KW, seed=2)
    other = cure_ext.CURE(twin, **KW, seed=2)
    p = other._parts
    setup = steps.StepSetup(p.model, p.optimizer, p.params, p.generator, p.eps, p.step_size, p.steps, beta=p.beta,
                            gamma=p.gamma, selective=p.selective, score_loss=p.score_loss,
                            revision_model=p.revision_model)
    for _ in range(2):
        a, b = cure.step(x, y), steps.cure_step(setup, x, y)
        assert torch.equal(a.loss, b.loss) and torch.equal(a.kept, b.kept)
    assert_same(state(model, cure), state(twin, other))


# ---- heads and selection -----------------------------------------------------------------------------------

def test_head_is_the_last_linear_or_the_one_named_or_the_parameters_given():
    model = net()
    names = [n for n, _ in model.named_parameters()]
    assert cure_ext.CURE(model).selective == [not n.startswith("out.") for n in names]
    assert cure_ext.CURE(model, head="hidden").selective == [not n.startswith("hidden.") for n in names]
    assert cure_ext.CURE(model, head=[model.out.weight]).selective == [n != "out.weight" for n in names]


def test_official_preset_selects_block_conv1_weights_by_name_and_selective_overrides():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv2(torch.relu(self.conv1(x)))

    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 2, 3, padding=1))  # the stem conv1 is exempt
    model.add_module("stage", nn.Sequential(Block(), Block()))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(32, 3))
    names = [n for n, _ in model.named_parameters()]
    official = cure_ext.CURE(model, preset="official")
    assert [n for n, f in zip(names, official.selective) if f] == ["stage.0.conv1.weight", "stage.1.conv1.weight"]
    assert official._parts.score_loss == "kl" and official._parts.beta == 5.0
    assert official.optimizer.param_groups[0]["score"] == "signed"
    assert cure_ext.CURE(model, preset="official", beta=2.0)._parts.beta == 2.0
    by_rule = cure_ext.CURE(model, selective=lambda n: n.endswith("bias"))
    assert by_rule.selective == [n.endswith("bias") for n in names]
    flags = [i % 2 == 0 for i in range(len(names))]
    assert cure_ext.CURE(model, preset="official", selective=flags).selective == flags


def test_frozen_parameters_are_left_out():
    model = net()
    model.body[0].requires_grad_(False)
    cure = cure_ext.CURE(model)
    assert cure.names == [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = model.body[0].weight.detach().clone()
    cure.step(*batch())
    assert torch.equal(model.body[0].weight, frozen)


# ---- bad input: a clear error naming the argument, nothing changed -----------------------------------------

@pytest.mark.parametrize("make,kwargs,message", [
    (lambda: nn.ReLU(), {}, "model has no trainable parameters"),
    (net, {"head": "classifier"}, "head='classifier' names no module"),
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 4), nn.Flatten()), {}, "cannot find the model's head"),
    (net, {"head": [torch.nn.Parameter(torch.zeros(2))]}, "head lists a parameter that is not one of the model's"),
    (net, {"eps": -0.1}, "eps must be"),
    (net, {"percentile": 1.5}, "percentile must be"),
    (net, {"percentile": -0.1}, "percentile must be"),
    (net, {"steps": 2.5}, "steps must be"),
    (net, {"preset": "fast"}, "preset must be"),
    (net, {"selective": [True]}, "selective must be"),
])
def test_bad_arguments_are_refused_naming_them(make, kwargs, message):
    model = make()
    before = state(model)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        cure_ext.CURE(model, **kwargs)
    assert_same(state(model), before)


class Scores(nn.Module):
    """One score per input: not a classifier."""

    def __init__(self):
        super().__init__()
        self.bn, self.fc = nn.BatchNorm1d(16), nn.Linear(16, 1)

    def forward(self, x):
        return self.fc(self.bn(x.flatten(1))).squeeze(1)


@pytest.mark.parametrize("make,x_of,y_of,message", [
    (Scores, lambda x: x, lambda y: y, "model must return class logits"),
    (net, lambda x: x * 2, lambda y: y, r"x must hold inputs in \[0, 1\]"),
    (net, lambda x: x - 0.5, lambda y: y, r"x must hold inputs in \[0, 1\]"),
    (net, lambda x: x, lambda y: y.float(), "y must hold one int64 class index"),
    (net, lambda x: x, lambda y: y + 4, r"y must hold class indices in \[0, 4\)"),
])
def test_a_bad_first_batch_is_refused_before_anything_changes(make, x_of, y_of, message):
    model, (x, y) = make(), batch()
    model.train()
    cure = cure_ext.CURE(model)
    before, gen = state(model, cure), cure.generator.get_state()
    with pytest.raises(ValueError, match=message):
        cure.step(x_of(x), y_of(y))
    assert_same(state(model, cure), before)
    assert torch.equal(cure.generator.get_state(), gen)
    assert cure.optimizer.state_dict()["cure"]["step"] == 0 and model.training


# ---- state_dict: a continued run equals an uninterrupted one -----------------------------------------------

def test_a_run_continued_from_state_dict_is_the_uninterrupted_run(tmp_path):
    batches = [batch(seed=s) for s in range(6)]
    model = net()
    cure = cure_ext.CURE(model, **KW, seed=3)
    for x, y in batches:
        cure.step(x, y)
    first = net()
    half = cure_ext.CURE(first, **KW, seed=3)
    for x, y in batches[:3]:
        half.step(x, y)
    torch.save({"model": first.state_dict(), "cure": half.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    second = net(seed=9)  # other weights: all of them come from the checkpoint
    second.load_state_dict(saved["model"])
    resumed = cure_ext.CURE(second, **KW, seed=4)  # another seed: the generators come from the checkpoint
    resumed.load_state_dict(saved["cure"])
    for x, y in batches[3:]:
        resumed.step(x, y)
    assert_same(state(second, resumed), state(model, cure))
    assert resumed.optimizer.state_dict()["cure"]["step"] == 6
    assert torch.equal(resumed.generator.get_state(), cure.generator.get_state())


def test_load_state_dict_refuses_a_foreign_state_before_changing_anything():
    cure = cure_ext.CURE(net())
    before = state(cure.model, cure)
    with pytest.raises(ValueError, match="lacks attack_generator"):
        cure.load_state_dict({"optimizer": {}, "revision_model": {}})
    other = cure_ext.CURE(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)))
    with pytest.raises(ValueError, match="revision model's state does not fit"):
        cure.load_state_dict(other.state_dict())
    assert_same(state(cure.model, cure), before)


# ---- autocast -------------------------------------------------------------------------------------------------

def test_under_autocast_the_forwards_run_in_its_dtype_and_the_step_in_full_precision():
    from cure_ext.cure import cure_update
    x, y = batch()
    runs = {}
    for mode in ("ambient", "forwards", "fp32"):
        model = net()
        cure = cure_ext.CURE(model, **KW)
        if mode == "ambient":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs = [cure.step(x, y) for _ in range(2)]
        elif mode == "forwards":  # the trainer's --bf16: autocast around the forwards only
            import dataclasses
            parts = dataclasses.replace(cure._parts, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
            outs = [cure_update(parts, x, y) for _ in range(2)]
        else:
            outs = [cure.step(x, y) for _ in range(2)]
        assert all(o.finite for o in outs)
        runs[mode] = state(model, cure)
        assert all(t.dtype in (torch.float32, torch.int64) for t in runs[mode])
    assert_same(runs["ambient"], runs["forwards"])
    assert any(not torch.equal(a, b) for a, b in zip(runs["ambient"], runs["fp32"]))


# ---- DistributedDataParallel ------------------------------------------------------------------------------------

def _ddp_net():
    """float64, no BN (each shard would get its own statistics); eps = 0: the attack returns x itself."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(),
                         nn.Linear(12, 3)).double()


DDP_KW = dict(KW, eps=0.0, revision_rate=0.5)


def _ddp_batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))
            for _ in range(3)]


def _ddp_worker(rank, world, init_file, result_file):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = _ddp_net()
    cure = cure_ext.CURE(nn.parallel.DistributedDataParallel(model), **DDP_KW)
    kept = [cure.step(x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4]).kept for x, y in _ddp_batches()]
    torch.save((state(model, cure), kept), f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_ddp_wrapped_model_on_two_ranks_steps_as_one_process_on_the_whole_batch(tmp_path):
    result = str(tmp_path / "state")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), result), nprocs=2, join=True)
    model = _ddp_net()
    cure = cure_ext.CURE(model, **DDP_KW)
    kept = [cure.step(x, y).kept for x, y in _ddp_batches()]
    (rank0, kept0), (rank1, kept1) = torch.load(f"{result}.0"), torch.load(f"{result}.1")
    assert_same(rank0, rank1)  # the same update on both ranks, bit for bit
    assert [k.tolist() for k in kept0] == [k.tolist() for k in kept] == [k.tolist() for k in kept1]
    for a, e in zip(rank0, state(model, cure)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert all(not torch.equal(a, b) for a, b in zip(rank0, state(_ddp_net())))  # every tensor moved


# ---- imports and the example ----------------------------------------------------------------------------------

def test_import_cure_ext_and_python_m_cure_ext_leave_the_trainer_unloaded(tmp_path):
    code = ("import runpy, sys; import cure_ext; assert 'cure_ext.train' not in sys.modules, 'import'; "
            "runpy.run_module('cure_ext', run_name='__main__'); assert 'cure_ext.train' not in sys.modules, '-m'; "
            "cure_ext.load_checkpoint; assert 'cure_ext.train.checkpoint' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"built against torch {torch.__version__}, running torch {torch.__version__}" in proc.stdout
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        cure_ext.nothing


@pytest.mark.slow
def test_the_own_loop_example_makes_its_model_robust():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "own_loop.py")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = {line.split(":")[0]: [float(v.rstrip("%")) for v in line.split()[-3::2]]
           for line in proc.stdout.splitlines() if "PGD-20" in line}
    (clean0, pgd0), (clean1, pgd1) = acc["before CURE"], acc["after CURE"]
    assert clean0 > 90 and clean1 > 85
    assert pgd1 > pgd0 + 20  # adversarial training made it robust

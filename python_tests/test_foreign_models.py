"""`cure_ext.CURE` on models written the way other people write them (issue 21): Dropout (a run resumed in a
new process is bit-identical), outputs that change type in train mode (auxiliary logits), torch.compile's
renamed state, ε on the wrong scale, a head name that is not there, inputs on the meta device. Every refusal
leaves weights, BatchNorm statistics, optimizer state and random generators as they were."""
import collections
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import cure_ext

HERE = os.path.dirname(os.path.abspath(__file__))
KW = dict(lr=0.1, momentum=0.9, eps=0.1, step_size=0.04, steps=2, percentile=0.3, gamma=1.0, revision_rate=0.5)


class DropoutNet(nn.Module):
    """BN, Dropout in the body and before the head, like mobilenet_v3's classifier."""

    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
                                      nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(64, 16), nn.Hardswish(), nn.Dropout(0.5), nn.Linear(16, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


AuxOutputs = collections.namedtuple("AuxOutputs", ["logits", "aux_logits"])


class AuxNet(nn.Module):
    """GoogLeNet-style: class logits in eval mode, (logits, aux_logits) in train mode."""

    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
        self.fc, self.aux = nn.Linear(64, classes), nn.Linear(64, classes)

    def forward(self, x):
        h = self.stem(x)
        return AuxOutputs(self.fc(h), self.aux(h)) if self.training else self.fc(h)


def make(cls=DropoutNet, device="cpu", seed=0):
    torch.manual_seed(seed)
    return cls().to(device)


def batches(n, device="cpu"):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(6, 1, 4, 4, generator=g).to(device), torch.randint(0, 3, (6,), generator=g).to(device))
            for _ in range(n)]


def everything(model, cure):
    """Every tensor a step may change: the model's (BN statistics too), the revision model's, the optimizer's
    state, the generators' states (CURE's own and torch's global CPU one)."""
    out = [t.detach().clone() for t in model.state_dict().values()]
    out += [t.detach().clone() for t in cure.revision_model.state_dict().values()]
    out += [t.clone() for s in cure.optimizer.state.values() for t in s.values()]
    state = cure.state_dict()
    out += [state["attack_generator"], state["optimizer"]["cure"]["generator"], *state["forward_rng"].values()]
    return out + [torch.get_rng_state(), torch.tensor(state["optimizer"]["cure"]["step"])]


def same(a, b):
    return len(a) == len(b) and all(u.shape == v.shape and torch.equal(u, v) for u, v in zip(a, b))


# ---- Dropout: resume bit-identical, in a new process ----------------------------------------------------------

CONTINUE = """
import sys, torch
sys.path.insert(0, {here!r})
import cure_ext
from test_foreign_models import KW, batches, make
saved = torch.load({path!r}, weights_only=True)
model = make(device={device!r}, seed=7)  # other weights: all of them come from the checkpoint
model.load_state_dict(saved["model"])
cure = cure_ext.CURE(model, **KW, seed=11)  # another seed: every stream comes from the checkpoint
cure.load_state_dict(saved["cure"])
torch.manual_seed(123)  # the user's loop may seed or draw from torch's generators: CURE's steps do not care
for x, y in batches(5, {device!r})[3:]:
    torch.rand(3)
    cure.step(x, y)
torch.save({{"model": model.state_dict(), "cure": cure.state_dict()}}, {path!r})
"""


def test_a_dropout_model_resumed_in_a_new_process_is_the_uninterrupted_run(tmp_path, device):
    model = make(device=device)
    cure = cure_ext.CURE(model, **KW, seed=3)
    for x, y in batches(5, device):
        cure.step(x, y)
    half_model = make(device=device)
    half = cure_ext.CURE(half_model, **KW, seed=3)
    for x, y in batches(5, device)[:3]:
        torch.rand(5)  # draws of the user's own, which the uninterrupted run did not make
        half.step(x, y)
    path = str(tmp_path / "ckpt.pt")
    torch.save({"model": half_model.state_dict(), "cure": half.state_dict()}, path)
    package = os.path.dirname(os.path.dirname(os.path.abspath(cure_ext.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package, HERE, os.environ.get("PYTHONPATH", "")]))
    script = CONTINUE.format(here=HERE, path=path, device=str(device))
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed = torch.load(path, weights_only=True)
    expected = {"model": model.state_dict(), "cure": cure.state_dict()}
    flat = lambda d: [t for k, t in sorted(_leaves(d))]  # noqa: E731
    assert [k for k, _ in sorted(_leaves(resumed))] == [k for k, _ in sorted(_leaves(expected))]
    assert same([t.cpu() for t in flat(resumed)], [t.cpu() for t in flat(expected)])


def _leaves(d, prefix=""):
    """(path, tensor) for every tensor and number in a nested state dict."""
    items = d.items() if isinstance(d, dict) else enumerate(d)
    for k, v in items:
        if isinstance(v, (dict, list, tuple)):
            yield from _leaves(v, f"{prefix}{k}/")
        elif isinstance(v, (torch.Tensor, int, float, bool)):
            yield f"{prefix}{k}", torch.as_tensor(v)


def test_dropout_draws_come_from_cures_stream_and_leave_torchs_generators_alone():
    x, y = batches(1)[0]
    runs = []
    for seed, global_seed in ((3, 0), (3, 99), (4, 0)):
        model = make()
        cure = cure_ext.CURE(model, **dict(KW, steps=0, gamma=0.0), seed=seed)  # no attack draw, no revision
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        cure.step(x, y)
        assert torch.equal(torch.get_rng_state(), before)  # the global generator as the loop left it
        runs.append([t.clone() for t in model.state_dict().values()])
    assert same(runs[0], runs[1])  # the global seed does not matter
    assert not same(runs[0], runs[2])  # CURE's seed does: the Dropout masks differ


# ---- outputs that change type in train mode -------------------------------------------------------------------

def test_a_model_with_auxiliary_outputs_in_train_mode_is_refused_before_anything_changes():
    model = make(AuxNet)
    model.train()
    cure = cure_ext.CURE(model, **KW)
    x, y = batches(1)[0]
    before = everything(model, cure)
    with pytest.raises(ValueError, match=r"in train mode too .* got AuxOutputs: .*aux_logits=False") as refusal:
        cure.step(x, y)
    assert "\n" not in str(refusal.value)
    assert same(everything(model, cure), before)  # BN statistics, weights, optimizer, generators
    assert model.training and model.stem[1].num_batches_tracked.item() == 0


# ---- torch.compile ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("saved_compiled", [True, False], ids=["compiled-to-eager", "eager-to-compiled"])
def test_state_moves_between_a_compiled_and_an_eager_cure_of_the_same_model(saved_compiled):
    """The compiled wrapper names every entry `_orig_mod.<name>`; the state loads across, and the run continues
    as the uninterrupted one (backend="eager" runs the model's own operations)."""
    kw = dict(KW, revision_rate=1.0)
    compiled = lambda m: torch.compile(m, backend="eager")  # noqa: E731
    data = batches(4)
    whole_model = make()
    whole = cure_ext.CURE(whole_model, **kw, seed=5)
    for x, y in data:
        whole.step(x, y)
    first_model = make()
    first = cure_ext.CURE(compiled(first_model) if saved_compiled else first_model, **kw, seed=5)
    for x, y in data[:2]:
        first.step(x, y)
    state = first.state_dict()
    assert any(k.startswith("_orig_mod.") for k in state["revision_model"]) == saved_compiled
    second_model = make(seed=8)
    second_model.load_state_dict(first_model.state_dict())
    second = cure_ext.CURE(second_model if saved_compiled else compiled(second_model), **kw, seed=6)
    second.load_state_dict(state)
    for x, y in data[2:]:
        second.step(x, y)
    assert same(everything(second_model, second), everything(whole_model, whole))


def test_a_state_of_another_model_is_refused_saying_which_entries_differ():
    cure = cure_ext.CURE(make())
    other = cure_ext.CURE(torch.compile(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), backend="eager"))
    before = everything(cure.model, cure)
    with pytest.raises(ValueError, match=r"does not fit this model \(it lacks classifier.0.bias, .*; it has "
                                         r"unexpected 1.bias, 1.weight; .*_orig_mod"):
        cure.load_state_dict(other.state_dict())
    assert same(everything(cure.model, cure), before)


# ---- arguments and inputs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("eps,intent", [(8, "8/255"), (1.0, "1.0/255"), (16.0, "16.0/255")])
def test_eps_at_or_above_the_input_range_is_refused_naming_the_likely_intent(eps, intent):
    with pytest.raises(ValueError, match=rf"eps={eps} is at or above the input range \[0, 1\].*eps={intent}"):
        cure_ext.CURE(make(), eps=eps)
    cure_ext.CURE(make(), eps=0.99)  # below the range: a (large) ball of valid inputs


class Wide(nn.Module):
    """Hundreds of modules: listing them all would make a line of thousands of characters."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Flatten(), *[nn.Linear(16, 16) for _ in range(300)])
        self.classifier_head = nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier_head(self.blocks(x))


def test_a_head_name_that_is_not_there_names_the_closest_modules():
    with pytest.raises(ValueError, match=r"head='classifier' names no module of the model \(the closest: "
                                         r"classifier_head\)") as refusal:
        cure_ext.CURE(Wide(), head="classifier")
    assert len(str(refusal.value)) < 200
    with pytest.raises(ValueError, match=r"head='zzz' .*its top-level modules: blocks, classifier_head\)"):
        cure_ext.CURE(Wide(), head="zzz")
    compiled = torch.compile(Wide(), backend="eager")  # names as the user wrote them, not `_orig_mod.`
    names = [n for n, p in compiled.named_parameters()]
    assert cure_ext.CURE(compiled, head="classifier_head").selective == ["classifier_head" not in n for n in names]


def test_inputs_or_a_model_on_the_meta_device_are_refused_clearly():
    cure = cure_ext.CURE(make())
    x, y = batches(1)[0]
    before = everything(cure.model, cure)
    with pytest.raises(ValueError, match="x and y must hold values, got tensors on the meta device"):
        cure.step(x.to("meta"), y.to("meta"))
    assert same(everything(cure.model, cure), before)
    with pytest.raises(ValueError, match="parameters are on the meta device"):
        cure_ext.CURE(make().to("meta"))

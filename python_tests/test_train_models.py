"""Networks (shapes, parameter counts, names the policies rely on) and the selection / freezing rules."""
import pytest
import torch

from cure_ext.train.errors import ConfigError
from cure_ext.train.models import build_model
from cure_ext.selection import selective_flags
from cure_ext.train.stages import restrict_to_stages


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,classes,count,head", [
    ("resnet18", 10, 11_173_962, "linear"),
    ("resnet18", 100, 11_220_132, "linear"),
    ("preactresnet18", 10, 11_172_170, "linear"),
    ("wrn34-10", 10, 46_160_474, "fc"),
])
def test_paper_networks(name, classes, count, head):
    model = build_model(name, classes, 3, seed=0).eval()
    assert n_params(model) == count
    assert model.head_name == head
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, classes)


@pytest.mark.parametrize("size", [8, 28])
def test_small_cnn_takes_digits_and_fashion_mnist(size):
    model = build_model("cnn", 10, 1, seed=0)
    assert model(torch.rand(3, 1, size, size)).shape == (3, 10)
    assert n_params(model) < 50_000


def test_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = build_model("cnn", 10, 1, seed=4), build_model("cnn", 10, 1, seed=4)
    c = build_model("cnn", 10, 1, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_selection_policies_on_resnet18():
    model = build_model("resnet18", 10, 3, seed=0)
    names = [n for n, _ in model.named_parameters()]
    paper = selective_flags(names, "paper", model.head_name)
    assert [n for n, f in zip(names, paper) if not f] == ["linear.weight", "linear.bias"]
    official = [n for n, f in zip(names, selective_flags(names, "official", model.head_name)) if f]
    # The authors' rgp_soft: the 8 block-internal conv1 weights, 4.72M of 11.17M parameters.
    assert official == [f"layer{i}.{j}.conv1.weight" for i in range(1, 5) for j in range(2)]
    sizes = dict(model.named_parameters())
    assert sum(sizes[n].numel() for n in official) == 4_718_592
    assert all(selective_flags(names, "all", "linear")) and not any(selective_flags(names, "none", "linear"))


def test_official_policy_on_wrn_exempts_the_stem():
    model = build_model("wrn34-10", 10, 3, seed=0)
    names = [n for n, _ in model.named_parameters()]
    chosen = [n for n, f in zip(names, selective_flags(names, "official", "fc")) if f]
    assert len(chosen) == 15 and "conv1.weight" not in chosen
    assert all(n.startswith("block") and n.endswith(".conv1.weight") for n in chosen)


def test_update_blocks_freezes_everything_else_and_reinitialises():
    model = build_model("resnet18", 10, 3, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    restrict_to_stages(model, (2, 3), reinit=True, seed=1)
    for name, p in model.named_parameters():
        trained = name.startswith(("layer2.", "layer3."))
        assert p.requires_grad == trained, name
        if not trained:
            assert torch.equal(p, before[name])
    assert not torch.equal(model.layer2[0].conv1.weight, before["layer2.0.conv1.weight"])
    assert torch.equal(model.layer2[0].bn1.weight, torch.ones(128))  # BN reset
    with pytest.raises(ConfigError, match="stages 1..4"):
        restrict_to_stages(model, (5,), reinit=False, seed=0)

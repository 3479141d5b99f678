"""CURE in your own training loop: a small CNN defined here (its classifier is `classifier`), trained
naturally on scikit-learn's digits (8x8 images in [0, 1]), then with `cure_ext.CURE`; prints clean and PGD-20
accuracy on the test split before and after. Under a minute on 2 CPU cores.

    python examples/own_loop.py
"""
import time

import torch
from torch import nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import cure_ext
from cure_ext.attacks import ce_objective, pgd

EPS = 0.2  # digits' pixels are coarse: the main job's radius


class SmallNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten())
        self.classifier = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def digits():
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)  # [n, 1, 8, 8] in [0, 1]
    y = torch.tensor(data.target)
    return train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)


def loader(x, y, batch_size, generator):
    order = torch.randperm(len(y), generator=generator)
    for i in range(0, len(y), batch_size):
        yield x[order[i:i + batch_size]], y[order[i:i + batch_size]]


def accuracy(model, x, y):
    """Clean and PGD-20 (CE, uniform random start) accuracy in percent."""
    model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    x_adv = pgd(model, x, ce_objective(y), EPS, EPS / 4, 20, "uniform", torch.Generator().manual_seed(0))
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    return 100 * clean, 100 * robust


def main():
    torch.manual_seed(0)
    start = time.time()
    x_train, x_test, y_train, y_test = digits()
    model, gen = SmallNet(), torch.Generator().manual_seed(0)

    # Natural training first: an ordinary loop.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(10):
        model.train()
        for x, y in loader(x_train, y_train, 128, gen):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    print("before CURE: clean %.2f%%  PGD-20 %.2f%%" % accuracy(model, x_test, y_test))

    # CURE: one object does the attack, the loss, the score gradients and the fused step.
    epochs = 10
    cure = cure_ext.CURE(model, lr=0.05, momentum=0.9, weight_decay=5e-4, eps=EPS, step_size=EPS / 4, steps=10,
                         percentile=0.3, alpha=0.1, gamma=1.0, revision_rate=0.2, preset="paper", seed=0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(cure.optimizer, [epochs // 2, 3 * epochs // 4])
    for epoch in range(epochs):
        for x, y in loader(x_train, y_train, 128, gen):
            out = cure.step(x, y)
        scheduler.step()
        updated = out.kept.sum().item() / sum(p.numel() for p in model.parameters())
        print(f"epoch {epoch + 1}: loss {out.loss.item():.3f}, {100 * updated:.1f}% of the weights updated")
    print("after CURE:  clean %.2f%%  PGD-20 %.2f%%" % accuracy(model, x_test, y_test))
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

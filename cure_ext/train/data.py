"""Data sets in their standard distribution formats, held in memory as uint8 images, and the batch iterator
(shuffling and crop/flip augmentation drawn from the caller's torch.Generator, so one seed fixes them).

- digits: scikit-learn's bundled 8x8 digits, pixel values 0..16 (divided by 16 to reach [0, 1]).
- fashion-mnist: the IDX files `train-images-idx3-ubyte.gz` ... (gzip or already unpacked).
- cifar10 / cifar100: the python pickle batches (`cifar-10-batches-py/`, `cifar-100-python/`).
- svhn: `train_32x32.mat` / `test_32x32.mat` (label 10 is digit 0).
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..ranks import SINGLE, Ranks
from .errors import ConfigError, DataError

# Where Debian's `dataset-fashion-mnist` package installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_DATA_DIR = "data"
# Training images held out to choose the best checkpoint (--val-size). digits: 10% of its 1,437 training
# images (14 or 15 per class: enough to rank epochs, little taken from so small a set). The others: 1,000,
# the validation split Rice et al. (2020) hold out of CIFAR-10 for early stopping; PGD-20 on 1,000 images per
# epoch is cheap beside an adversarial epoch, and it is under 2% of Fashion-MNIST's, CIFAR's or SVHN's images.
DEFAULT_VAL_SIZE = {"digits": 144, "fashion-mnist": 1000, "cifar10": 1000, "cifar100": 1000, "svhn": 1000}


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    scale: float  # pixel value of full intensity: images / scale lie in [0, 1]
    augment: bool  # random crop (pad 4) and horizontal flip while training

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    def limited(self, train_limit: Optional[int], test_limit: Optional[int]) -> "Dataset":
        """The first train_limit training and test_limit test examples (file order; None: all): a
        smaller benchmark whose test part `cure-eval --limit` reproduces."""
        return replace(self, train_x=self.train_x[:train_limit], train_y=self.train_y[:train_limit],
                       test_x=self.test_x[:test_limit], test_y=self.test_y[:test_limit])

    def held_out(self, size: int, seed: int) -> tuple["Dataset", "Dataset"]:
        """(the rest, the validation split): `size` training examples, each class giving its share of them in
        proportion to its size (largest remainders), drawn by a generator of their own seeded with `seed`.
        The validation images are the test part of the second Dataset (whose training part is empty), so
        that evaluate() runs on them unchanged; both parts keep file order."""
        n = len(self.train_y)
        if not 0 <= size < n:
            raise ConfigError(f"--val-size {size} must be >= 0 and smaller than the training set ({n} images)")
        classes, counts = self.train_y.unique(return_counts=True)
        quota, remainder = (counts * size) // n, (counts * size) % n  # integers: the same split on any machine
        quota[torch.argsort(remainder, descending=True, stable=True)[:size - int(quota.sum())]] += 1
        generator = torch.Generator().manual_seed(seed)
        held = torch.zeros(n, dtype=torch.bool)
        for c, q in zip(classes.tolist(), quota.tolist()):
            members = (self.train_y == c).nonzero().flatten()
            held[members[torch.randperm(len(members), generator=generator)[:q]]] = True
        rest = replace(self, train_x=self.train_x[~held], train_y=self.train_y[~held])
        val = replace(self, train_x=self.train_x[:0], train_y=self.train_y[:0], test_x=self.train_x[held],
                      test_y=self.train_y[held])
        return rest, val


def _digits(data_dir: Optional[str]) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    xtr, xte, ytr, yte = train_test_split(images, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target)
    return Dataset("digits", torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte),
                   torch.from_numpy(yte).long(), 10, 16.0, augment=False)


def _open_maybe_gz(path_gz: str):
    if os.path.exists(path_gz):
        return gzip.open(path_gz, "rb")
    plain = path_gz[:-3]
    if os.path.exists(plain):
        return open(plain, "rb")
    raise DataError(f"missing data file {path_gz} (or {os.path.basename(plain)}) for fashion-mnist")


def read_idx(path_gz: str) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x0000 08 <ndim>, big-endian sizes)."""
    try:
        with _open_maybe_gz(path_gz) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path_gz}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path_gz} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path_gz} is truncated or corrupt: header says {shape}, file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _fashion_mnist(data_dir: Optional[str]) -> Dataset:
    root = data_dir or FASHION_MNIST_DIR
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"fashion-mnist {split} files in {root} disagree: images {x.shape}, labels {y.shape}")
        parts[split] = (torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64)))
    return Dataset("fashion-mnist", *parts["train"], *parts["test"], 10, 255.0, augment=False)


def _find_dir(data_dir: Optional[str], folder: str, probe: str) -> str:
    """`data_dir/folder` or `data_dir` itself, whichever holds `probe`."""
    root = data_dir or DEFAULT_DATA_DIR
    for candidate in (os.path.join(root, folder), root):
        if os.path.exists(os.path.join(candidate, probe)):
            return candidate
    raise DataError(f"missing data: no {folder}/{probe} under {os.path.abspath(root)} (set --data-dir)")


def _unpickle(path: str, label_key: bytes):
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"missing data file {path}") from None
    except Exception as e:  # any unpickling or layout failure means the file is not a CIFAR batch
        raise DataError(f"{path} is not a CIFAR python batch ({type(e).__name__}: {e})") from None
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _cifar(data_dir, folder, train_files, test_files, label_key, num_classes, name) -> Dataset:
    root = _find_dir(data_dir, folder, test_files[0])
    parts = []
    for files in (train_files, test_files):
        batches = [_unpickle(os.path.join(root, f), label_key) for f in files]
        parts += [torch.from_numpy(np.concatenate([b[0] for b in batches])),
                  torch.from_numpy(np.concatenate([b[1] for b in batches]))]
    y_max = max(int(parts[1].max()), int(parts[3].max()))
    if y_max >= num_classes:
        raise DataError(f"{name} labels in {root} reach {y_max}, expected < {num_classes}")
    return Dataset(name, *parts, num_classes, 255.0, augment=True)


def _cifar10(data_dir):
    return _cifar(data_dir, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                  b"labels", 10, "cifar10")


def _cifar100(data_dir):
    return _cifar(data_dir, "cifar-100-python", ["train"], ["test"], b"fine_labels", 100, "cifar100")


def _svhn(data_dir):
    from scipy.io import loadmat

    root = _find_dir(data_dir, "svhn", "test_32x32.mat")
    parts = []
    for split in ("train", "test"):
        path = os.path.join(root, f"{split}_32x32.mat")
        try:
            mat = loadmat(path)
            x = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1))  # HWCN -> NCHW
            y = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10  # SVHN stores digit 0 as label 10
        except FileNotFoundError:
            raise DataError(f"missing data file {path}") from None
        except Exception as e:
            raise DataError(f"{path} is not an SVHN .mat file ({type(e).__name__}: {e})") from None
        if x.shape[1:] != (3, 32, 32) or len(x) != len(y):
            raise DataError(f"{path}: unexpected image array {x.shape} for {len(y)} labels")
        parts += [torch.from_numpy(x), torch.from_numpy(y)]
    return Dataset("svhn", *parts, 10, 255.0, augment=True)


LOADERS: dict[str, Callable[[Optional[str]], Dataset]] = {
    "digits": _digits, "fashion-mnist": _fashion_mnist, "cifar10": _cifar10, "cifar100": _cifar100, "svhn": _svhn,
}


def load_dataset(name: str, data_dir: Optional[str] = None) -> Dataset:
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}")
    return LOADERS[name](data_dir)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop of a zero-padded (4 px) image and a random horizontal flip, per example."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (n,), generator=generator)
    ox = torch.randint(0, 9, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    crops = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # [n, h, w, c] -> nchw
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


def batches(x: torch.Tensor, y: torch.Tensor, scale: float, batch_size: int, device: torch.device,
            generator: Optional[torch.Generator] = None, augment: bool = False, limit: Optional[int] = None,
            ranks: Ranks = SINGLE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float batches in [0, 1] on `device`. With a generator: shuffled (and augmented if asked);
    without: in order, the first `limit` examples. With several ranks: this rank's shard of every batch,
    the batches (order and augmentation) being those of one process; a final batch too small to give every
    rank an example is dropped (see train_batch_count)."""
    n = len(x) if limit is None else min(limit, len(x))
    order = torch.randperm(len(x), generator=generator)[:n] if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        xb = x[idx]
        if augment:  # the whole batch (even one then dropped), so that the stream does not depend on the ranks
            xb = augment_batch(xb, generator)
        if len(idx) < ranks.world:
            break
        part = ranks.shard(len(idx))
        yield (xb[part].to(device, non_blocking=True).float() / scale), y[idx[part]].to(device, non_blocking=True)


def train_batch_count(n: int, batch_size: int, world: int = 1) -> int:
    """How many batches `batches` yields for n examples split over `world` ranks."""
    return n // batch_size + (n % batch_size >= world)


def split_data(cfg) -> tuple[Dataset, Dataset]:
    """(training and test data, validation split) of a run's TrainConfig: the validation split is held out of
    the whole training set first, so that --train-limit never changes which images it holds."""
    # val_size None: the config of a run from before the split (resumed), which held nothing out
    data, val = load_dataset(cfg.dataset, cfg.data_dir).held_out(cfg.val_size or 0, cfg.seed + 4)
    return data.limited(cfg.train_limit, cfg.test_limit), val

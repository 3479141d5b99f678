"""Each loader reads small files written in the data set's real distribution format."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from cure_ext.train.data import augment_batch, batches, load_dataset, read_idx
from cure_ext.train.errors import ConfigError, DataError


def cifar_rows(n, seed):
    """n CIFAR rows (3072 bytes: the R, G, B planes of a 32x32 image, row-major) with known pixels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10_pickle_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    train_rows = []
    for i in range(1, 6):
        rows = cifar_rows(4, i)
        train_rows.append(rows)
        write_pickle(root / f"data_batch_{i}", {b"batch_label": b"x", b"labels": [i, (i + 1) % 10, 0, 9],
                                                 b"data": rows, b"filenames": [b"a"] * 4})
    test_rows = cifar_rows(3, 99)
    write_pickle(root / "test_batch", {b"labels": [7, 8, 9], b"data": test_rows})
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_y.tolist()[:8] == [1, 2, 0, 9, 2, 3, 0, 9]
    assert ds.test_y.tolist() == [7, 8, 9]
    # Channel planes: byte 1024 + 32*r + c is the green value at row r, column c.
    assert ds.train_x[0, 1, 2, 5] == train_rows[0][0, 1024 + 32 * 2 + 5]
    assert ds.test_x[2, 2, 31, 31] == test_rows[2, 3071]
    assert ds.num_classes == 10 and ds.scale == 255.0 and ds.augment
    # The folder itself works as --data-dir too.
    assert load_dataset("cifar10", str(root)).train_x.shape == (20, 3, 32, 32)


def test_cifar100_pickle_files(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    write_pickle(root / "train", {b"fine_labels": [99, 0, 42], b"coarse_labels": [1, 2, 3], b"data": cifar_rows(3, 0)})
    write_pickle(root / "test", {b"fine_labels": [5, 6], b"coarse_labels": [0, 0], b"data": cifar_rows(2, 1)})
    ds = load_dataset("cifar100", str(tmp_path))
    assert ds.train_x.shape == (3, 3, 32, 32) and ds.test_x.shape == (2, 3, 32, 32)
    assert ds.train_y.tolist() == [99, 0, 42] and ds.test_y.tolist() == [5, 6]
    assert ds.num_classes == 100


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 3)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [10], [9]][:n], dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "train":
            train_x = x
    ds = load_dataset("svhn", str(tmp_path))
    assert ds.train_x.shape == (5, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_y.tolist() == [0, 1, 2, 0, 9], "label 10 is the digit 0"
    assert ds.train_x[3, 2, 4, 7] == train_x[4, 7, 2, 3]  # X is [H, W, C, N]


def write_idx(path, array):
    dims = array.shape
    header = struct.pack(">BBBB", 0, 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_gz(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 9]))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, size=(2, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([5, 6]))
    ds = load_dataset("fashion-mnist", str(tmp_path))
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (2, 1, 28, 28)
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(train))
    assert ds.train_y.tolist() == [0, 1, 2, 3, 4, 9] and ds.test_y.tolist() == [5, 6]
    assert not ds.augment


def test_idx_corruption_is_a_data_error(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.arange(10))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-3]))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(str(path))
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(str(path))


def test_missing_and_corrupt_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(DataError, match="missing data file"):
        load_dataset("fashion-mnist", str(tmp_path))
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="missing data file .*data_batch_1"):
        load_dataset("cifar10", str(tmp_path))
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a CIFAR python batch"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")


def test_digits_split_and_scale():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_dataset("digits")
    assert ds.train_x.shape == (1437, 1, 8, 8) and ds.test_x.shape == (360, 1, 8, 8)
    bunch = load_digits()
    _, xte, _, yte = train_test_split(bunch.images / 16, bunch.target, test_size=0.2, random_state=0,
                                      stratify=bunch.target)
    x, y = next(batches(ds.test_x, ds.test_y, ds.scale, 1000, torch.device("cpu")))
    assert x.dtype == torch.float32 and torch.equal(x[:, 0], torch.from_numpy(xte.astype(np.float32)))
    assert torch.equal(y, torch.from_numpy(yte))


def test_batches_shuffle_is_seeded_and_covers_every_example():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    y = torch.arange(10)
    run = lambda: [b[1].tolist() for b in batches(x, y, 1.0, 4, torch.device("cpu"),  # noqa: E731
                                                  torch.Generator().manual_seed(3))]
    first = run()
    assert first == run() and [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10)) and sum(first, []) != list(range(10))
    ordered = [b[1].tolist() for b in batches(x, y, 1.0, 4, torch.device("cpu"), limit=6)]
    assert ordered == [[0, 1, 2, 3], [4, 5]]


def test_augmentation_crops_and_flips():
    x = torch.arange(2 * 3 * 32 * 32).remainder(251).to(torch.uint8).view(2, 3, 32, 32) + 1  # no zero pixel
    out = augment_batch(x.repeat(50, 1, 1, 1), torch.Generator().manual_seed(0))
    assert out.shape == (100, 3, 32, 32) and out.dtype == torch.uint8
    for i in range(100):
        src = x[i % 2]
        img = out[i]
        # Every output is a shifted (by at most 4 px, zero-filled) and possibly mirrored copy.
        found = False
        for cand in (img, img.flip(2)):
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    shifted = torch.zeros_like(src)
                    ys, xs = slice(max(0, -dy), min(32, 32 - dy)), slice(max(0, -dx), min(32, 32 - dx))
                    yd, xd = slice(max(0, dy), min(32, 32 + dy)), slice(max(0, dx), min(32, 32 + dx))
                    shifted[:, ys, xs] = src[:, yd, xd]
                    if torch.equal(shifted, cand):
                        found = True
        assert found, f"output {i} is not a crop/flip of its input"
    assert len({tuple(o.flatten()[:50].tolist()) for o in out[::2]}) > 10  # different crops per example


def test_limited_takes_the_first_examples_in_file_order():
    full = load_dataset("digits")
    small = full.limited(100, 30)
    assert small.train_x.shape[0] == 100 and small.test_x.shape[0] == 30
    assert torch.equal(small.train_x, full.train_x[:100]) and torch.equal(small.test_y, full.test_y[:30])
    assert full.limited(None, None).train_x.shape == full.train_x.shape


def test_the_validation_split_is_stratified_seeded_and_disjoint_from_training():
    full = load_dataset("digits")
    rest, val = full.held_out(144, seed=4)
    assert len(val.test_y) == 144 and len(rest.train_y) == 1437 - 144 and len(val.train_y) == 0
    assert torch.equal(rest.test_x, full.test_x)  # the test set is untouched
    # Each class gives its share: the exact share rounded down or up, the shares summing to the size.
    counts = torch.bincount(full.train_y, minlength=10)
    taken = torch.bincount(val.test_y, minlength=10)
    exact = counts.double() * 144 / 1437
    assert torch.all(taken >= exact.floor()) and torch.all(taken <= exact.ceil())
    # Every training image is in exactly one part, each part in file order: match them back by content.
    key = lambda x, y: [(bytes(a.flatten().tolist()), int(b)) for a, b in zip(x, y)]  # noqa: E731
    position = {k: i for i, k in enumerate(key(full.train_x, full.train_y))}
    assert len(position) == 1437  # no two digits training images are alike
    val_pos = [position[k] for k in key(val.test_x, val.test_y)]
    rest_pos = [position[k] for k in key(rest.train_x, rest.train_y)]
    assert val_pos == sorted(val_pos) and rest_pos == sorted(rest_pos)
    assert sorted(val_pos + rest_pos) == list(range(1437))
    again, val_again = full.held_out(144, seed=4)
    assert torch.equal(val_again.test_x, val.test_x) and torch.equal(again.train_x, rest.train_x)
    assert not torch.equal(full.held_out(144, seed=5)[1].test_x, val.test_x)


def test_the_validation_split_of_zero_and_bad_sizes():
    full = load_dataset("digits")
    rest, val = full.held_out(0, seed=0)
    assert len(val.test_y) == 0 and torch.equal(rest.train_x, full.train_x)
    assert len(full.held_out(1436, seed=0)[0].train_y) == 1
    for size in (-1, 1437, 5000):
        with pytest.raises(ConfigError, match=rf"--val-size {size} must be >= 0 and smaller than the training set "
                                              r"\(1437 images\)"):
            full.held_out(size, seed=0)


def test_train_limit_takes_the_first_images_left_after_the_validation_split():
    from cure_ext.train.config import make_config
    from cure_ext.train.data import split_data

    data, val = split_data(make_config(seed=3))
    limited, val_limited = split_data(make_config(seed=3, train_limit=200, test_limit=50))
    assert torch.equal(val_limited.test_x, val.test_x) and torch.equal(val_limited.test_y, val.test_y)
    assert torch.equal(limited.train_x, data.train_x[:200]) and len(limited.test_y) == 50
    assert len(val.test_y) == 144 and len(data.train_y) == 1437 - 144

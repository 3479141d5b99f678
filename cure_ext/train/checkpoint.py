"""Checkpoints: written atomically, read back with validation.

Every checkpoint is a dict with `format`, `config` (the resolved TrainConfig as a dict), `model_spec` (how to
rebuild the network) and `model` (its state dict). `last.pt` adds what `--resume` needs: the revision
model, optimizer and scheduler states, the position (phase, epoch), the random generators' states, the
per-epoch records and the best epoch so far. `best.pt` holds the model of the best epoch and its record.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .models import MODELS, build_model
from .report import write_atomic

FORMAT = "cure_ext.train/1"


def save_atomic(obj: Any, path: str) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`: a kill leaves the old file."""
    write_atomic(path, lambda f: torch.save(obj, f), mode="wb")


def _load(path: str) -> Any:
    """torch.load onto the CPU without executing pickled code; any failure is a CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before failing on them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {first_line[:200]})") from None


def read_checkpoint(path: str) -> dict:
    """A checkpoint written by the trainer (loaded onto the CPU, without executing pickled code)."""
    ckpt = _load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cure_ext.train checkpoint (expected format {FORMAT!r})")
    spec = ckpt.get("model_spec")
    if not (isinstance(ckpt.get("config"), dict) and isinstance(ckpt.get("model"), dict) and isinstance(spec, dict)
            and spec.get("name") in MODELS and isinstance(spec.get("num_classes"), int)
            and isinstance(spec.get("in_channels"), int)):
        raise CheckpointError(f"{path} is an incomplete or damaged checkpoint (its config, model or model_spec "
                              "entry is missing or invalid)")
    return ckpt


# What --resume needs beyond a model checkpoint (best.pt lacks these: it cannot be resumed from).
RESUME_KEYS = ("revision_model", "optimizer", "scheduler", "position", "rng", "records", "best")


def read_last(path: str) -> dict:
    """A checkpoint that --resume can continue from."""
    ckpt = read_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} cannot be resumed from: it lacks {', '.join(missing)} (is it a best.pt?)")
    return ckpt


def model_spec(name: str, num_classes: int, in_channels: int) -> dict:
    return {"name": name, "num_classes": num_classes, "in_channels": in_channels}


def load_state(model: nn.Module, state: dict, source: str) -> None:
    """Strict load with an error that names the first mismatching keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{source} does not fit the model: {' '.join(first[:3])[:400]}") from None


def model_from_checkpoint(ckpt: dict, source: str) -> nn.Module:
    spec = ckpt["model_spec"]
    model = build_model(spec["name"], spec["num_classes"], spec["in_channels"], seed=0)
    load_state(model, ckpt["model"], source)
    return model


def load_checkpoint(path: str) -> tuple[nn.Module, dict]:
    """(model, config) of a saved run: the model on the CPU in eval mode, taking inputs in [0, 1]; the
    config dict of the run (with at least `eps` and `dataset`)."""
    ckpt = read_checkpoint(path)
    missing = [k for k in ("dataset", "eps", "model") if k not in ckpt["config"]]
    if missing:
        raise CheckpointError(f"{path}: its config lacks {', '.join(missing)}")
    model = model_from_checkpoint(ckpt, path)
    model.eval()
    return model, dict(ckpt["config"])


def read_init_weights(path: str) -> dict:
    """The model state dict for `--init-checkpoint`: from a trainer checkpoint, or a plain state dict (bare,
    or under the key `state_dict` or `model` as the authors' code accepts)."""
    obj = _load(path)
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no model state dict")
    return obj

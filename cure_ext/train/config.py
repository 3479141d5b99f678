"""The training configuration: every setting of a run, resolved to concrete values before training starts and
stored in its checkpoints and metrics.

Resolution order: the dataclass defaults, then the recipe (`--recipe`, else the dataset's default recipe),
then the options given explicitly. Settings left at None are derived last:
- β, the score and the selection policy from the preset (β: `paper` 1 as in Eq. 5, `official` 5 as in the
  authors' code). TRADES gets the same β, so that it is exactly CURE without selection and revision (the
  first row of the paper's ablation, Table 7); `--beta 6` gives the TRADES paper's CIFAR setting;
- attack step sizes as ε/4 (2/255 at ε = 8/255); the pre-training lr as lr;
- the validation split's size from the dataset (data.DEFAULT_VAL_SIZE), so that a run's config, and its
  last.pt, name the split it was trained without;
- CURE_Eff's warm-up as 40% of its epochs (80 of 200 in the authors' `train_warmup.py`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..presets import PRESETS
from . import recipes
from .data import DEFAULT_VAL_SIZE, LOADERS
from .errors import ConfigError
from .models import MODELS

METHODS = ("standard", "pgd-at", "trades", "cure", "cure-eff")
SELECT_POLICIES = ("paper", "official", "all", "none")


@dataclass
class TrainConfig:
    method: str = "cure"
    preset: str = "paper"
    recipe: Optional[str] = None
    dataset: str = "digits"
    data_dir: Optional[str] = None
    model: str = "cnn"
    pretrain_epochs: int = 15
    epochs: int = 15
    warmup_epochs: Optional[int] = None
    batch_size: int = 128
    lr: float = 0.1
    pretrain_lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "multistep"  # multistep | cosine | constant, per phase
    lr_milestones: tuple = (0.5, 0.75)  # fractions of the phase's epochs (100 and 150 of 200 in the paper)
    lr_gamma: float = 0.1
    eps: float = recipes.DIGITS_EPS
    attack_steps: int = 10
    attack_step_size: Optional[float] = None
    eval_steps: int = 20
    eval_step_size: Optional[float] = None
    eval_every: int = 1
    eval_limit: Optional[int] = None  # test examples of the per-epoch test evaluation (reported only; final: all)
    train_limit: Optional[int] = None  # first N training examples (after the validation split) only
    val_size: Optional[int] = None  # training examples held out to choose best.pt (0: best = last epoch)
    test_limit: Optional[int] = None  # first N test examples only, for every evaluation
    eval_batch_size: int = 256
    percentile: float = 0.3
    alpha: float = 0.1
    beta: Optional[float] = None
    gamma: float = 1.0
    score: Optional[str] = None
    select: Optional[str] = None
    conserve: str = "grad"
    revision_rate: float = 0.2
    revision_decay: float = 0.999
    revision_schedule: str = "constant"  # constant | linear (decays to 0 over the adversarial phase)
    update_blocks: Optional[tuple] = None  # residual stages (1-based) trained in the adversarial phase
    reinit_blocks: bool = False
    init_checkpoint: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None  # CPU intra-op threads; None: 1 for the small cnn, torch's default otherwise
    bf16: bool = False
    autoattack: bool = False
    skip_nonfinite: bool = False  # skip steps with a non-finite loss or gradient instead of stopping

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        cfg = cls(**values)
        for name in ("lr_milestones", "update_blocks"):
            if getattr(cfg, name) is not None:
                setattr(cfg, name, tuple(getattr(cfg, name)))
        return cfg

    @property
    def is_cure(self) -> bool:
        return self.method in ("cure", "cure-eff")


def make_config(**options) -> TrainConfig:
    """A resolved, validated configuration from explicit options (None values count as not given)."""
    options = {k: v for k, v in options.items() if v is not None}
    dataset = options.get("dataset", "digits")
    if dataset not in recipes.DEFAULT_RECIPE:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(recipes.DEFAULT_RECIPE)}")
    recipe_name = options.get("recipe") or recipes.DEFAULT_RECIPE[dataset]
    if recipe_name not in recipes.RECIPES:
        raise ConfigError(f"unknown recipe {recipe_name!r}; `cure-train --list-recipes` lists them")
    recipe = recipes.RECIPES[recipe_name]
    if "dataset" in options and options["dataset"] != recipe.config["dataset"]:
        raise ConfigError(f"recipe {recipe_name} is for {recipe.config['dataset']}, not {options['dataset']}")
    cfg = TrainConfig.from_dict({**recipe.config, **options, "recipe": recipe_name})
    preset = PRESETS.get(cfg.preset)
    if preset is None:
        raise ConfigError(f"unknown preset {cfg.preset!r}; choose paper or official")
    if cfg.beta is None:
        cfg.beta = preset["beta"]
    cfg.score = cfg.score or preset["score"]
    cfg.select = cfg.select or preset["select"]
    cfg.attack_step_size = cfg.attack_step_size if cfg.attack_step_size is not None else cfg.eps / 4
    cfg.eval_step_size = cfg.eval_step_size if cfg.eval_step_size is not None else cfg.eps / 4
    cfg.pretrain_lr = cfg.pretrain_lr if cfg.pretrain_lr is not None else cfg.lr
    cfg.val_size = cfg.val_size if cfg.val_size is not None else DEFAULT_VAL_SIZE[cfg.dataset]
    if cfg.method == "cure-eff":
        if options.get("pretrain_epochs"):
            raise ConfigError("cure-eff warms up inside --epochs; set --warmup-epochs, not --pretrain-epochs")
        cfg.pretrain_epochs = 0
        if cfg.warmup_epochs is None:
            cfg.warmup_epochs = round(0.4 * cfg.epochs)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    need(cfg.method in METHODS, f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    need(cfg.dataset in LOADERS, f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(LOADERS)}")
    need(cfg.model in MODELS, f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    need(cfg.score in ("abs", "signed"), f"--score must be abs or signed, got {cfg.score!r}")
    need(cfg.select in SELECT_POLICIES, f"--select must be one of {', '.join(SELECT_POLICIES)}")
    need(cfg.conserve in ("grad", "freeze"), f"--conserve must be grad or freeze, got {cfg.conserve!r}")
    need(cfg.lr_schedule in ("multistep", "cosine", "constant"), "--lr-schedule must be multistep, cosine or constant")
    need(cfg.revision_schedule in ("constant", "linear"), "--revision-schedule must be constant or linear")
    need(cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"), "--device must be cpu, cuda or auto")
    for name in ("pretrain_epochs", "epochs", "attack_steps", "eval_steps", "val_size"):
        need(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} must be >= 0")
    for name in ("batch_size", "eval_every", "eval_batch_size"):
        need(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} must be >= 1")
    for name in ("eval_limit", "train_limit", "test_limit"):
        need(getattr(cfg, name) is None or getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} must be >= 1")
    need(cfg.threads is None or cfg.threads >= 1, "--threads must be >= 1")
    for name in ("percentile", "alpha", "revision_rate", "revision_decay"):
        need(0.0 <= getattr(cfg, name) <= 1.0, f"--{name.replace('_', '-')} must be in [0, 1]")
    need(cfg.eps > 0, "--eps must be > 0")  # before the step sizes derived from it
    for name in ("lr", "pretrain_lr", "momentum", "weight_decay", "beta", "gamma", "attack_step_size",
                 "eval_step_size", "lr_gamma"):
        need(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} must be >= 0")
    need(all(0 < m <= 1 for m in cfg.lr_milestones), "--lr-milestones are fractions of a phase, in (0, 1]")
    if cfg.method == "cure-eff":
        need(0 <= cfg.warmup_epochs <= cfg.epochs, "--warmup-epochs must lie in [0, --epochs]")
        need(cfg.init_checkpoint is None, "cure-eff has its own warm-up: it takes no --init-checkpoint")
    need(not cfg.bf16 or cfg.device != "cpu", "--bf16 is for CUDA runs")
    need(cfg.update_blocks is None or len(cfg.update_blocks) > 0, "--update-blocks names no stage")
    need(not cfg.reinit_blocks or cfg.update_blocks is not None, "--reinit-blocks needs --update-blocks")

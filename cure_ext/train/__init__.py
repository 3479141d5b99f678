"""The thin CURE trainer: models, data, attacks, the methods' training steps, evaluation and the
`cure-train` / `cure-eval` / `cure-compare` command-line tools (see cli.py)."""
from .checkpoint import load_checkpoint

__all__ = ["load_checkpoint"]

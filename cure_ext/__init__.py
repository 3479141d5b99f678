"""cure_ext: CURE (Conserve-Update-Revise) selective adversarial training with a fused C++/CUDA step."""
import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from . import _C  # noqa: F401  (registers torch.ops.cure_ext.selective_step and its kernels)
from . import reference
from .ops import selective_step
from .optim import CURESGD
from .train.checkpoint import load_checkpoint

__all__ = ["selective_step", "reference", "CURESGD", "load_checkpoint"]

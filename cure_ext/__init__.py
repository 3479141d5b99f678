"""cure_ext: CURE (Conserve-Update-Revise) selective adversarial training with a fused C++/CUDA step.

Importing it loads the op and the optimizer only; `CURE` loads its attacks and losses, and `load_checkpoint`
the trainer's checkpoint reader, when first used."""
import glob
import os

import torch  # loads libtorch before the extension that links against it

__version__ = "0.1.0"

try:
    from . import _build_info
except ImportError:
    _build_info = None
if _build_info is not None and _build_info.TORCH_VERSION != str(torch.__version__):
    raise ImportError(f"cure_ext was built against torch {_build_info.TORCH_VERSION} but torch {torch.__version__} "
                      "is installed: reinstall cure_ext (`pip install .` in its checkout) to rebuild it")
try:
    from . import _C  # noqa: F401  (registers torch.ops.cure_ext.selective_step and its kernels)
except ImportError:
    # A source folder shadowing the installed package raises a plain ImportError; a _C that exists but
    # fails to load (a missing symbol, a library) keeps its own message.
    if glob.glob(os.path.join(__path__[0], "_C.*")):
        raise
    raise ImportError(f"cure_ext's compiled extension is missing from {__path__[0]}: install with `pip install .` "
                      "(from another folder than the checkout), or build in place with "
                      "`python setup.py build_ext --inplace`") from None
from . import reference  # noqa: E402
from .ops import selective_step  # noqa: E402
from .optim import CURESGD  # noqa: E402

__all__ = ["selective_step", "reference", "CURESGD", "CURE", "load_checkpoint"]


def __getattr__(name: str):
    if name == "CURE":
        from .cure import CURE
        return CURE
    if name == "load_checkpoint":
        from .train.checkpoint import load_checkpoint
        return load_checkpoint
    raise AttributeError(f"module 'cure_ext' has no attribute {name!r}")

"""`python -m cure_ext`: the version, the torch the extension was built against and the one running, and
the op's kernels. Cheap: it loads the op, not the trainer (`cure-train` runs that)."""
import torch

import cure_ext
from cure_ext import _build_info


def main() -> None:
    kernels = "CPU + CUDA" if _build_info.WITH_CUDA_KERNELS else "CPU"
    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s) visible" if torch.version.cuda else "no CUDA"
    print(f"cure_ext {cure_ext.__version__} ({cure_ext.__path__[0]})")
    print(f"built against torch {_build_info.TORCH_VERSION}, running torch {torch.__version__} ({cuda})")
    print(f"op torch.ops.cure_ext.selective_step: {kernels} kernels")
    print("train with `cure-train` (python -m cure_ext.train); CURE in your own loop: cure_ext.CURE")


if __name__ == "__main__":
    main()

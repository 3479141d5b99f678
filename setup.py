"""Builds cure_ext._C against the PyTorch already installed (CPU, or CUDA when that torch has CUDA).

Build with `pip install --no-build-isolation .`: an isolated build environment has no torch (or would
fetch a different one, gigabytes of CUDA wheels included), and the extension must match the torch it
is loaded into.
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit("cure_ext builds against the installed PyTorch, which this build cannot import: "
             "use `pip install --no-build-isolation .` (build isolation hides torch; install torch first if missing).")

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def want_cuda():
    """CUDA kernels are built when the installed torch has CUDA, or when CURE_EXT_CUDA=1 forces it
    (CURE_EXT_CUDA=0 forbids it)."""
    flag = os.environ.get("CURE_EXT_CUDA", "auto").lower()
    if flag in ("0", "false", "no"):
        return False
    if flag in ("1", "true", "yes"):
        return True
    return torch.version.cuda is not None


def extension():
    # -ffp-contract=off: the score must round each product and sum (SPEC §2), never fuse them.
    # -fno-trapping-math: lets the update loop use selects (vectorised); no code here reads FP traps.
    cxx = ["-O3", "-std=c++20", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"]
    src = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    kwargs = dict(name="cure_ext._C", include_dirs=[os.path.join(ROOT, "csrc")], py_limited_api=False)
    if not want_cuda():
        return CppExtension(sources=src, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"], **kwargs)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "7.5;8.0;8.6;8.9;9.0+PTX")
    nvcc = ["-O3", "-std=c++17", "--fmad=false", "-lineinfo"]
    return CUDAExtension(sources=src + sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu"),
                         extra_compile_args={"cxx": cxx + ["-DCURE_EXT_WITH_CUDA"], "nvcc": nvcc},
                         extra_link_args=["-fopenmp"], **kwargs)


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension})

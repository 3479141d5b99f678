"""Builds cure_ext._C against the PyTorch already installed (CPU, or CUDA when that torch has CUDA).

`pip install .` works as it is: the in-tree build backend (build_backend/) lets pip's isolated build find
the torch of the environment being installed into, and torch is never a build requirement (that would
fetch another torch, gigabytes of CUDA wheels included, and build against it). The torch version is
recorded in cure_ext/_build_info.py, which `import cure_ext` checks.
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as e:
    sys.exit(f"cure_ext builds against the PyTorch of the Python environment it is installed into ({sys.prefix}), "
             f"which has none ({e}): install torch first (`pip install torch`; this project's CPU pin is "
             "`pip install torch==2.13.0`), then rerun the install")

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


def write_build_info(with_cuda: bool) -> None:
    """The torch this build is made against, for `import cure_ext` to check (an extension built against
    another torch fails to load, or worse)."""
    text = ('"""Written by setup.py: what cure_ext._C was built against."""\n'
            f"TORCH_VERSION = {str(torch.__version__)!r}\nTORCH_CUDA = {torch.version.cuda!r}\n"
            f"WITH_CUDA_KERNELS = {with_cuda!r}\n")
    path = os.path.join(ROOT, "cure_ext", "_build_info.py")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def default_jobs() -> str:
    return str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# ninja (a build requirement) compiles the sources in parallel: MAX_JOBS of them, by default one per core.
os.environ.setdefault("MAX_JOBS", default_jobs())
ext = extension()
write_build_info(any(p.endswith(".cu") for p in ext.sources))
setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})

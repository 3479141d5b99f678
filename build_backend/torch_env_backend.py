"""setuptools' build backend, building against the torch of the environment that pip installs into.

pip's isolated build environment hides the environment's site-packages (and the user site), so the
build could not import the installed torch; listing torch as a build requirement would fetch another
one (gigabytes of CUDA wheels) and build the extension against it. Instead, when torch is not importable
here, the same interpreter is asked, without pip's isolation variables, where its torch lives, and that
folder is appended to sys.path: after the build environment's own packages, so that its setuptools and
ninja still win. Without isolation (`--no-build-isolation`) torch is importable and nothing changes.
Without any torch, setup.py stops with a one-line message saying to install it first.
"""
import importlib.util
import os
import subprocess
import sys

from setuptools.build_meta import *  # noqa: F401,F403  (every PEP 517/660 hook)

_FIND_TORCH = ("import importlib.util, os; s = importlib.util.find_spec('torch'); "
               "print(os.path.dirname(os.path.dirname(s.origin)) if s and s.origin else '')")


def installed_torch_dir():
    """The folder holding the environment's torch package, or None. pip's isolation is its PYTHONPATH
    (a sitecustomize that drops the site-packages) and PYTHONNOUSERSITE; a child without them sees the
    environment as the user does."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    try:
        found = subprocess.run([sys.executable, "-c", _FIND_TORCH], env=env, capture_output=True, text=True,
                               timeout=120, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return found or None


if importlib.util.find_spec("torch") is None:
    _dir = installed_torch_dir()
    if _dir is not None and _dir not in sys.path:
        sys.path.append(_dir)

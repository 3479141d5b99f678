"""Installing from a checkout (issue 13): plain `pip install .` builds against the environment's torch from
inside pip's isolated build, never fetching another; without torch it stops at once with one line saying
to install torch first; the extension refuses to load under another torch than the one it was built
against, in one line."""
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import time

import pytest
import torch

import cure_ext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PIN = "torch==2.13.0"  # README's and CI's pin: a local CPU build on these machines, never unpinned
NO_TORCH = "install torch first (`pip install torch`; this project's CPU pin is `pip install torch==2.13.0`)"


def test_an_extension_built_against_another_torch_refuses_to_load_in_one_line(tmp_path):
    """The installed package, copied, with another torch version recorded in its build info."""
    copy = tmp_path / "cure_ext"
    shutil.copytree(cure_ext.__path__[0], copy, ignore=shutil.ignore_patterns("__pycache__"))
    info = (copy / "_build_info.py").read_text()
    assert f"TORCH_VERSION = {str(torch.__version__)!r}" in info  # what this build recorded
    (copy / "_build_info.py").write_text(info.replace(repr(str(torch.__version__)), "'2.0.0+fake'"))
    proc = subprocess.run([sys.executable, "-c", "import cure_ext"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ImportError: cure_ext was built against torch 2.0.0+fake but torch {torch.__version__} is installed: "
        "reinstall cure_ext (`pip install .` in its checkout) to rebuild it")


def test_the_backend_finds_the_environments_torch_inside_pips_build_isolation(tmp_path):
    """pip's own BuildEnvironment hides this environment's site-packages and user site (torch with them);
    importing the in-tree backend there makes the torch that this interpreter sees outside importable
    again: the site-packages' one, or a user install's where the interpreter has a user site (a venv has
    none)."""
    # The build requirement pip would install into the build environment: a copy of setuptools (located,
    # not imported: importing it here would meet the distutils this process already has).
    lib = tmp_path / "lib"
    packages = os.path.dirname(os.path.dirname(importlib.util.find_spec("setuptools").origin))
    for name in ("setuptools", "pkg_resources", "_distutils_hack"):
        if os.path.isdir(os.path.join(packages, name)):
            shutil.copytree(os.path.join(packages, name), lib / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import importlib.util, sys; hidden = importlib.util.find_spec('torch') is None; "
            f"sys.path[:0] = [{os.path.join(REPO, 'build_backend')!r}, {str(lib)!r}]; import torch_env_backend; "
            "import torch; print(hidden, torch.__file__, hasattr(torch_env_backend, 'build_wheel'), "
            "hasattr(torch_env_backend, 'build_editable'))")
    # A user install (`pip install --user`) of a torch: the user site, where the interpreter has one (not in a
    # venv: site.ENABLE_USER_SITE is False there), comes before the site-packages.
    user_base = {"PYTHONUSERBASE": str(tmp_path / "userbase")}
    user_site = subprocess.run([sys.executable, "-c", "import site; print(site.getusersitepackages())"],
                               env={**os.environ, **user_base}, capture_output=True, text=True,
                               check=True).stdout.strip()
    os.makedirs(os.path.join(user_site, "torch"))
    with open(os.path.join(user_site, "torch", "__init__.py"), "w") as f:
        f.write("__version__ = 'user'\n")
    outside = subprocess.run([sys.executable, "-c", "import torch; print(torch.__file__)"], cwd=tmp_path,
                             env={**os.environ, **user_base}, capture_output=True, text=True, check=True).stdout.strip()
    assert outside == (os.path.join(user_site, "torch", "__init__.py") if site.ENABLE_USER_SITE else torch.__file__)
    # pip's BuildEnvironment runs in a driver process of its own: importing pip's internals imports the
    # standard library's distutils, which setuptools' distutils hack (loaded later, e.g. by torch.compile's
    # C++ builds in other tests) then refuses.
    driver = ("import json, os, subprocess, sys\n"
              "from pip._internal.build_env import BuildEnvironment\n"
              "from pip._internal.utils.temp_dir import global_tempdir_manager\n"
              "code, user_base = json.loads(sys.argv[1])\n"
              "with global_tempdir_manager(), BuildEnvironment():\n"
              # the second child gets os.environ as BuildEnvironment set it (its isolation variables) plus the user base
              "    runs = [subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)\n"
              "            for env in (None, {**os.environ, **user_base})]\n"
              "print(json.dumps([[r.returncode, r.stdout, r.stderr] for r in runs]))\n")
    driven = subprocess.run([sys.executable, "-c", driver, json.dumps([code, user_base])], cwd=tmp_path,
                            capture_output=True, text=True)
    assert driven.returncode == 0, driven.stderr
    (proc_rc, proc_out, proc_err), (user_rc, user_out, user_err) = json.loads(driven.stdout)
    assert proc_rc == 0, proc_err
    assert proc_out.split() == ["True", torch.__file__, "True", "True"]
    assert user_rc == 0, user_err
    assert user_out.split() == ["True", outside, "True", "True"]


def _in_venv(venv, *args, cwd, timeout=900):
    """The venv's python, seeing only the venv (not the PYTHONPATH of the tests, if any)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([os.path.join(venv, "bin", "python"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _pip(venv, *args, cwd, timeout=900):
    return _in_venv(venv, "-m", "pip", *args, cwd=cwd, timeout=timeout)


def _clean_checkout(dest):
    """The files git tracks, as a fresh clone has them (no build products, no _build_info)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for f in filter(None, files.split("\0")):
        os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(REPO, f), os.path.join(dest, f))


ONE_STEP = """
import sys, torch, cure_ext
assert 'cure_ext.train' not in sys.modules
torch.manual_seed(0)  # unseeded, ~3% of initialisations leave most hidden units dead: tied zero scores, all kept
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
before = model[1].weight.detach().clone()
cure = cure_ext.CURE(model, eps=0.1, step_size=0.05, steps=2, percentile=0.5)
out = cure.step(torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
assert out.finite and out.kept.tolist() == [64, 4, 24, 3], out.kept
assert not torch.equal(model[1].weight, before)
print(cure_ext.__file__)
"""


@pytest.mark.slow
def test_pip_install_dot_in_a_fresh_venv_with_only_torch(tmp_path):
    src, venv, elsewhere = tmp_path / "src", str(tmp_path / "venv"), tmp_path / "elsewhere"
    _clean_checkout(src)
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    proc = _pip(venv, "install", "-q", TORCH_PIN, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = time.time()
    proc = _pip(venv, "install", ".", cwd=src)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"pip install . took {time.time() - start:.0f} s")
    installed = _pip(venv, "list", "--format=freeze", cwd=elsewhere).stdout.splitlines()
    assert f"torch=={torch.__version__}" in installed  # untouched: no other torch came in
    assert "Collecting torch" not in proc.stdout and "torch-" not in proc.stdout
    run = _in_venv(venv, "-c", ONE_STEP, cwd=elsewhere)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().startswith(os.path.join(venv, "lib"))  # the installed copy, not the checkout


@pytest.mark.slow
def test_pip_install_dot_without_torch_stops_at_once_saying_to_install_it(tmp_path):
    src, venv = tmp_path / "src", str(tmp_path / "venv")
    _clean_checkout(src)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    start = time.time()
    proc = _pip(venv, "install", ".", cwd=src, timeout=300)
    assert proc.returncode != 0
    assert time.time() - start < 120  # no compilation, no torch download
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if NO_TORCH in ln]
    assert lines and lines[0].startswith("cure_ext builds against the PyTorch of the Python environment it is "
                                         f"installed into ({venv}), which has none")
    assert "torch" not in " ".join(_pip(venv, "list", "--format=freeze", cwd=tmp_path).stdout.split()).lower()

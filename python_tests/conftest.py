import os
import sys

import pytest
import torch

# The tests run against cure_ext as installed. `python -m pytest` puts the folder it starts in on sys.path;
# started in the checkout after a non-editable `pip install .`, the source folder cure_ext/ (no compiled _C)
# would shadow the installed package. So the checkout's root goes after the installed packages (an editable
# install maps cure_ext to the checkout anyway), where it still serves bench/, which is not installed. A
# PYTHONPATH naming the checkout is the user's choice and stays where it is.
ROOT = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}:
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != ROOT] + [ROOT]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request):
    return request.param

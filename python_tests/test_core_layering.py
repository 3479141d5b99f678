"""The core stands below the trainer (issue 21): `import cure_ext`, `cure_ext.CURE` and a CURE step load
nothing under `cure_ext.train`, checked in a fresh interpreter started outside the checkout."""
import json
import subprocess
import sys

import cure_ext

CHILD = """
import json, sys
import torch
from torch import nn
import cure_ext
cure = cure_ext.CURE(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), steps=2)
out = cure.step(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
print(json.dumps({"file": cure_ext.__file__, "finite": out.finite,
                  "modules": sorted(m for m in sys.modules if m.startswith("cure_ext"))}))
"""


def test_cure_and_its_step_load_nothing_of_the_trainer(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout.splitlines()[-1])
    assert child["file"] == cure_ext.__file__  # the package under test, not another copy
    assert child["finite"]
    trainer = [m for m in child["modules"] if m == "cure_ext.train" or m.startswith("cure_ext.train.")]
    assert trainer == [], trainer
    # What the step runs was loaded from the core itself.
    assert {"cure_ext.cure", "cure_ext.attacks", "cure_ext.losses", "cure_ext.ranks"} <= set(child["modules"])

"""What importing the package costs: the optimizers never import fairseq; registration with fairseq is explicit.

``fairseq_plugins`` registers its fairseq components only when fairseq imports it as a ``--user-dir`` (fairseq is
then already loaded), when ``fairseq_plugins.register()`` is called, or when the fairseq glue
(``fairseq_plugins.fairseq_optim``, ``fairseq_plugins.lr_scheduler``) is imported. Each test runs in a fresh Python:
what a process has imported is the point.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.fairseq_utils import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fairseq") is None, reason="needs fairseq installed")

NO_FAIRSEQ = """
def no_fairseq():
    loaded = sorted(m for m in sys.modules if m == "fairseq" or m.startswith(("fairseq.", "fairseq_cli")))
    assert not loaded, f"{len(loaded)} fairseq modules imported: {loaded[:5]} ..."
"""


def _run(code: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_the_optimizers_import_no_fairseq_and_register_is_explicit():
    out = _run(
        "import sys\n"
        + NO_FAIRSEQ
        + """
import fairseq_plugins.optim
no_fairseq()
import torch
from fairseq_plugins.optim import AdamSAGE
p = torch.nn.Parameter(torch.randn(4, 3))
opt = AdamSAGE([p], lr=0.1)
(p * p).sum().backward()
opt.step()
no_fairseq()
assert "fairseq_plugins.fairseq_optim" not in sys.modules and "fairseq_plugins.lr_scheduler" not in sys.modules

# without fairseq, register() says what is missing
sys.modules["fairseq"] = None
try:
    fairseq_plugins.register()
except ModuleNotFoundError as exc:
    assert "fairseq_plugins.register() needs fairseq" in str(exc), exc
else:
    raise AssertionError("register() without fairseq did not fail")
del sys.modules["fairseq"]

fairseq_plugins.register()
fairseq_plugins.register()  # idempotent
from fairseq.optim import OPTIMIZER_REGISTRY
from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
from fairseq.trainer import Trainer
assert {"adam_sage", "adamax_sage"} <= set(OPTIMIZER_REGISTRY)
assert {"sage_inverse_sqrt", "sage_linear", "sage_cosine"} <= set(LR_SCHEDULER_REGISTRY)
assert Trainer._build_optimizer._records_param_names
print("ok")
"""
    )
    assert out.splitlines()[-1] == "ok"


def test_user_dir_in_process_after_the_package_was_imported_without_fairseq():
    """fairseq skips a --user-dir package already in sys.modules; the patched fairseq calls its register hook."""
    out = _run(
        "import sys\n"
        + NO_FAIRSEQ
        + """
import fairseq_plugins.optim
no_fairseq()
from fairseq import options
from fairseq.optim import OPTIMIZER_REGISTRY
assert "adam_sage" not in OPTIMIZER_REGISTRY  # importing fairseq afterwards registers nothing by itself
argv = ["data", "--user-dir", "fairseq_plugins", "--arch", "transformer", "--optimizer", "adam_sage",
        "--sage-beta3", "0.8", "--lr-scheduler", "sage_cosine", "--sage-start-updates", "3"]
args = options.parse_args_and_arch(options.get_training_parser(), argv)
assert (args.optimizer, args.sage_beta3) == ("adam_sage", 0.8), args
assert (args.lr_scheduler, args.sage_start_updates) == ("sage_cosine", 3), args
print("ok")
"""
    )
    assert out.splitlines()[-1] == "ok"

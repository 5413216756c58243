"""Training with DataLoader worker processes leaves the process's SIGCHLD handling as it found it.

torch installs a SIGCHLD handler the first time a DataLoader starts workers and never removes it;
left in a long process (one pytest run, a notebook), later child processes' exits crashed it
(edgekd/training/workers.py, docs/development.md)."""

from __future__ import annotations

import signal
import subprocess
import sys

from torch.utils.data import Subset

from edgekd.models import create_model
from edgekd.training.losses import CrossEntropyObjective
from edgekd.training.loop import TrainPlan, fit

# a bare DataLoader with a worker, as torch leaves it: its handler stays after the loader is gone
BARE_LOADER = """
import signal, torch
from torch.utils.data import DataLoader, TensorDataset
for _ in DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=4, num_workers=1):
    pass
print(signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, None))
"""


def test_torch_leaves_its_sigchld_handler_behind_without_edgekd():
    done = subprocess.run([sys.executable, "-c", BARE_LOADER],
                          capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split()[-1] == "True"


def test_fit_with_worker_processes_gives_sigchld_back_and_children_still_run(fashion_slice):
    before = signal.getsignal(signal.SIGCHLD)
    model = create_model("edgekd_cnn", 10, (1, 28, 28), 0.25)
    data = Subset(fashion_slice.train, range(128))
    fit(model, CrossEntropyObjective(), data, TrainPlan(epochs=1, lr=0.05, weight_decay=0, batch_size=64, seed=0,
                                                        workers=1), label="workers")
    assert signal.getsignal(signal.SIGCHLD) is before
    from torch.utils.data._utils import signal_handling

    assert signal_handling._SIGCHLD_handler_set is False  # a later loader with workers installs it again
    for _ in range(3):  # child processes started and reaped after it, as the crashing test did
        assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, text=True).stdout == "1\n"

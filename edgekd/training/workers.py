"""DataLoader worker processes leave a SIGCHLD handler behind: put the process's own one back.

The first DataLoader with `num_workers > 0` installs torch's SIGCHLD handler in the main thread
(it checks for dead workers) and leaves it there for the rest of the process. A one-process pytest
run crashed (SIGSEGV sent by the kernel, `si_code` SI_KERNEL, the main thread entering `malloc`) at
the next test that started and reaped child processes. That was seen on the AMX Xeon and the Xeon
without BF16, and reproduced on an AMD EPYC with oneDNN capped at the latter's ISA
(`ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`). There, with SIGCHLD reset after each test, the same tests
ran without a crash (docs/development.md); the handler's part on the Xeons is inferred, not shown.
A notebook or service that calls edgekd's Python API and then starts subprocesses is the same
kind of process, so `fit` puts SIGCHLD back itself.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def sigchld_restored():
    """Run the body, then give SIGCHLD back the disposition it had before (main thread only;
    elsewhere Python cannot set handlers, and torch sets none). torch is told its handler is
    gone, so a later DataLoader with workers installs it again for its own lifetime."""
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGCHLD")
    before = signal.getsignal(signal.SIGCHLD) if main else None
    try:
        yield
    finally:
        if main and signal.getsignal(signal.SIGCHLD) is not before:
            signal.signal(signal.SIGCHLD, before if before is not None else signal.SIG_DFL)
            from torch.utils.data._utils import signal_handling

            signal_handling._SIGCHLD_handler_set = False

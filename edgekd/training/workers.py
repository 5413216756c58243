"""DataLoader worker processes leave a SIGCHLD handler behind: put the process's own one back.

The first DataLoader with `num_workers > 0` installs torch's SIGCHLD handler in the main thread
(it checks for dead workers) and leaves it there for the rest of the process. With it left
installed, a one-process pytest run crashed, SIGSEGV from the kernel (`si_code` SI_KERNEL, the
main thread at the first instruction of `malloc`), at the next test that started and reaped child
processes: on the AMX Xeon, the Xeon without BF16, and on an AMD EPYC with oneDNN capped at the
first one's ISA (`ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`). With the disposition restored after each
test, the same run passed (docs/development.md). A notebook or service that calls edgekd's
Python API, then starts subprocesses, is the same process; so `fit` restores it itself.
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

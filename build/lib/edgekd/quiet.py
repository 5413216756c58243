"""Keep third-party chatter (NNCF, torch.compile, ONNX export) off the user's terminal."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    for name in ("nncf", "torch.utils.cpp_extension", "torch._dynamo", "torch.utils._pytree", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

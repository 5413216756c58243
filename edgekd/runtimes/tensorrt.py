"""TensorRT: the only module that imports `tensorrt` or `pycuda` (the optional extra)."""

from __future__ import annotations


def tensorrt_available() -> tuple[bool, str]:
    """(True, "") where TensorRT and a CUDA GPU can be used, else (False, why not)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt package is not installed; pip install 'edgekd[tensorrt]' on the device"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            return False, "no CUDA GPU found"
    except Exception as err:  # ImportError, or a CUDA driver error
        return False, f"pycuda/CUDA unavailable ({type(err).__name__}: {err})"
    return True, ""

"""Runtimes that execute an exported model: ONNX Runtime (always) and TensorRT (optional).

`tensorrt` and `pycuda` are imported only inside `edgekd.runtimes.tensorrt`.
"""

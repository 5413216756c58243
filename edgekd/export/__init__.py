"""Deployable files written from a run's exported ONNX student, one module per format
(`ort_format`: ONNX Runtime's ORT format for ONNX Runtime Mobile)."""

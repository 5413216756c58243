"""Deployable files written from a run's exported ONNX student, one module per format or
runtime-specific rewrite (`ort_format`: ONNX Runtime's ORT format for ONNX Runtime Mobile;
`openvino_ir`: OpenVINO's IR; `ort_qdq`: quantizer placement that ONNX Runtime's CPU kernels fuse)."""

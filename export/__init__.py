"""Build-time tooling: ONNX export per bucket, FP8 calibration, engine builds. The runtime never imports this."""

"""Benchmarks: eager vs ONNX Runtime vs Triton, with percentiles."""

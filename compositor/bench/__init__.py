"""Benchmarks: eager vs ONNX Runtime vs Triton, with percentiles.

The package itself stays light (the command line imports it for ``--help``); the benchmark modules
import PyTorch, ONNX Runtime and Triton's client.
"""

MODES = ("eager", "onnxruntime", "triton")
"""What ``compositor bench`` compares: PyTorch eager, ONNX Runtime in-process, the Triton ensemble."""

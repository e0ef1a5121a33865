"""Export: torch -> ONNX FP32 -> FP16 ONNX -> TensorRT engines, each step checked."""

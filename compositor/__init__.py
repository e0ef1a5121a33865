"""Compositor: a serving pipeline for realistic portrait compositing.

MODNet matting -> blending U-Net -> harmonization U-Net (after Xing et al., ACM MM 2022), exported
to ONNX / FP16 TensorRT and chained in a Triton ensemble. See README.md.
"""

__version__ = "0.1.0"

"""Compositor: a serving pipeline for realistic portrait compositing.

MODNet matting -> blending U-Net -> harmonization U-Net (after Xing et al., ACM MM 2022), exported
to ONNX / FP16 TensorRT and chained in a Triton ensemble. See README.md.
"""

__version__ = "0.1.0"

import os as _os

# grpcio (1.80 onwards) runs fork handlers by default, and they crash a child forked while a
# channel is busy, before it can exec (grpc/grpc#43055; 6 in 200 launches here). The server launch
# forks (its preexec_fn asks for SIGTERM when the parent dies), and nothing in this package forks
# a process that goes on using gRPC, so the handlers are turned off unless the caller chose.
# It must be set before grpc is first imported, which every gRPC path does through this package.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

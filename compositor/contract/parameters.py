"""What the repository generator, the command line and the Python-backend models agree on.

Config parameter keys, the file names inside a model's version directory, the flavours and the
defaults (the weights' provenance parameter is in ``compositor.contract.provenance``). A light module (no imports): the Python-backend models import it inside Triton's stub,
and ``compositor repository --help`` reads the defaults, without loading the config generator
(``compositor.serving.configs``, which needs tritonclient and protobuf).
"""

FLAVORS = ("python", "onnxruntime", "tensorrt")
"""How the networks run; see ``compositor.serving.configs``."""

DEFAULT_MAX_QUEUE_DELAY_US = 1000
"""How long the dynamic batcher may hold a request to grow a batch. 1 ms is small next to one
network execution (tens of ms on CPU, a few ms on GPU) yet lets concurrent requests meet."""

DEFAULT_INTRA_OP_THREADS = 2
"""ONNX Runtime intra-op threads per network instance (``intra_op_thread_count``). The default
suits the 2-core development machine; set it to the cores available per instance elsewhere."""

RESOLUTION_PARAMETER = "resolution"
"""``preprocess`` config parameter holding the network resolution as ``--resolution`` spells it:
``"512"`` (aspect buckets with short side 512) or ``"256x384"`` (one fixed size, as every
repository before aspect buckets recorded it, e.g. ``"512x512"``)."""

BUCKETS_PARAMETER = "buckets"
"""``preprocess`` config parameter listing the buckets of the resolution (``"512x512,512x672,..."``,
height x width), for people and other clients; ``preprocess`` checks it against the resolution."""

INTRA_OP_THREADS_PARAMETER = "intra_op_thread_count"
"""Same key as Triton's ONNX Runtime backend uses, so both flavours are tuned the same way."""

VERSION = "1"
"""The one model version the generator writes (``<model>/1/``)."""

MODEL_FILE = {"python": "model.onnx", "onnxruntime": "model.onnx", "tensorrt": "model.plan"}
"""File name of a network inside ``<model>/1/`` per flavour (Triton's default model file names)."""

DEFAULT_TRT_ACCELERATOR_CACHE = "/var/cache/compositor/engines/onnxruntime-trt"
"""Where the ONNX Runtime flavour's TensorRT accelerator keeps its engines (one folder per network):
inside the GPU image's engine-cache volume, so a restarted or rescheduled pod reuses them instead of
building them again after the server reported ready."""

"""The ``tensorrt`` module of the GPU image: NVIDIA's ``tensorrt_bindings``, under the name code imports.

The ``tensorrt-cu12-bindings`` wheel holds only a ``tensorrt_bindings`` package; NVIDIA's front-end
package ``tensorrt-cu12`` is what provides ``tensorrt``, as a re-export of it, but for 10.5.0 it is
a source distribution that fetches wheels from NVIDIA's own index at install time (and would bring
a second copy of TensorRT's libraries). This module does what that front end does and nothing else:
``import tensorrt`` returns the bindings module itself, which loads the image's own
``libnvinfer.so.10`` (the library Triton's tensorrt backend deserialises the plans with).
Dockerfile.gpu copies it into the image's site-packages and fails the build unless
``import tensorrt, polygraphy.backend.trt`` works.
"""

import sys

import tensorrt_bindings

sys.modules[__name__] = tensorrt_bindings

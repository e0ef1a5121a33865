"""The Triton Python-backend models; the repository's ``<model>/1/model.py`` imports their class.

They run inside Triton's Python-backend stub, where ``triton_python_backend_utils`` exists; they are
not meant to be imported in a normal interpreter. ``compositor.serving.repository`` writes the imports.
They import only what they run (``compositor.imaging``, ``compositor.contract.spec``, ``compositor.onnx_runtime``,
``compositor.contract.stages`` and ``compositor.contract.parameters``), never the config generator
(``compositor.serving.configs``, which loads tritonclient and protobuf) nor PyTorch; a test checks it.
Errors: ``error_boundary`` (bad input INVALID_ARG, a bug INTERNAL with its traceback in the server log).
"""

"""Sources of the Triton Python-backend models, copied into the repository as ``<model>/1/model.py``.

They run inside Triton's Python-backend stub, where ``triton_python_backend_utils`` exists; they are
not meant to be imported in a normal interpreter. ``compositor.serving.repository`` copies them.
"""

"""The Triton Python-backend models; the repository's ``<model>/1/model.py`` imports their class.

They run inside Triton's Python-backend stub, where ``triton_python_backend_utils`` exists; they are
not meant to be imported in a normal interpreter. ``compositor.serving.repository`` writes the imports.
"""

"""Inputs and outputs of batch work: folders of images matched by name, and video files (PyAV)."""

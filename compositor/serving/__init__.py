"""Serving: Triton model-repository generation and the launcher for the Triton server binary."""

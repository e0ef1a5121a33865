"""Training of the blending and harmonization networks: data synthesis, readers, losses, loops, evaluation."""

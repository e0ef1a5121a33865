"""Client library for the Triton ensembles (gRPC and HTTP)."""

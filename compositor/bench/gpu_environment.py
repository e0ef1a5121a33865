"""What a GPU machine offers, recorded before a GPU benchmark: GPU, driver, CUDA, PyTorch, TensorRT,
and the facts and cache key ``compositor engines`` would use there (``engine_cache.query_gpu``).

    python -m compositor.bench.gpu_environment --out gpu-environment.json

Every probe is recorded, failures included (as the reason), so a machine without a driver, without
TensorRT or without a CUDA build of PyTorch still gives a complete record; the file is written
atomically and the exit status is 0 whenever it was written.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from compositor.atomic_files import write_json


def _probe(function) -> dict:
    try:
        return {"ok": True, **function()}
    except Exception as error:  # noqa: BLE001 - every failure is a fact to record, not a crash
        return {"ok": False, "reason": f"{type(error).__name__}: {error}"}


def _driver() -> dict:
    if shutil.which("nvidia-smi") is None:
        raise FileNotFoundError("nvidia-smi is not on PATH (no NVIDIA driver utilities here)")
    query = "name,driver_version,memory.total,compute_cap,mig.mode.current"
    text = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    return {"gpus": [dict(zip(query.split(","), (v.strip() for v in line.split(",")))) for line in text.strip().splitlines()]}


def _torch() -> dict:
    import torch

    record = {"version": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if record["cuda_available"]:
        record["device"] = torch.cuda.get_device_name(0)
        record["capability"] = list(torch.cuda.get_device_capability(0))
    return record


def _engine_cache_facts() -> dict:
    from compositor.export.engine_cache import engine_cache_key, query_gpu

    gpu = query_gpu()
    return {"name": gpu.name, "compute_capability": list(gpu.compute_capability), "multiprocessors": gpu.multiprocessors,
            "memory_bytes": gpu.memory_bytes, "slice": gpu.slice_label(),
            "key_without_tensorrt_and_recipe": engine_cache_key(gpu.name, gpu.compute_capability, "X", gpu.slice_label())}


def _tensorrt() -> dict:
    from compositor.export.tensorrt import import_tensorrt, loaded_library_version

    trt = import_tensorrt()
    return {"bindings": str(trt.__version__), "library": loaded_library_version(trt)}


def gpu_environment() -> dict:
    """The record: machine, driver (nvidia-smi), PyTorch, the engine cache's GPU facts, TensorRT."""
    return {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "driver": _probe(_driver),
        "torch": _probe(_torch),
        "engine_cache_gpu": _probe(_engine_cache_facts),
        "tensorrt": _probe(_tensorrt),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compositor.bench.gpu_environment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (atomically)")
    args = parser.parse_args(argv)
    record = gpu_environment()
    write_json(args.out, record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

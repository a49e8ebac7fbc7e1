"""What machine a benchmark ran on: CPU model and the flags that decide TensorFlow's speed, cores, versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def describe() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    versions = {}
    for name in ("tensorflow", "keras", "mlflow", "dask", "optuna"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "flags": [f for f in FLAGS if f in flags], "cores": cores, "versions": versions}


def line(info: dict | None = None) -> str:
    info = info or describe()
    flags = ", ".join(info["flags"]) or "none of " + "/".join(FLAGS)
    return f"{info['cpu']} ({info['cores']} cores; {flags}); TensorFlow {info['versions'].get('tensorflow', '?')}"

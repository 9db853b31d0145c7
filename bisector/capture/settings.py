"""What a trace header records about the process: versions, devices, determinism settings."""

from __future__ import annotations

import gc
import hashlib
import os
import platform
import random
import sys
import warnings
from typing import Any

import numpy as np
import torch

from bisector import torch_api

# Environment variables that change numerics or kernel choice.
_ENV_VARS = (
    "CUBLAS_WORKSPACE_CONFIG",
    "PYTHONHASHSEED",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_LAUNCH_BLOCKING",
    "NVIDIA_TF32_OVERRIDE",
    "TORCH_CUDNN_V8_API_DISABLED",
    "CUDA_VISIBLE_DEVICES",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
)


def versions() -> dict[str, Any]:
    """Versions of Python, torch, numpy and the CUDA/cuDNN stack, and the devices present."""
    from bisector import __version__

    info: dict[str, Any] = {
        "bisector": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def determinism() -> dict[str, Any]:
    """Every process-wide setting known to change numerics or make kernels nondeterministic."""
    cuda = torch.backends.cuda
    settings: dict[str, Any] = {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "sdpa_flash": cuda.flash_sdp_enabled(),
        "sdpa_mem_efficient": cuda.mem_efficient_sdp_enabled(),
        "sdpa_math": cuda.math_sdp_enabled(),
        "sdpa_cudnn": getattr(cuda, "cudnn_sdp_enabled", lambda: None)(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "env": {name: os.environ[name] for name in _ENV_VARS if name in os.environ},
    }
    return settings


def seeds() -> dict[str, Any]:
    """Digests of the RNG states (equal digests: the generators were seeded alike)."""
    return {
        "torch_initial_seed": torch.initial_seed(),
        "python_random": _digest(repr(random.getstate())),
        "numpy_random": _digest(repr(np.random.get_state(legacy=True))),
    }


def cuda_memory() -> dict[str, int] | None:
    """The current GPU's memory as this process used it: the most its allocator held at once
    and the device's total, in bytes (None without CUDA). Read from the allocator's counters:
    no device sync."""
    if not torch.cuda.is_initialized():
        return None
    device = torch.cuda.current_device()
    return {
        "peak_reserved": torch.cuda.max_memory_reserved(device),
        "total": torch.cuda.get_device_properties(device).total_memory,
    }


def notable_modules() -> list[str]:
    """Libraries the script used that change which interventions apply."""
    found = [name for name in ("transformers",) if name in sys.modules]
    if "torch._dynamo" not in sys.modules:  # nothing was compiled (and importing it takes 1.3 s)
        return found
    try:
        compiled = bool(sum(torch_api.dynamo_counters()["frames"].values()))
    except Exception:  # noqa: BLE001 - its counters moved
        compiled = False
    if not compiled:
        # Under a recording dispatch mode Dynamo compiles nothing, so look for what the script
        # asked to compile: a module wrapped by torch.compile.
        wrapper = torch_api.optimized_module_class()
        with warnings.catch_warnings():  # some objects warn when looked at (deprecations)
            warnings.simplefilter("ignore")
            compiled = any(isinstance(obj, wrapper) for obj in gc.get_objects())
    if compiled:
        found.append("torch.compile")
    return found


def distributed() -> dict[str, int]:
    """Rank, local rank and world size from the launcher's environment (0, 0, 1 alone)."""
    return {
        "rank": int(os.environ.get("RANK", "0")),
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }


def header(argv: list[str] | None) -> dict[str, Any]:
    """The trace header for this process."""
    from bisector.capture.fingerprint import SCHEME

    return {
        "fingerprint": SCHEME,
        "versions": versions(),
        "settings": determinism(),
        "seeds_at_start": seeds(),
        "argv": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        **distributed(),
    }


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

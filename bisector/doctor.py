"""``bisector doctor``: the determinism-relevant settings of this environment, and which known
nondeterministic ops a script runs (one run, a short survey of its ops, nothing compared).

The catalogue is what was measured (../shared/gpu-ground-truth.md, the CPU sources of the tests)
and what PyTorch documents for ``torch.use_deterministic_algorithms``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bisector.capture import settings


@dataclass(frozen=True)
class KnownOp:
    """An op known to give different results from run to run on some device."""

    ops: tuple[str, ...]
    device: str  # "cuda" or "cpu"
    why: str
    fix: str


# Ops that draw random numbers (the survey also takes any op torch tags as drawing).
_RANDOM = KnownOp(
    (
        "aten.native_dropout.default",
        "aten.bernoulli_.float",
        "aten.bernoulli.default",
        "aten.rand.default",
        "aten.randn.default",
        "aten.randint.low",
        "aten.randperm.default",
        "aten.normal_.default",
        "aten.uniform_.default",
    ),
    "any",
    "draws random numbers: equal only if the generator is seeded alike in both runs",
    "seed torch (and python, numpy) before the model and data are made",
)


CATALOGUE = (
    KnownOp(
        (
            "aten._scaled_dot_product_efficient_attention_backward.default",
            "aten._efficient_attention_backward.default",
            "aten._scaled_dot_product_flash_attention_backward.default",
            "aten._flash_attention_backward.default",
            "aten._scaled_dot_product_cudnn_attention_backward.default",
        ),
        "cuda",
        "fused SDPA backward accumulates dQ with atomics (measured: differs on an H200)",
        "math SDPA backend (`sdpa_kernel(SDPBackend.MATH)`), or deterministic algorithms",
    ),
    KnownOp(
        ("aten.index_add_.default", "aten.index_add.default"),
        "cuda",
        "float atomics (measured)",
        "torch.use_deterministic_algorithms(True) (a deterministic path exists)",
    ),
    KnownOp(
        ("aten.scatter_add_.default", "aten.scatter_add.default", "aten.scatter_reduce.two"),
        "cuda",
        "float atomics (measured for scatter_add_)",
        "torch.use_deterministic_algorithms(True)",
    ),
    KnownOp(
        ("aten.index_put_.default", "aten._index_put_impl_.default", "aten.index_put.default"),
        "cpu",
        "with accumulate=True on float tensors and several threads (also the backward of "
        "`table[idx]`): atomic adds (measured)",
        "torch.use_deterministic_algorithms(True), or one thread",
    ),
    KnownOp(
        ("aten.upsample_bilinear2d_backward.default", "aten.upsample_bicubic2d_backward.default"),
        "cuda",
        "backward of F.interpolate accumulates with atomics (measured)",
        "torch.use_deterministic_algorithms(True)",
    ),
    KnownOp(
        ("aten.grid_sampler_2d_backward.default", "aten.grid_sampler_3d_backward.default"),
        "cuda",
        "backward of F.grid_sample (measured); no deterministic implementation",
        "avoid, or compute it another way (deterministic mode raises)",
    ),
    KnownOp(
        ("aten.cumsum.default",),
        "cuda",
        "large scans (measured on 2^20 floats)",
        "torch.use_deterministic_algorithms(True)",
    ),
    KnownOp(
        ("aten.bincount.default", "aten.histc.default"),
        "cuda",
        "with weights (measured for bincount); no deterministic implementation",
        "compute on the CPU, or another way (deterministic mode raises)",
    ),
    KnownOp(
        ("aten._adaptive_avg_pool2d_backward.default", "aten._ctc_loss_backward.default"),
        "cuda",
        "no deterministic implementation (equal on the shapes measured)",
        "deterministic mode raises: it names the call",
    ),
    KnownOp(
        ("aten.embedding_dense_backward.default", "aten._embedding_bag_backward.default"),
        "cuda",
        "accumulates gradients of repeated indices (equal on the shapes measured)",
        "torch.use_deterministic_algorithms(True)",
    ),
    _RANDOM,
)


@dataclass
class Survey:
    """The ops a script ran (one run): per (op, device), how often and where first; and the
    determinism settings as the script left them."""

    ops: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


def environment() -> dict[str, Any]:
    """Versions, devices and every determinism-relevant setting of this process."""
    return {"versions": settings.versions(), "settings": settings.determinism()}


def advice(env: dict[str, Any], survey: Survey | None = None) -> list[str]:
    """What in these settings can make two runs differ. GPU settings (cuBLAS, cuDNN, fused
    attention) only where a GPU is present and, when a script was surveyed, it used one."""
    s = env["settings"]
    gpu = bool(env["versions"].get("gpus"))
    if survey is not None:
        gpu = gpu and any(op["device"] == "cuda" for op in survey.ops)
    found = []
    if not s["deterministic_algorithms"]:
        found.append(
            "deterministic algorithms are off: ops with a deterministic path still use atomics "
            "(torch.use_deterministic_algorithms(True))"
        )
    if gpu and "CUBLAS_WORKSPACE_CONFIG" not in s["env"]:
        found.append(
            "CUBLAS_WORKSPACE_CONFIG is not set: with deterministic algorithms, cuBLAS needs "
            ":4096:8 (or :16:8) set before CUDA starts"
        )
    if gpu and s["cudnn_benchmark"]:
        found.append("cudnn.benchmark is on: the convolution algorithm can change between runs")
    if gpu and not s["cudnn_deterministic"]:
        found.append("cudnn.deterministic is off (matters for convolutions on a GPU)")
    if gpu and (s["sdpa_flash"] or s["sdpa_mem_efficient"] or s["sdpa_cudnn"]):
        found.append(
            "fused SDPA backends are enabled: their backward is nondeterministic on a GPU "
            "(math backend: sdpa_kernel(SDPBackend.MATH))"
        )
    if s["num_threads"] > 1:
        found.append(
            f"{s['num_threads']} CPU threads: CPU ops with atomics (index_put_ accumulate) "
            "depend on scheduling, and a different thread count changes reductions"
        )
    if "PYTHONHASHSEED" not in s["env"]:
        found.append("PYTHONHASHSEED is not set: set iteration order differs between processes")
    from bisector import torch_api

    gone = torch_api.missing()
    if gone:
        found.append(
            f"this torch lacks internals bisector uses ({', '.join(gone)}): recording may fail; "
            "bisector is checked on torch 2.11 and 2.13"
        )
    return found


def match(survey: Survey) -> list[dict[str, Any]]:
    """The surveyed ops that the catalogue knows as nondeterministic on their device (random
    ops flagged ``random``: they are fine when seeded alike)."""
    hits = []
    for entry in survey.ops:
        if entry.get("random"):  # torch tags every op that draws (``.generator`` overloads too)
            hits.append({**entry, "why": _RANDOM.why, "fix": _RANDOM.fix, "random": True})
            continue
        for known in CATALOGUE:
            if entry["op"] not in known.ops:
                continue
            if known.device != "any" and known.device != entry["device"]:
                continue
            random = known.device == "any"
            hits.append({**entry, "why": known.why, "fix": known.fix, "random": random})
    return hits


def survey_path(workdir: Path) -> Path:
    return workdir / "survey.json"


def load_survey(path: Path) -> Survey:
    data = json.loads(path.read_text())
    return Survey(data["ops"], int(data.get("steps", 0)), data.get("settings", {}))


def write_survey(path: str | os.PathLike, ops: dict, steps: int) -> None:
    """Write what the survey mode of the child saw (see capture/survey.py)."""
    rows = [
        {"op": op, "device": device, "calls": calls, "location": location, "random": random}
        for (op, device), (calls, location, random) in sorted(ops.items())
    ]
    data = {"steps": steps, "settings": settings.determinism(), "ops": rows}
    Path(path).write_text(json.dumps(data, indent=1, default=str))

"""The catalogue of interventions: named, reversible changes applied to both runs of a pair.

Each intervention is one small class: its name, a one-line summary, when it applies (from the
sources found and the runs' traces), how it is applied inside the child process before the
script runs (and undone after), environment variables it needs before Python starts, and the
fix it stands for when it makes the runs identical. A registry filled by a decorator holds them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from bisector.report import Source

Undo = Callable[[], None]
_CATALOGUE: dict[str, type[Intervention]] = {}


@dataclass(frozen=True)
class Situation:
    """What the choice of interventions looks at.

    Attributes:
        sources: the sources found by the plain pair.
        ops: every op name recorded in run A.
        gpus: GPU names of the runs (empty on a CPU).
        settings: determinism settings at the end of run A.
        optimizers: class names of the optimizers that stepped.
        modules: notable modules the script imported (e.g. "transformers").
    """

    sources: list[Source]
    ops: frozenset[str] = frozenset()
    gpus: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)
    optimizers: frozenset[str] = frozenset()
    modules: frozenset[str] = frozenset()

    @property
    def kinds(self) -> set[str]:
        kinds = {s.kind for s in self.sources}
        if "unconfirmed" in kinds:  # a kernel whose replay was stable: what pins a choice
            kinds.add("kernel")  # made once per process tells the causes apart
        return kinds


def register(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator: add an intervention to the catalogue."""
    _CATALOGUE[cls.name] = cls
    return cls


def catalogue() -> list[Intervention]:
    """Every intervention, in the order they were registered."""
    return [cls() for cls in _CATALOGUE.values()]


def get(name: str) -> Intervention:
    """The intervention called ``name``; KeyError if there is none."""
    return _CATALOGUE[name]()


class Intervention:
    """Base class. Subclasses set the attributes and override ``applies`` and ``apply``."""

    name = ""
    summary = ""
    fix = ""
    env: dict[str, str] = {}

    def applies(self, situation: Situation) -> bool:
        return False

    def apply(self) -> Undo:
        """Change the process before the script runs; return a function that undoes it."""
        return lambda: None


def apply_interventions(names: list[str]) -> Undo:
    """Apply interventions by name in this process; returns one function undoing them all."""
    return _chain([get(name).apply() for name in names])


def _chain(undos: list[Undo]) -> Undo:
    """One undo for several changes, undoing them in reverse order."""

    def undo() -> None:
        for fn in reversed(undos):
            fn()

    return undo


def _patch(owner, attribute: str, value) -> Undo:
    original = getattr(owner, attribute)
    setattr(owner, attribute, value)
    return lambda: setattr(owner, attribute, original)


def _wrap_classmethod(owner, name: str, change_kwargs) -> Undo:
    """Make the classmethod ``owner.name`` pass ``change_kwargs(kwargs)`` instead of kwargs.

    The wrapper stays a classmethod, so a subclass calling it still gets itself as ``cls``;
    undoing puts the original descriptor back.
    """
    original = owner.__dict__[name]
    function = original.__func__

    @functools.wraps(function)
    def wrapper(cls, *args, **kwargs):
        return function(cls, *args, **change_kwargs(kwargs))

    setattr(owner, name, classmethod(wrapper))
    return lambda: setattr(owner, name, original)


def _attention(situation: Situation) -> bool:
    return any("attention" in op for op in situation.ops)


@register
class SdpaMath(Intervention):
    name = "sdpa-math"
    summary = "run scaled_dot_product_attention with the math backend only"
    fix = "use the math SDPA backend: `with torch.nn.attention.sdpa_kernel(SDPBackend.MATH):`"

    def applies(self, situation: Situation) -> bool:
        return _attention(situation)

    def apply(self) -> Undo:
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        original = F.scaled_dot_product_attention

        @functools.wraps(original)
        def math_only(*args, **kwargs):
            with sdpa_kernel(SDPBackend.MATH):
                return original(*args, **kwargs)

        return _patch(F, "scaled_dot_product_attention", math_only)


@register
class EagerAttention(Intervention):
    name = "eager-attention"
    summary = 'load transformers models with attn_implementation="eager"'
    fix = 'load the model with `attn_implementation="eager"`'

    def applies(self, situation: Situation) -> bool:
        return "transformers" in situation.modules and _attention(situation)

    def apply(self) -> Undo:
        try:
            import transformers
        except ImportError:
            return lambda: None

        def eager(kwargs: dict) -> dict:
            return {**kwargs, "attn_implementation": "eager"}

        # The Auto classes load through these two, so patching the base class covers them.
        owner = transformers.PreTrainedModel
        names = [n for n in ("from_pretrained", "_from_config") if n in owner.__dict__]
        return _chain([_wrap_classmethod(owner, name, eager) for name in names])


@register
class Deterministic(Intervention):
    name = "deterministic"
    summary = "torch.use_deterministic_algorithms(True), CUBLAS_WORKSPACE_CONFIG=:4096:8"
    fix = (
        "call `torch.use_deterministic_algorithms(True)` at the start (and set "
        "CUBLAS_WORKSPACE_CONFIG=:4096:8 before CUDA starts)"
    )
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

    def applies(self, situation: Situation) -> bool:
        return "kernel" in situation.kinds

    def apply(self) -> Undo:
        import torch

        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        return lambda: torch.use_deterministic_algorithms(before)


@register
class Cudnn(Intervention):
    name = "cudnn"
    summary = "cudnn.deterministic = True, cudnn.benchmark = False"
    fix = "set `torch.backends.cudnn.deterministic = True` and `cudnn.benchmark = False`"

    def applies(self, situation: Situation) -> bool:
        convolution = any("convolution" in op or "cudnn" in op for op in situation.ops)
        return bool(situation.gpus) and convolution and "kernel" in situation.kinds

    def apply(self) -> Undo:
        import torch

        cudnn = torch.backends.cudnn
        return _chain([_patch(cudnn, "deterministic", True), _patch(cudnn, "benchmark", False)])


@register
class NoTf32(Intervention):
    name = "no-tf32"
    summary = "no TF32 in matmuls and convolutions (full float32)"
    fix = (
        "disable TF32: `torch.backends.cuda.matmul.allow_tf32 = False` and cudnn.allow_tf32 = False"
    )

    def applies(self, situation: Situation) -> bool:
        s = situation.settings
        tf32 = s.get("matmul_allow_tf32") or s.get("float32_matmul_precision") not in (
            None,
            "highest",
        )
        return bool(situation.gpus) and bool(tf32) and "kernel" in situation.kinds

    def apply(self) -> Undo:
        import torch

        precision = torch.get_float32_matmul_precision()
        undos = [
            _patch(torch.backends.cuda.matmul, "allow_tf32", False),
            _patch(torch.backends.cudnn, "allow_tf32", False),
        ]
        torch.set_float32_matmul_precision("highest")
        return _chain([*undos, lambda: torch.set_float32_matmul_precision(precision)])


@register
class SingleThread(Intervention):
    name = "single-thread"
    summary = "one CPU thread (CPU kernels that add with atomics become ordered)"
    fix = "run the CPU part with one thread: `torch.set_num_threads(1)`"
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def applies(self, situation: Situation) -> bool:
        return not situation.gpus and "kernel" in situation.kinds

    def apply(self) -> Undo:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        return lambda: torch.set_num_threads(before)


@register
class AdamToSgd(Intervention):
    name = "adam-to-sgd"
    summary = "replace Adam/AdamW by SGD with the same parameters and learning rate"
    fix = ""  # never a fix worth suggesting: it changes the training itself

    def applies(self, situation: Situation) -> bool:
        return bool({"Adam", "AdamW"} & situation.optimizers) and bool(situation.sources)

    def apply(self) -> Undo:
        import torch

        def sgd(params, lr=1e-3, *args, **kwargs):
            return torch.optim.SGD(params, lr=lr)

        return _chain([_patch(torch.optim, name, sgd) for name in ("Adam", "AdamW")])


@register
class NoCompile(Intervention):
    name = "no-compile"
    summary = "torch.compile returns the model or function unchanged"
    fix = "run without `torch.compile`"

    def applies(self, situation: Situation) -> bool:
        return "torch.compile" in situation.modules and bool(situation.sources)

    def apply(self) -> Undo:
        import torch

        def identity(model=None, *args, **kwargs):
            if model is None:  # used as @torch.compile(...)
                return lambda fn: fn
            return model

        return _patch(torch, "compile", identity)


@register
class SeedEverything(Intervention):
    name = "seed-everything"
    summary = "seed Python, numpy, torch and CUDA (0) and PYTHONHASHSEED before the script"
    fix = (
        "seed every generator at the start: `random.seed(0)`, `numpy.random.seed(0)`, "
        "`torch.manual_seed(0)` (and set PYTHONHASHSEED)"
    )
    env = {"PYTHONHASHSEED": "0"}

    def applies(self, situation: Situation) -> bool:
        # structure: control flow that follows set or dict-of-str order (PYTHONHASHSEED)
        return bool({"rng", "input", "argument", "structure"} & situation.kinds)

    def apply(self) -> Undo:
        import random

        import numpy as np
        import torch

        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)  # seeds every CUDA device too
        return lambda: None


@register
class SerialDataloader(Intervention):
    name = "serial-dataloader"
    summary = "DataLoaders load in the main process (num_workers=0)"
    fix = "load data in the main process (`num_workers=0`) or seed each worker (`worker_init_fn`)"

    def applies(self, situation: Situation) -> bool:
        return "input" in situation.kinds

    def apply(self) -> Undo:
        from torch.utils.data import DataLoader

        original = DataLoader.__init__

        @functools.wraps(original)
        def serial(self, *args, **kwargs):
            # (dataset, batch_size, shuffle, sampler, batch_sampler, num_workers, ...)
            if len(args) > 5:
                args = (*args[:5], 0, *args[6:])
            else:
                kwargs["num_workers"] = 0
            kwargs.pop("prefetch_factor", None)
            kwargs["persistent_workers"] = False
            original(self, *args, **kwargs)

        return _patch(DataLoader, "__init__", serial)


def choose(situation: Situation, forced: tuple[str, ...] = ()) -> list[Intervention]:
    """The interventions worth a pair for these sources, plus those asked for by name."""
    chosen = [i for i in catalogue() if i.applies(situation)]
    names = {i.name for i in chosen}
    chosen += [get(name) for name in forced if name not in names]
    return chosen


def child_env(names: list[str]) -> dict[str, str]:
    """Environment variables the interventions need set before the child's Python starts."""
    env: dict[str, str] = {}
    for name in names:
        env.update(get(name).env)
    return {k: v for k, v in env.items() if k not in os.environ or os.environ[k] != v}

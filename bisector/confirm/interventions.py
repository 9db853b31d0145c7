"""The catalogue of interventions: named, reversible changes applied to both runs of a pair.

Each intervention is one small class: its name, a one-line summary, when it applies (from the
sources found and the runs' traces), how it is applied inside the child process before the
script runs (and undone after), environment variables it needs before Python starts, the fix
it stands for when it makes the runs identical, and how to tell from a run of the pair that the
change took effect (``check``). A registry filled by a decorator holds them.

Switches hold against the script: a script that sets ``cudnn.benchmark = True`` or calls
``torch.use_deterministic_algorithms(False)`` itself after the intervention keeps the
intervention's value, and the line that tried is noted (``child_notes``) for the report.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from bisector.report import Source
from bisector.schema import COMPILED_PREFIX
from bisector.words import source_line

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


@dataclass(frozen=True)
class RunFacts:
    """What one run of a pair shows about the intervention applied to it.

    Attributes:
        ops: every op name recorded.
        footer: the trace's footer (settings at the end, optimizers that stepped, processes).
        notes: what the child noted while the intervention was applied (``child_notes``).
    """

    ops: frozenset[str]
    footer: dict
    notes: dict


# What the interventions applied in this process noted (the child writes it for the parent):
# {"overrides": [{"what": ..., "line": ...}], "<intervention>": {...}}.
_NOTES: dict = {}


def child_notes() -> dict:
    """What the interventions applied in this process noted, as JSON-ready data."""
    return {key: list(value) if isinstance(value, list) else value for key, value in _NOTES.items()}


def _note_override(what: str) -> None:
    """The script tried to undo an intervention: remember what and from which line."""
    from bisector.trace import split_location

    locator = _locator()
    user, library, _ = locator.locate(3)
    line = split_location(locator.describe(user, library))[0]
    _NOTES.setdefault("overrides", []).append({"what": what, "line": line})


@functools.cache
def _locator():
    """One Locator for the overrides of this process (made on the first one)."""
    from bisector.capture.lines import Locator

    return Locator()


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


@dataclass(frozen=True)
class Place:
    """Where in the user's script a fix goes.

    Attributes:
        start: "train.py:12", the script's first statement after its imports: a process-wide
            switch goes just before it ("" if unknown).
        start_text: that statement's source line.
        source: the user's line of the first source ("" if unknown).
        source_kind: the first source's kind.
        cuda: whether CUDA ran in the runs (advice about CUDA settings only then).
        unseeded: generators that end the runs in different states ("Python's random",
            "numpy.random", "torch"); empty if none is known to.
        draws: the user's lines that drew from such a generator unseeded (``random.uniform``
            is not a torch op: the recorder notes its callers).
    """

    start: str = ""
    start_text: str = ""
    source: str = ""
    source_kind: str = ""
    cuda: bool = False
    unseeded: tuple[str, ...] = ()
    draws: tuple[str, ...] = ()

    def at_start(self) -> str:
        """ "at the start of the script, before train.py:12 (`parser = ...`)"."""
        if not self.start:
            return "at the start of the script"
        shown = f" (`{self.start_text}`)" if self.start_text else ""
        return f"at the start of the script, before {self.start}{shown}"

    def at_source(self) -> str:
        return f"at {self.source}" if self.source else "where the source op is called"


class Intervention:
    """Base class. Subclasses set the attributes and override ``applies`` and ``apply``.

    ``fix`` is the change it stands for; ``global_switch``: it is a process-wide setting, so
    the advice places it at the start of the script rather than at the source's line.
    """

    name = ""
    summary = ""
    fix = ""
    global_switch = False
    env: dict[str, str] = {}

    def advice(self, place: Place) -> str:
        """The fix as the user applies it: what to change, and where."""
        where = place.at_start() if self.global_switch else place.at_source()
        return f"{self.fix} {where}"

    def applies(self, situation: Situation) -> bool:
        return False

    def apply(self) -> Undo:
        """Change the process before the script runs; return a function that undoes it."""
        return lambda: None

    def check(self, run: RunFacts) -> str | None:
        """Why the change did not take effect in this run, or None if it did."""
        return None


def apply_interventions(names: list[str]) -> Undo:
    """Apply interventions by name in this process; returns one function undoing them all."""
    _NOTES.clear()
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


def _pin(owner, attribute: str, keeps: Callable[..., bool], what: str) -> Undo:
    """Make the setter ``owner.attribute`` ignore calls that would undo an intervention
    (``keeps(*args)`` false), noting the line that made them. ``what`` is formatted with
    the call's first argument."""
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def pinned(*args, **kwargs):
        if keeps(*args, **kwargs):
            return original(*args, **kwargs)
        _note_override(what.format(*args))
        return None

    return _patch(owner, attribute, pinned)


def _pin_flag(name: str, value: bool) -> Undo:
    """Hold ``torch.backends.cudnn.<name>`` at ``value``: set it, then ignore the script's
    assignments (``cudnn.<name> = ...`` and ``cudnn.flags(...)``) that would change it."""
    import torch

    from bisector import torch_api

    cudnn = torch.backends.cudnn
    prop = vars(type(cudnn))[name]  # a ContextProp: its setter is what assignment calls
    setter = f"_set_cudnn_{name}"
    undo_value = _patch(cudnn, name, value)
    what = f"torch.backends.cudnn.{name} = {{0}}"
    return _chain(
        [
            undo_value,
            _pin(prop, "setter", lambda v: bool(v) == value, what),
            _pin(torch_api.C, setter, lambda v: bool(v) == value, what),
        ]
    )


# Ops of fused attention kernels (SDPA's flash, memory-efficient and cuDNN backends).
_FUSED_ATTENTION = ("flash_attention", "efficient_attention", "cudnn_attention", "fused_attention")


def _fused_attention_ran(run: RunFacts) -> str | None:
    fused = sorted(op for op in run.ops if any(k in op for k in _FUSED_ATTENTION))
    return f"a fused attention kernel still ran ({fused[0]})" if fused else None


def _setting_is(run: RunFacts, key: str, wanted) -> str | None:
    value = (run.footer.get("settings_at_end") or {}).get(key)
    if value is None or value == wanted:
        return None
    return f"{key} was {value!r} at the end of the run"


def _truthy(value, *args, **kwargs) -> bool:
    return bool(value)


def _falsy(value, *args, **kwargs) -> bool:
    return not value


def _count(name: str, what: str) -> None:
    """Count one use of an intervention's change in this process (for ``check``)."""
    counts = _NOTES.setdefault(name, {})
    counts[what] = counts.get(what, 0) + 1


def _attention(situation: Situation) -> bool:
    return any("attention" in op for op in situation.ops)


@register
class SdpaMath(Intervention):
    name = "sdpa-math"
    summary = "run scaled_dot_product_attention with the math backend only"
    fix = "use the math SDPA backend: `with torch.nn.attention.sdpa_kernel(SDPBackend.MATH):`"

    def advice(self, place: Place) -> str:
        return (
            f"{place.at_source()}, run the attention call inside "
            "`with torch.nn.attention.sdpa_kernel(SDPBackend.MATH):` (the math backend)"
        )

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

    def check(self, run: RunFacts) -> str | None:
        return _fused_attention_ran(run)


@register
class EagerAttention(Intervention):
    name = "eager-attention"
    summary = 'transformers models use attn_implementation="eager" (however they are built)'
    fix = 'load the model with `attn_implementation="eager"`'

    def applies(self, situation: Situation) -> bool:
        return "transformers" in situation.modules and _attention(situation)

    def apply(self) -> Undo:
        try:
            import transformers
        except ImportError:
            return lambda: None
        owner = transformers.PreTrainedModel
        # Every way a model is made (Model(config), from_config, from_pretrained, and a later
        # set_attn_implementation) asks this check which implementation to use: transformers
        # 4.5x and 5.x. Older releases choose in the classmethod _autoset_attn_implementation.
        if "_check_and_adjust_attn_implementation" in owner.__dict__:
            original = owner._check_and_adjust_attn_implementation

            @functools.wraps(original)
            def eager(self, attn_implementation=None, *args, **kwargs):
                _count("eager-attention", "models")
                return original(self, "eager", *args, **kwargs)

            return _patch(owner, "_check_and_adjust_attn_implementation", eager)
        # The layers read config._attn_implementation when they are built; a config that went
        # through a model already is marked autoset and not asked again: set it on the way in.
        descriptor = owner.__dict__["_autoset_attn_implementation"]
        function = descriptor.__func__
        init = owner.__init__

        @functools.wraps(function)
        def autoset(cls, config, *args, **kwargs):
            config._attn_implementation_internal = "eager"
            config = function(cls, config, *args, **kwargs)
            config._attn_implementation_internal = "eager"
            return config

        @functools.wraps(init)
        def eager_init(self, config, *args, **kwargs):
            _count("eager-attention", "models")
            config._attn_implementation_internal = "eager"
            init(self, config, *args, **kwargs)

        owner._autoset_attn_implementation = classmethod(autoset)  # type: ignore[attr-defined]
        undo = _patch(owner, "__init__", eager_init)
        return _chain([lambda: setattr(owner, "_autoset_attn_implementation", descriptor), undo])

    def check(self, run: RunFacts) -> str | None:
        if not run.notes.get("eager-attention", {}).get("models"):
            return "no transformers model was built in the run"
        return _fused_attention_ran(run)


@register
class Deterministic(Intervention):
    name = "deterministic"
    summary = "torch.use_deterministic_algorithms(True), CUBLAS_WORKSPACE_CONFIG=:4096:8"
    fix = "call `torch.use_deterministic_algorithms(True)`"
    global_switch = True
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

    def advice(self, place: Place) -> str:
        text = f"{self.fix} {place.at_start()}"
        if place.cuda:  # cuBLAS needs a fixed workspace to be deterministic
            text += (
                "; and set `CUBLAS_WORKSPACE_CONFIG=:4096:8` in the environment before the "
                "process starts"
            )
        return text

    def applies(self, situation: Situation) -> bool:
        return "kernel" in situation.kinds

    def apply(self) -> Undo:
        import torch

        from bisector import torch_api

        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        what = "torch.use_deterministic_algorithms({0})"
        return _chain(
            [
                lambda: torch.use_deterministic_algorithms(before),
                _pin(torch, "use_deterministic_algorithms", _truthy, what),
                _pin(torch_api.C, "_set_deterministic_algorithms", _truthy, what),
            ]
        )

    def check(self, run: RunFacts) -> str | None:
        return _setting_is(run, "deterministic_algorithms", True)


@register
class Cudnn(Intervention):
    name = "cudnn"
    summary = "cudnn.deterministic = True, cudnn.benchmark = False (held against the script)"
    fix = (
        "set `torch.backends.cudnn.deterministic = True` and "
        "`torch.backends.cudnn.benchmark = False`"
    )
    global_switch = True

    def applies(self, situation: Situation) -> bool:
        convolution = any("convolution" in op or "cudnn" in op for op in situation.ops)
        return bool(situation.gpus) and convolution and "kernel" in situation.kinds

    def apply(self) -> Undo:
        return _chain([_pin_flag("deterministic", True), _pin_flag("benchmark", False)])

    def check(self, run: RunFacts) -> str | None:
        return _setting_is(run, "cudnn_deterministic", True) or _setting_is(
            run, "cudnn_benchmark", False
        )


@register
class NoTf32(Intervention):
    name = "no-tf32"
    summary = "no TF32 in matmuls and convolutions (full float32)"
    fix = (
        "disable TF32: `torch.backends.cuda.matmul.allow_tf32 = False` and "
        "`torch.backends.cudnn.allow_tf32 = False`"
    )
    global_switch = True

    def applies(self, situation: Situation) -> bool:
        s = situation.settings
        tf32 = s.get("matmul_allow_tf32") or s.get("float32_matmul_precision") not in (
            None,
            "highest",
        )
        return bool(situation.gpus) and bool(tf32) and "kernel" in situation.kinds

    def apply(self) -> Undo:
        import torch

        from bisector import torch_api

        precision = torch.get_float32_matmul_precision()
        undos = [
            _patch(torch.backends.cuda.matmul, "allow_tf32", False),
            lambda: torch.set_float32_matmul_precision(precision),
        ]
        torch.set_float32_matmul_precision("highest")
        highest = "torch.set_float32_matmul_precision({0!r})"
        return _chain(
            [
                *undos,
                _pin_flag("allow_tf32", False),
                _pin(torch_api.C, "_set_cublas_allow_tf32", _falsy, "matmul.allow_tf32 = {0}"),
                _pin(torch, "set_float32_matmul_precision", lambda p: p == "highest", highest),
                _pin(
                    torch_api.C, "_set_float32_matmul_precision", lambda p: p == "highest", highest
                ),
            ]
        )

    def check(self, run: RunFacts) -> str | None:
        return _setting_is(run, "matmul_allow_tf32", False) or _setting_is(
            run, "float32_matmul_precision", "highest"
        )


@register
class SingleThread(Intervention):
    name = "single-thread"
    summary = "one CPU thread (CPU kernels that add with atomics become ordered)"
    fix = "run the CPU part with one thread: call `torch.set_num_threads(1)`"
    global_switch = True
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def applies(self, situation: Situation) -> bool:
        return not situation.gpus and "kernel" in situation.kinds

    def apply(self) -> Undo:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        return _chain(
            [
                lambda: torch.set_num_threads(before),
                _pin(torch, "set_num_threads", lambda n: n == 1, "torch.set_num_threads({0})"),
            ]
        )

    def check(self, run: RunFacts) -> str | None:
        return _setting_is(run, "num_threads", 1)


# The Adam family: adaptive optimizers whose update normalises the gradient.
_ADAM_FAMILY = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax")
# Keys of an Adam parameter group that SGD would misread (weight_decay: Adam's is not L2).
_ADAM_KEYS = (
    "betas",
    "eps",
    "weight_decay",
    "amsgrad",
    "decoupled_weight_decay",
    "momentum_decay",
    "foreach",
    "fused",
    "capturable",
    "differentiable",
    "maximize",
)


@register
class AdamToSgd(Intervention):
    name = "adam-to-sgd"
    summary = "Adam-family optimizers (however built) become SGD with the same groups and lr"
    fix = ""  # never a fix worth suggesting: it changes the training itself

    def applies(self, situation: Situation) -> bool:
        return bool(set(_ADAM_FAMILY) & situation.optimizers) and bool(situation.sources)

    def apply(self) -> Undo:
        import torch

        def as_sgd(self, params, lr=1e-3, *args, **kwargs):
            # Whatever the call (positional or keyword params, param groups, fused/foreach,
            # a subclass, a framework's wrapper): the object becomes an SGD optimizer.
            _count("adam-to-sgd", type(self).__name__)
            groups = list(params)
            if groups and isinstance(groups[0], dict):
                groups = [{k: v for k, v in g.items() if k not in _ADAM_KEYS} for g in groups]
            self.__class__ = torch.optim.SGD
            torch.optim.SGD.__init__(self, groups, lr=lr)

        owners = [getattr(torch.optim, name) for name in _ADAM_FAMILY]
        return _chain([_patch(owner, "__init__", as_sgd) for owner in owners])

    def check(self, run: RunFacts) -> str | None:
        left = sorted(set(_ADAM_FAMILY) & set(run.footer.get("optimizers") or ()))
        return f"{', '.join(left)} still stepped" if left else None


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

    def check(self, run: RunFacts) -> str | None:

        compiled = sorted(op for op in run.ops if op.startswith(COMPILED_PREFIX))
        return f"compiled code still ran ({compiled[0]})" if compiled else None


# The call that seeds each generator ``Place.unseeded`` names.
_SEED_CALLS = {
    "Python's random": "`random.seed(0)`",
    "numpy.random": "`numpy.random.seed(0)`",
    "torch": "`torch.manual_seed(0)`",
}


def line_text(location: str) -> str:
    """The source text at "file.py:LINE", shortened for a line of advice ("" if unreadable)."""
    return source_line(location, limit=70)


@register
class SeedEverything(Intervention):
    name = "seed-everything"
    summary = "seed Python, numpy, torch and CUDA (0) and PYTHONHASHSEED before the script"
    fix = "seed every generator: `random.seed(0)`, `numpy.random.seed(0)`, `torch.manual_seed(0)`"
    global_switch = True
    env = {"PYTHONHASHSEED": "0"}

    def advice(self, place: Place) -> str:
        seeds = [_SEED_CALLS[name] for name in place.unseeded if name in _SEED_CALLS]
        if not seeds:  # which generator differs is not known: seed them all
            text = f"{self.fix} {place.at_start()}, and set `PYTHONHASHSEED=0` in the environment"
        else:
            names = " and ".join(place.unseeded)
            text = f"seed {names}: {', '.join(seeds)} {place.at_start()}"
        for draw in place.draws:
            shown = line_text(draw)
            text += f"; it is drawn from unseeded at {draw}" + (f" (`{shown}`)" if shown else "")
        if place.source_kind == "rng" and place.source:
            text += f"; or give the draw at {place.source} a seeded `torch.Generator`"
        return text

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

    def check(self, run: RunFacts) -> str | None:
        workers = [p for p in run.footer.get("processes") or () if p.get("dataloader_worker")]
        return f"{len(workers)} DataLoader worker processes still ran" if workers else None


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

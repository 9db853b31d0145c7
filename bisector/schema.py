"""The trace's vocabulary: what the names in an event and a footer mean.

The recorder (capture/) writes events whose ``op`` is an aten overload or one of the names
below; the analysis reads them. Both import this module, and neither imports the other: a name
that one side writes and the other matches is defined here once.
"""

from __future__ import annotations

# A value the step did not make (a parameter, a batch, a buffer): ``leaf.<kind>``, e.g.
# "leaf.parameter", "leaf.tensor".
LEAF_PREFIX = "leaf."
# A call into code compiled with torch.compile, recorded as one event ("compiled.<name>",
# "compiled.<name>.backward").
COMPILED_PREFIX = "compiled."
# A CUDA graph replay, recorded as one event that reads what its capture read.
REPLAY_OP = "cuda_graph.replay"
# The module rung (capture/module_calls.py): a module call, and its backward, as one event each.
MODULE_PREFIX = "module."
MODULE_FORWARD = "module.forward"
MODULE_BACKWARD = "module.backward"

# Results of these ops are uninitialised memory: fingerprinting them would report noise.
UNINITIALISED_OPS = frozenset(
    {
        "aten.empty.memory_format",
        "aten.empty_like.default",
        "aten.empty_strided.default",
        "aten.new_empty.default",
        "aten.new_empty_strided.default",
        "aten.empty_permuted.default",
        "aten.resize_.default",
        "aten.set_.source_Storage",
        "aten.set_.source_Storage_storage_offset",
    }
)

# Collectives are recorded as ops of these namespaces (torch.distributed's calls, DDP and FSDP
# through c10d; functional collectives); their waits and wrappers are not collectives.
_COLLECTIVE_NAMESPACES = ("c10d.", "_c10d_functional.")
_NOT_COLLECTIVES = ("_c10d_functional.wait_tensor.", "_c10d_functional._wrap_tensor_autograd.")


def leaf_op(kind: str) -> str:
    """The op name of a leaf event: "leaf.parameter" for ``kind`` "parameter"."""
    return LEAF_PREFIX + kind


def is_leaf(op: str) -> bool:
    return op.startswith(LEAF_PREFIX)


def is_collective(op: str) -> bool:
    """True for collective ops (all_reduce, broadcast, all_gather, ...), not their waits."""
    return op.startswith(_COLLECTIVE_NAMESPACES) and not op.startswith(_NOT_COLLECTIVES)


# ----- the footer's "processes": what other processes of the script did --------------------

# What a note says a process did.
OPS, BACKWARD, OPTIMIZER, MODEL = "ops", "backward", "optimizer", "model"


def unseen_training(processes: list[dict]) -> list[dict]:
    """The processes whose torch work can change what the script trains: not DataLoader
    workers, and either seen training (backward, an optimizer step, a module with parameters)
    or started with a method that hides what they do (spawn, forkserver)."""
    found = []
    for process in processes:
        if process.get("dataloader_worker"):
            continue
        did = set(process.get("did") or ())
        hidden = process.get("started") not in (None, "fork")
        if did & {BACKWARD, OPTIMIZER, MODEL} or hidden:
            found.append(process)
    return found


def describe(process: dict) -> str:
    """One process, in words: "pid 4242 (fork, train): backward, optimizer"."""
    how = ", ".join(str(x) for x in (process.get("started"), process.get("target")) if x)
    did = ", ".join(process.get("did") or ()) or (
        "unknown work" if process.get("started") not in (None, "fork") else "no torch op"
    )
    return f"pid {process['pid']}" + (f" ({how})" if how else "") + f": {did}"


# Past its ``steps``, a recorded run goes on until every optimizer the script holds has stepped
# while recording (a GAN's generator steps after its critic's: two critic steps alone left the
# generator's training unrecorded), for at most this many optimizer steps more.
MORE_STEPS_FOR_OPTIMIZERS = 16


def unstepped_optimizers(*footers: dict) -> list[str]:
    """The optimizers that never stepped in any of these runs (trace or digest footers'
    ``unstepped_optimizers``), each once, in order."""
    found: list[str] = []
    for footer in footers:
        found += [d for d in footer.get("unstepped_optimizers") or [] if d not in found]
    return found

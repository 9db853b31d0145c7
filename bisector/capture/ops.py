"""What we need to know about each aten operator, and how one call is described.

``OpInfo`` caches, per overload, what its schema says: which arguments it writes, which results
alias an input (views), whether it is random or returns uninitialised memory. ``canonical_args``
turns the non-tensor arguments of a call into a string that is equal in two processes exactly
when the arguments are (no addresses, no hash seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bisector.schema import UNINITIALISED_OPS, is_collective
from bisector.torch_api import arg_tree_leaves

# Arguments of c10d collectives that only receive results.
_OUTPUT_ARGUMENTS = frozenset({"output_tensor", "output_tensors", "output"})
# Results written only in part, the rest being left for a collective to fill.
_PARTLY_WRITTEN = {"fsdp.all_gather_copy_in.default": frozenset({1})}

# Names of results that hold random-generator state or a debug mask (fused attention kernels).
_RNG_STATE_RETURNS = {"philox_seed", "philox_offset", "rng_state", "unused", "debug_attn_mask"}

# Namespaces of ops that do bookkeeping, not computation.
_IGNORED_NAMESPACES = ("profiler.",)


@dataclass(frozen=True)
class OpInfo:
    """What the schema of one aten overload tells us.

    Attributes:
        name: "aten.index_put_.default".
        written: (position, name) of arguments the op writes (``Tensor(a!)``).
        fresh_returns: indices of results that are new tensors (not aliases of an input).
        is_view: every result aliases an input and nothing is written (view, t, detach...).
        random: the op may draw from a random generator (schema tag ``nondeterministic_seeded``).
        no_data: the results are uninitialised memory.
        ignored: bookkeeping, not computation (profiler ranges): not recorded.
        out_names: keyword arguments that only receive results (``out=``): not read.
        dropout: (position, name) of a ``dropout_p`` argument: with 0 the op draws nothing.
        rng_returns: indices of results that only carry random-generator state (attention's
            ``philox_seed``/``philox_offset``/``rng_state``) or a debug mask: with no dropout
            they are uninitialised memory that nobody reads.
        collective: a collective (all_reduce, broadcast, ...): its results are only complete
            once its work is waited for.
        unsafe_alias: an aten op whose results may be views of an input although its schema
            says they are new (``unsafe_split``, ``unsafe_chunk``, ``_unsafe_view``: the
            ``unsafe`` ops, which skip autograd's view tracking).
        write_only: positions of a collective's arguments that only receive its results
            (``output_tensor``, ``output_tensors``, ``output``): not read. (c10d's schemas
            mark no argument as written, so these come from their names.)
        partial_returns: results that the op writes only in part, the rest being memory left
            for a collective to fill (FSDP2's all-gather buffer): recorded as holding no data.
        reads_every_tensor: a call reads every tensor among its arguments (no ``out_names``,
            no ``write_only``).
    """

    name: str
    written: tuple[tuple[int, str], ...]
    fresh_returns: tuple[int, ...]
    n_returns: int
    is_view: bool
    random: bool
    no_data: bool
    ignored: bool = False
    out_names: frozenset[str] = frozenset()
    dropout: tuple[int, str] | None = None
    rng_returns: frozenset[int] = frozenset()
    collective: bool = False
    unsafe_alias: bool = False
    write_only: frozenset[int] = frozenset()
    partial_returns: frozenset[int] = frozenset()
    reads_every_tensor: bool = True

    def draws_random(self, args: tuple, kwargs: dict) -> bool:
        """True if this call draws random numbers (a tagged op, and not with dropout_p=0)."""
        return self.random and not self.without_dropout(args, kwargs)

    def without_dropout(self, args: tuple, kwargs: dict) -> bool:
        """True if the op has a dropout_p argument and this call passes 0."""
        if self.dropout is None:
            return False
        position, name = self.dropout
        value = args[position] if position < len(args) else kwargs.get(name, 0.0)
        return value == 0

    def reads(self, args: tuple, kwargs: dict, flat: list) -> list[torch.Tensor]:
        """The tensors a call reads (``flat``: its argument leaves): all but ``out=`` ones and
        a collective's output arguments, which are only written."""
        if not self.out_names and not self.write_only:
            return [a for a in flat if isinstance(a, torch.Tensor)]
        kept = {k: v for k, v in kwargs.items() if k not in self.out_names}
        read = [a for i, a in enumerate(args) if i not in self.write_only]
        return [a for a in arg_tree_leaves(*read, **kept) if isinstance(a, torch.Tensor)]

    def outputs_only(self, args: tuple) -> list[torch.Tensor]:
        """The tensors of a collective's output arguments."""
        chosen = [a for i, a in enumerate(args) if i in self.write_only]
        return [a for a in arg_tree_leaves(*chosen) if isinstance(a, torch.Tensor)]

    def writes(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """The tensor arguments a call writes in place (``Tensor(a!)``), in schema order."""
        written = []
        for position, name in self.written:
            value = args[position] if position < len(args) else kwargs.get(name)
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor):
                    written.append(t)
        return written

    def results(self, out: object) -> list[tuple[int, torch.Tensor]]:
        """(index of the return, tensor) of every fresh (non-aliasing) result of a call."""
        if not self.fresh_returns:
            return []
        returned: Any = out if self.n_returns > 1 else (out,)
        found = []
        for i in self.fresh_returns:
            value = returned[i]
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor):
                    found.append((i, t))
        return found

    @staticmethod
    def of(func: torch._ops.OpOverload) -> OpInfo:
        name = str(func)  # "aten.index_put_.default"; custom ops keep their namespace
        if name.startswith(_IGNORED_NAMESPACES):
            return OpInfo(name, (), (), 0, False, False, False, ignored=True)
        try:
            schema = func._schema
        except AttributeError:
            return OpInfo(name, (), (), 0, False, False, False)
        written = tuple(
            (i, arg.name)
            for i, arg in enumerate(schema.arguments)
            if arg.alias_info is not None and arg.alias_info.is_write
        )
        fresh = tuple(i for i, ret in enumerate(schema.returns) if ret.alias_info is None)
        is_view = not written and bool(schema.returns) and not fresh
        random = torch.Tag.nondeterministic_seeded in getattr(func, "tags", ())
        out_names = frozenset(arg.name for arg in schema.arguments if getattr(arg, "is_out", False))
        dropout = next(
            ((i, arg.name) for i, arg in enumerate(schema.arguments) if arg.name == "dropout_p"),
            None,
        )
        rng_returns = frozenset(
            i for i, ret in enumerate(schema.returns) if ret.name in _RNG_STATE_RETURNS
        )
        write_only = frozenset(
            i
            for i, arg in enumerate(schema.arguments)
            if is_collective(name) and arg.name in _OUTPUT_ARGUMENTS
        )
        return OpInfo(
            name,
            written,
            fresh,
            len(schema.returns),
            is_view,
            random,
            name in UNINITIALISED_OPS,
            out_names=out_names,
            dropout=dropout,
            rng_returns=rng_returns,
            collective=is_collective(name),
            write_only=write_only,
            partial_returns=_PARTLY_WRITTEN.get(name, frozenset()),
            reads_every_tensor=not out_names and not write_only,
            unsafe_alias=name.startswith("aten.")
            and "unsafe" in name.split(".")[1]
            and bool(fresh),
        )


# Argument types whose str() is stable across processes.
_PRINTABLE = (
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
    torch.SymInt,
    torch.SymFloat,
    torch.SymBool,
)


def complete_collective(name: str, out: object) -> None:
    """Wait for a collective's results, so that they can be fingerprinted.

    On GPUs (NCCL) the device is synchronised: the collective's kernel runs on NCCL's own
    stream, enqueued before the op returns. (Calling ``wait()`` on the c10d Work from inside
    the dispatch handler crashed the process with SIGSEGV for FSDP2's all-gather on torch 2.11
    with NCCL.) On the CPU (gloo) the Work is waited for: it blocks until the data has arrived.
    The caller's own wait later finds the work done. Called inside the dispatch handler, so
    these calls are not recorded.
    """
    items = _flat(out)
    devices = {t.device for t in items if isinstance(t, torch.Tensor) and t.device.type != "cpu"}
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    functional = name.startswith("_c10d_functional.")
    for item in items:
        if isinstance(item, torch.Tensor):
            if functional and item.device.type == "cpu":
                torch.ops._c10d_functional.wait_tensor(item)
        elif hasattr(item, "wait") and not devices:  # a c10d Work of a CPU collective
            item.wait()


def _flat(out: object) -> list:
    """The items of nested lists and tuples."""
    if not isinstance(out, (list, tuple)):
        return [out]
    return [item for part in out for item in _flat(part)]


def leaves(args: tuple, kwargs: dict) -> list:
    """The leaves of an aten call's arguments, in pytree's order (``args``, then ``kwargs``'
    values). An aten schema nests at most one level of lists (``Tensor[]``, ``int[]``): that is
    flattened here, several times faster than pytree, which takes anything deeper."""
    flat: list = []
    for value in (*args, *kwargs.values()) if kwargs else args:
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, (list, tuple, dict)):
                    return arg_tree_leaves(*args, **kwargs)
            flat.extend(value)
        elif isinstance(value, dict):
            return arg_tree_leaves(*args, **kwargs)
        else:
            flat.append(value)
    return flat


def args_key(flat: Sequence[object]) -> tuple | None:
    """A key equal for two calls only if their ``canonical_args`` are (a cache key: cheaper
    to make than the text), or None where there is none (a tensor without strides). It may
    hold an unhashable argument: hashing it then raises TypeError (the caller's dictionary
    lookup hashes it: a tuple does not keep its hash, so it is hashed once, there)."""
    key: list = []
    try:
        for value in flat:
            kind = type(value)
            if kind is torch.Tensor or kind is torch.nn.Parameter:
                t: Any = value
                key.append((t.dtype, t.shape, t.stride(), t.storage_offset()))
            elif kind is int:
                key.append(value)
            elif kind is float:
                key.append(repr(value))  # -0.0 and nan told apart as their text tells them
            else:
                key.append((kind, value))
    except RuntimeError:  # no strides (sparse)
        return None
    return tuple(key)


def canonical_args(flat: Sequence[object]) -> str:
    """The non-tensor arguments of a call (and tensor shapes and dtypes) as a stable string.

    Floats use ``repr`` (shortest exact form), so a learning rate that differs in its last bit
    gives a different string. Objects whose repr may hold an address (generators, streams) give
    only their type name. A tensor's view geometry is part of what a call reads: its strides
    (when not contiguous) and its storage offset (``@N``, when not 0), so that two calls reading
    different parts of one equal storage (``data[i]`` with another ``i``) never compare equal.
    """
    parts = []
    for value in flat:
        if isinstance(value, torch.Tensor):
            strided = value.layout == torch.strided
            text = f"T{str(value.dtype)[6:]}{list(value.shape)}"
            if strided and not value.is_contiguous():
                text += f"s{list(value.stride())}"
            if strided and value.storage_offset():
                text += f"@{value.storage_offset()}"
            parts.append(text)
        elif value is None or isinstance(value, (bool, int, float, complex, str)):
            parts.append(repr(value))
        elif isinstance(value, _PRINTABLE):
            parts.append(str(value))
        else:
            parts.append(type(value).__name__)
    return ", ".join(parts)

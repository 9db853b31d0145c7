"""The fingerprint of a large CUDA tensor in one fused Triton kernel (reads the tensor once).

It computes exactly the function of fingerprint.py (``wsum64-v1``): each program takes a tile of
words, multiplies them by their position weights (from the same weight table, which stays in L2)
and sums in wrapping int64; the float64 sum and the largest absolute value of the same tile come
from the same load. The per-tile partials are then reduced by three small torch ops; integer sums
are exact in any order, so the result is deterministic.

Only imported where Triton and a CUDA device are present; fingerprint.py falls back to pure
torch otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

# Elements per tile. Must divide fingerprint._BLOCK, so that a tile never spans two blocks.
_TILE = 2048
_WARPS = 8
# Programs per multiprocessor: each program loops over tiles, keeping running sums in registers,
# and adds them to the result row once, so atomics never pile up on one address.
_PROGRAMS_PER_SM = 4


# The ints are not specialised (a kernel per distinct value would be compiled otherwise); the
# launcher below keys its kernels by what Triton still specialises on.
@triton.jit(do_not_specialize=["row", "n", "tiles"])
def _fingerprint_into(
    words_ptr,
    values_ptr,
    weights_ptr,
    multipliers_ptr,
    fp_out,
    sum_out,
    max_out,
    row,
    n,
    tiles,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    lanes = tl.arange(0, TILE)
    fp_total = tl.sum(tl.zeros([TILE], dtype=tl.int64), axis=0)  # (an int64 zero)
    sum_acc = tl.zeros([TILE], dtype=tl.float64)
    max_acc = tl.zeros([TILE], dtype=tl.float32)
    for tile in range(tl.program_id(0), tiles, tl.num_programs(0)):
        start = tl.cast(tile, tl.int64) * TILE
        mask = lanes < n - start
        words = tl.load(words_ptr + start + lanes, mask=mask, other=0).to(tl.int64)
        weights = tl.load(weights_ptr + (start % BLOCK) + lanes, mask=mask, other=0)
        # A tile lies in one block: its sum takes the block's multiplier once (a 64-bit
        # multiply per element is what the kernel spent most of its time on).
        multiplier = tl.load(multipliers_ptr + start // BLOCK)
        fp_total += tl.sum(words * weights.to(tl.int64), axis=0) * multiplier
        # Same addresses as the words: served from cache, not read from memory again.
        values = tl.load(values_ptr + start + lanes, mask=mask, other=0)
        sum_acc += values.to(tl.float64)
        max_acc = tl.maximum(max_acc, tl.abs(values.to(tl.float32)))
    # Integer additions are exact in any order: the atomic sum is deterministic.
    tl.atomic_add(fp_out + row, fp_total)
    tl.atomic_add(sum_out + row, tl.sum(sum_acc, axis=0))
    tl.atomic_max(max_out + row, tl.max(max_acc, axis=0))


class _Multipliers:
    """Per-device table of block multipliers, grown on demand."""

    def __init__(self) -> None:
        self._by_device: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device, blocks: int) -> torch.Tensor:
        from bisector.capture.fingerprint import block_multiplier, to_device

        table = self._by_device.get(device)
        if table is None or table.numel() < blocks:
            size = max(blocks, 64, 2 * (table.numel() if table is not None else 0))
            values = torch.tensor([block_multiplier(b) for b in range(size)], dtype=torch.int64)
            table = to_device(values, device)
            self._by_device[device] = table
        return table


_MULTIPLIERS = _Multipliers()


def launch_in_place(
    tensor: torch.Tensor,
    weights: torch.Tensor,
    block: int,
    results: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    row: int,
    stream: int | None = None,
) -> bool:
    """``fingerprint_into`` for a contiguous CUDA tensor of a dtype seen before (see
    ``note_in_place``), read where it lies, by its address: no view op (each costs as much
    host time as the launch). False when it cannot (the caller calls ``fingerprint_into``)."""
    pair = _LAUNCHER.pairs.get(tensor.dtype)
    if pair is None or not tensor.is_contiguous():
        return False
    n = tensor.numel()
    return n == 0 or _LAUNCHER.launch_at(tensor, pair, n, weights, block, results, row, stream)


def note_in_place(dtype: torch.dtype, words: torch.dtype, values: torch.dtype) -> None:
    """Tensors of ``dtype`` are read in place as ``words`` and ``values`` (their own bits)."""
    _LAUNCHER.pairs[dtype] = (words, values)


def fingerprint_into(
    words: torch.Tensor,
    values: torch.Tensor,
    weights: torch.Tensor,
    block: int,
    results: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    row: int,
) -> None:
    """Add the fingerprint, float64 sum and abs-max of one flat CUDA tensor into row ``row`` of
    ``results`` (int64, float64 and float32 vectors, zeroed beforehand). One kernel launch.

    Args:
        words: the tensor's bits as a flat integer tensor.
        values: the same elements as numbers (one per word: complex tensors as real pairs).
        weights: the position weight table (``block`` entries) on the same device.
        block: fingerprint._BLOCK.
    """
    n = words.numel()
    if n == 0:
        return
    device = words.device
    multipliers = _MULTIPLIERS.get(device, -(-n // block))
    fps, sums, maxes = results
    tiles, programs = _grid(n, device)
    compiled = _fingerprint_into[(programs,)](
        words,
        values,
        weights,
        multipliers,
        fps,
        sums,
        maxes,
        row,
        n,
        tiles,
        BLOCK=block,
        TILE=_TILE,
        num_warps=_WARPS,
    )
    if compiled is not None and hasattr(compiled, "function"):
        key = _kernel_key(words.dtype, values.dtype, words.data_ptr(), n, device)
        _LAUNCHER.kernels.setdefault(key, compiled)


def _kernel_key(words: torch.dtype, values: torch.dtype, address: int, n: int, device) -> tuple:
    """What Triton specialises this kernel on (see ``_Launcher``)."""
    return (words, values, address % 16 == 0, n >= 1 << 31, device.index)


def _grid(n: int, device: torch.device) -> tuple[int, int]:
    """(tiles, programs) for ``n`` words: each program loops over tiles."""
    tiles = -(-n // _TILE)
    return tiles, min(tiles, _PROGRAMS_PER_SM * _multiprocessors(device))


class _Launcher:
    """Launches compiled fingerprint kernels directly, skipping Triton's per-call work.

    ``kernel[grid](...)`` binds and specialises every argument and hashes a cache key on each
    call: about 20-40 us of host time, more than the kernel takes for tensors below a few MB,
    paid once per recorded output. Triton specialises this kernel only on its pointers'
    dtypes and 16-byte alignment (the ints are not specialised; an int past 2**31 is typed
    int64), so the first call of each such key goes through Triton, which compiles and returns
    the kernel, and later calls launch that kernel at once, with the tensors' addresses as
    ints. If this Triton's kernels cannot be launched that way, every call goes through Triton.

    Attributes:
        kernels: (word dtype, value dtype, aligned, int64 size, device) -> compiled kernel.
        pairs: a tensor dtype -> (word dtype, value dtype) of its elements read in place.
        direct: False once a direct launch failed (every call goes through Triton then).
    """

    def __init__(self) -> None:
        self.kernels: dict[tuple, Any] = {}
        self.pairs: dict[torch.dtype, tuple[torch.dtype, torch.dtype]] = {}
        self.direct = True

    def launch_at(
        self,
        tensor: torch.Tensor,
        pair: tuple[torch.dtype, torch.dtype],
        n: int,
        weights: torch.Tensor,
        block: int,
        results: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        row: int,
        stream: int | None,
    ) -> bool:
        """Launch the kernel for a contiguous tensor by its address; False where no compiled
        kernel fits it yet (or direct launches do not work): the caller goes through Triton."""
        address = tensor.data_ptr()
        device = tensor.device
        kernel = self.kernels.get(_kernel_key(*pair, address, n, device))
        if kernel is None or not self.direct:
            return False
        tiles, programs = _grid(n, device)
        multipliers = _MULTIPLIERS.get(device, -(-n // block))
        fps, sums, maxes = results
        args = (
            address,
            address,
            weights.data_ptr(),
            multipliers.data_ptr(),
            fps.data_ptr(),
            sums.data_ptr(),
            maxes.data_ptr(),
            row,
            n,
            tiles,
            block,
            _TILE,
        )
        if stream is None:
            stream = torch.cuda.current_stream(device).cuda_stream
        try:
            kernel.run(
                programs,
                1,
                1,
                stream,
                kernel.function,
                kernel.packed_metadata,
                None,
                None,
                None,
                *args,
            )
        except (TypeError, AttributeError):  # a Triton whose launchers take other arguments
            self.direct = False
            return False
        return True


_LAUNCHER = _Launcher()


_SM_COUNT: dict[torch.device, int] = {}


def _multiprocessors(device: torch.device) -> int:
    count = _SM_COUNT.get(device)
    if count is None:
        count = _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return count

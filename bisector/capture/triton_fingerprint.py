"""The fingerprint of a large CUDA tensor in one fused Triton kernel (reads the tensor once).

It computes exactly the function of fingerprint.py (``wsum64-v2``): each program reads a run of
tiles of words within one block, multiplies them by their position weights (from the same weight
table, which stays in L2) and sums in wrapping int64 registers; the float64 sum and the largest
absolute value come from the same load (the words' bits read as numbers). Each program adds its
partials into the result row atomically; integer sums are exact in any order, so the
fingerprint is deterministic.

Only imported where Triton and a CUDA device are present; fingerprint.py falls back to pure
torch otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

# Elements per tile: a program adds up whole tiles in registers (one element per lane, eight
# lanes per thread: 4 warps x 32 threads x 8), and reduces them across its threads once, at the end.
_TILE = 1024
_WARPS = 4
# Programs per multiprocessor to aim for: enough to keep loads in flight, few enough that their
# atomic additions into one result row stay cheap. Each program reads a run of consecutive tiles.
_PROGRAMS_PER_SM = 4


# The ints are not specialised (a kernel per distinct value would be compiled otherwise); the
# launcher below keys its kernels by what Triton still specialises on.
@triton.jit(do_not_specialize=["row", "n", "span"])
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
    span,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    # Program p reads tiles p * span ... p * span + span - 1. ``span`` divides BLOCK // TILE, so
    # they lie in one block: one block multiplier, and position weights without wrapping.
    lanes = tl.arange(0, TILE)
    first = tl.cast(tl.program_id(0), tl.int64) * span * TILE
    in_block = first % BLOCK
    multiplier = tl.load(multipliers_ptr + first // BLOCK)
    fp_acc = tl.zeros([TILE], dtype=tl.int64)
    sum_acc = tl.zeros([TILE], dtype=tl.float64)
    max_acc = tl.zeros([TILE], dtype=tl.float32)
    for t in range(0, span):
        # Whole tiles load without a mask, so that the loads are vectorised (a mask against an
        # unspecialised ``n`` made them one element per instruction: 3x slower for bf16).
        start = tl.multiple_of(first + t * TILE, TILE)
        if start + TILE <= n:
            words = tl.load(words_ptr + start + lanes)
        else:
            words = tl.load(words_ptr + start + lanes, mask=lanes < n - start, other=0)
        weights = tl.load(weights_ptr + tl.multiple_of(in_block + t * TILE, TILE) + lanes)
        fp_acc += words.to(tl.int64) * weights.to(tl.int64)  # wrapping int64
        # The same bits as numbers: words and values have one size (``values_ptr`` gives the type).
        values = words.to(values_ptr.dtype.element_ty, bitcast=True)
        sum_acc += values.to(tl.float64)
        max_acc = tl.maximum(max_acc, tl.abs(values.to(tl.float32)))
    # Integer additions are exact in any order: the atomic sum is deterministic.
    tl.atomic_add(fp_out + row, tl.sum(fp_acc, axis=0) * multiplier, sem="relaxed")
    tl.atomic_add(sum_out + row, tl.sum(sum_acc, axis=0), sem="relaxed")
    tl.atomic_max(max_out + row, tl.max(max_acc, axis=0), sem="relaxed")


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
    span, programs = _grid(n, device, block)
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
        span,
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


def _grid(n: int, device: torch.device, block: int) -> tuple[int, int]:
    """(span, programs) for ``n`` words: each program reads ``span`` consecutive tiles, a power
    of two that divides the tiles of a block, the least that keeps the programs near the target."""
    tiles = -(-n // _TILE)
    target = _PROGRAMS_PER_SM * _multiprocessors(device)
    span = 1
    while tiles > span * target and span * _TILE < block:
        span *= 2
    return span, -(-tiles // span)


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
        span, programs = _grid(n, device, block)
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
            span,
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

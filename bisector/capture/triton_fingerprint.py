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

import torch
import triton
import triton.language as tl

# Elements per program. Must divide fingerprint._BLOCK, so that a tile never spans two blocks.
_TILE = 4096


@triton.jit
def _fingerprint_tiles(
    words_ptr,
    values_ptr,
    weights_ptr,
    multipliers_ptr,
    fp_out,
    sum_out,
    max_out,
    n,
    BLOCK: tl.constexpr,
    TILE: tl.constexpr,
):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * TILE
    offsets = start + tl.arange(0, TILE)
    mask = offsets < n
    words = tl.load(words_ptr + offsets, mask=mask, other=0).to(tl.int64)
    weights = tl.load(weights_ptr + (offsets % BLOCK), mask=mask, other=0)
    multiplier = tl.load(multipliers_ptr + start // BLOCK)
    tl.store(fp_out + pid, tl.sum(words * weights, axis=0) * multiplier)
    # Same addresses as the words: served from cache, not read from memory again.
    values = tl.load(values_ptr + offsets, mask=mask, other=0).to(tl.float64)
    tl.store(sum_out + pid, tl.sum(values, axis=0))
    tl.store(max_out + pid, tl.max(tl.abs(values), axis=0))


class _Multipliers:
    """Per-device table of block multipliers (1 for block 0), grown on demand."""

    def __init__(self) -> None:
        self._by_device: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device, blocks: int) -> torch.Tensor:
        from bisector.capture.fingerprint import block_multiplier

        table = self._by_device.get(device)
        if table is None or table.numel() < blocks:
            size = max(blocks, 64, 2 * (table.numel() if table is not None else 0))
            values = [1] + [block_multiplier(b) for b in range(1, size)]
            table = (
                torch.tensor(values, dtype=torch.int64).pin_memory().to(device, non_blocking=True)
            )
            self._by_device[device] = table
        return table


_MULTIPLIERS = _Multipliers()


def fingerprint_and_stats(
    words: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fingerprint int64, float64 sum, float64 abs-max) of one flat CUDA tensor, as 0-dim tensors.

    Args:
        words: the tensor's bits as a flat integer tensor.
        values: the same elements as numbers (one per word: complex tensors as real pairs).
        weights: the position weight table (int64, ``block`` entries) on the same device.
        block: fingerprint._BLOCK.
    """
    n = words.numel()
    tiles = triton.cdiv(n, _TILE)
    device = words.device
    fps = torch.empty(tiles, dtype=torch.int64, device=device)
    sums = torch.empty(tiles, dtype=torch.float64, device=device)
    maxes = torch.empty(tiles, dtype=torch.float64, device=device)
    multipliers = _MULTIPLIERS.get(device, triton.cdiv(n, block))
    _fingerprint_tiles[(tiles,)](
        words, values, weights, multipliers, fps, sums, maxes, n, BLOCK=block, TILE=_TILE
    )
    return fps.sum(), sums.sum(), maxes.max()

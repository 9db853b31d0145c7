"""Fingerprints: bitwise, order-sensitive, deterministic, for every dtype we meet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bisector.capture import fingerprint as fp


def _reference(tensor: torch.Tensor) -> int:
    """The fingerprint's definition, computed independently with numpy uint64 arithmetic."""
    words = fp.word_view(tensor)
    values = words.to(torch.int64).numpy().astype(np.uint64)
    total = 0
    for block, start in enumerate(range(0, len(values), fp._BLOCK)):
        chunk = values[start : start + fp._BLOCK]
        weights = fp._weights(len(chunk)).astype(np.uint64)
        with np.errstate(over="ignore"):
            partial = int((chunk * weights).sum(dtype=np.uint64))
        if block:
            partial = partial * (fp.block_multiplier(block) & fp._MASK64)
        total = (total + partial) & fp._MASK64
    return total


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
    ],
)
def test_equal_tensors_equal_prints_and_one_bit_flip_changes_it(dtype):
    base = (torch.randn(257) * 10).to(dtype) if dtype != torch.bool else torch.randn(257) > 0
    assert fp.fingerprint(base) == fp.fingerprint(base.clone())
    flipped = base.clone()
    words = fp.word_view(flipped)
    words[100] ^= 1  # one bit of one element
    assert fp.fingerprint(flipped) != fp.fingerprint(base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bfloat16])
def test_swapping_two_elements_changes_it(dtype):
    base = torch.arange(1000).to(dtype)
    swapped = base.clone()
    swapped[[3, 700]] = swapped[[700, 3]]
    assert torch.equal(base.sort().values, swapped.sort().values)
    assert fp.fingerprint(base) != fp.fingerprint(swapped)


def test_matches_the_definition_across_blocks():
    tensor = torch.randn(fp._BLOCK * 2 + 123)
    assert fp.fingerprint(tensor) == _reference(tensor)
    small = torch.randn(5, 7)
    assert fp.fingerprint(small) == _reference(small)


def test_swap_across_blocks_is_seen():
    tensor = torch.randn(fp._BLOCK + 10)
    swapped = tensor.clone()
    swapped[[5, fp._BLOCK + 5]] = swapped[[fp._BLOCK + 5, 5]]
    assert fp.fingerprint(tensor) != fp.fingerprint(swapped)


def test_depends_on_values_in_logical_order_not_memory_layout():
    a = torch.randn(64, 32)
    transposed_copy = a.t().contiguous()
    assert fp.fingerprint(a.t()) == fp.fingerprint(transposed_copy)


def test_signed_zero_and_nan_payloads_are_bits():
    assert fp.fingerprint(torch.tensor([0.0])) != fp.fingerprint(torch.tensor([-0.0]))
    nan = torch.tensor([float("nan")])
    assert fp.fingerprint(nan) == fp.fingerprint(nan.clone())


def test_empty_and_scalar_tensors():
    assert fp.fingerprint(torch.zeros(0)) == 0
    assert fp.fingerprint(torch.tensor(1.5)) == fp.fingerprint(torch.tensor([1.5]))


def test_unhashable_tensors_give_none():
    sparse = torch.eye(3).to_sparse()
    assert fp.fingerprint(sparse) is None


def test_a_sparse_tensor_is_fingerprinted_by_its_values_and_indices():
    """A sparse COO tensor (an embedding's sparse gradient) is compared by its values and its
    indices: moving one value to another row changes the fingerprint, as does changing it; the
    stats are its values'."""

    def sparse(rows, values):
        return torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(values), (5, 2))

    tensors = [
        sparse([0, 3], [[1.0, -4.0], [2.0, 0.5]]),
        sparse([0, 3], [[1.0, -4.0], [2.0, 0.5]]),  # the same
        sparse([0, 2], [[1.0, -4.0], [2.0, 0.5]]),  # a value in another row
        sparse([0, 3], [[1.0, -4.0], [2.0, 0.25]]),  # another value
    ]
    assert all(fp.sparse_hashable(t) and not fp.hashable(t) for t in tensors)
    assert not fp.sparse_hashable(torch.eye(3).to_sparse_csr()) and not fp.sparse_hashable(
        torch.zeros(2)
    )
    collector = fp.Collector()
    for t in tensors:
        collector.add_sparse(t)
    fps, sums, maxes = collector.drain()
    assert fps[0] == fps[1] and len(set(fps[1:].tolist())) == 3
    assert sums.tolist() == [-0.5, -0.5, -0.5, -0.75] and maxes.tolist() == [4.0] * 4


def test_collector_reads_back_in_order_with_stats():
    collector = fp.Collector()
    tensors = [torch.tensor([1.0, -3.0]), torch.arange(4), torch.tensor([2.5])]
    for t in tensors:
        collector.add(t)
    collector.add_blank()
    fps, sums, maxes = collector.drain()
    assert [int(v) & fp._MASK64 for v in fps[:3]] == [fp.fingerprint(t) for t in tensors]
    assert sums.tolist() == [-2.0, 6.0, 2.5, 0.0]
    assert maxes.tolist() == [3.0, 3.0, 2.5, 0.0]
    assert len(collector) == 0


def test_does_not_touch_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fp.fingerprint(torch.linspace(0, 1, 1000))
    assert torch.equal(torch.rand(3), expected)


def test_batched_small_tensors_match_single_fingerprints():
    """Small outputs are fingerprinted in batches; the function must be the same."""
    tensors = [
        torch.randn(3, 5),
        torch.randn(0),
        torch.tensor(2.5),
        torch.randn(fp.SMALL + 7),  # large: fingerprinted directly
        (torch.randn(17) * 100).to(torch.int32),
        torch.randn(6, 4).t(),  # non-contiguous
        torch.randn(9, dtype=torch.complex64),
        torch.randn(33) > 0,
        torch.randn(fp.SMALL).to(torch.bfloat16),
        torch.randn(12, dtype=torch.float64),
        torch.randint(-128, 127, (40,), dtype=torch.int8),
        torch.randint(0, 255, (41,), dtype=torch.uint8),
        torch.randn(50).half(),
        torch.tensor([2**62, -(2**63), 7], dtype=torch.int64),  # products wrap mod 2**64
        torch.randn(5, requires_grad=True),
        torch.randn(0, 3),
        torch.randn(fp._BLOCK * 2 + 5),  # large, several blocks (numpy on the CPU)
        torch.randn(fp.SMALL + 3).to(torch.bfloat16),
        torch.randint(-(2**31), 2**31 - 1, (fp.SMALL + 9,), dtype=torch.int32),
        torch.randn(300, 300).t(),  # large, non-contiguous
        torch.randn(fp.SMALL + 1, dtype=torch.complex64),  # large, through torch
    ]
    collector = fp.Collector()
    for t in tensors:
        collector.add(t)
    fps, sums, maxes = collector.drain()
    for i, t in enumerate(tensors):
        assert int(fps[i]) & fp._MASK64 == fp.fingerprint(t), i
        total, largest = fp.magnitude(t.detach())
        assert sums[i] == pytest.approx(float(total), rel=1e-12, abs=1e-12), i
        assert maxes[i] == pytest.approx(float(largest), rel=1e-6), i


def test_staged_copies_do_not_see_later_in_place_changes():
    collector = fp.Collector()
    t = torch.ones(8)
    expected = fp.fingerprint(t)
    collector.add(t)
    t.add_(1)  # the script goes on and overwrites the output before the batch is computed
    fps, _, _ = collector.drain()
    assert int(fps[0]) & fp._MASK64 == expected


def test_truncate_forgets_staged_and_direct_entries():
    collector = fp.Collector()
    for t in (torch.ones(3), torch.randn(fp.SMALL + 1), torch.zeros(2)):
        collector.add(t)
    collector.truncate(2)
    fps, _, _ = collector.drain()
    assert len(fps) == 2


def test_weights_are_odd_distinct_and_below_2_pow_31():
    weights = fp._weights(fp._BLOCK).astype(np.int64)
    assert (weights % 2 == 1).all()
    assert (weights > 0).all() and (weights < 2**31).all()
    assert len(np.unique(weights)) == fp._BLOCK


def test_block_multipliers_are_odd():
    assert fp.block_multiplier(0) == 1
    assert all(fp.block_multiplier(b) % 2 for b in range(1, 50))


def test_fused_kernel_logic_in_the_triton_interpreter(tmp_path):
    """The Triton kernel, run by Triton's CPU interpreter, computes the same function."""
    pytest.importorskip("triton")
    import subprocess
    import sys

    code = """
import torch, triton
import triton.language as tl
from bisector.capture import fingerprint as fp
from bisector.capture import triton_fingerprint as tfp

@triton.jit
def probe(x, n):
    for i in range(0, n):
        tl.store(x + i, i)

try:  # (Triton 3.6's interpreter cannot: a TypeError from its tensors' __index__)
    probe[(1,)](torch.zeros(4, dtype=torch.int32), 4)
except Exception as exc:
    if "TypeError" not in repr(exc):
        raise
    print("unsupported: this Triton's interpreter cannot loop to a bound given at run time")
    raise SystemExit(0)
for t in [torch.randn(fp.SMALL + 1), torch.randn(fp._BLOCK * 2 + 17),
          (torch.randn(1 << 16) * 1000).to(torch.int64), torch.randn(70000) > 0,
          torch.randn(1 << 17).to(torch.bfloat16), torch.randn(5000, dtype=torch.complex64)]:
    words, values = fp.word_view(t), fp._values(t)
    res = (torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.float64),
           torch.zeros(1, dtype=torch.float32))
    n = words.numel()
    mult = torch.tensor([fp.block_multiplier(b) for b in range(8)], dtype=torch.int64)
    total, largest = fp.magnitude(t)
    # spans of one tile, of several (a partial tile last), and of a whole block; a tensor of
    # several blocks in spans of many tiles (its 2,049 one-tile programs took 8 s here)
    spans = (1, 4) if n <= fp._BLOCK else (64, 256)
    for span in (*spans, fp._BLOCK // tfp._TILE):
        for r in res:
            r.zero_()
        programs = triton.cdiv(triton.cdiv(n, tfp._TILE), span)
        tfp._fingerprint_into[(programs,)](words, values, fp._WEIGHTS.get(t.device), mult,
            *res, 0, n, span, BLOCK=fp._BLOCK, TILE=tfp._TILE)
        assert int(res[0]) & fp._MASK64 == fp.fingerprint(t), (t.dtype, span)
        assert abs(float(res[1]) - float(total)) <= 1e-9 * max(1.0, abs(float(total))), t.dtype
        assert float(res[2]) == float(largest), t.dtype
print("ok")
"""
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    if result.returncode == 0 and result.stdout.startswith("unsupported"):
        # The kernel itself runs with that Triton on GPUs (tests/test_cuda.py).
        pytest.skip(f"Triton {_triton_version()}: {result.stdout.strip()}")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def _triton_version() -> str:
    import triton

    return triton.__version__

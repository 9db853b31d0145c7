"""Checkpoint postmortem: loading, bitwise comparison, ULP distances, bad files, rendering."""

from __future__ import annotations

import copy
import io
import json
import math
import struct

import pytest
import torch
from rich.console import Console

from bisector import tensor_diff
from bisector.checkpoint import (
    CheckpointReport,
    diff_checkpoints,
    load_checkpoint,
    sniff_checkpoint,
)
from bisector.errors import TraceError
from bisector.render.checkpoint import render
from bisector.tensor_diff import TensorDiff, compare_tensors

# 3 modules with weight and bias, 3 optimizer state entries (step, exp_avg, exp_avg_sq) each.
MODEL_TENSORS = 6
ALL_TENSORS = MODEL_TENSORS + 3 * MODEL_TENSORS


def _trained() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss = model(torch.randn(5, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 2}


@pytest.fixture(scope="module")
def trained() -> dict:
    return _trained()


@pytest.fixture
def pair(tmp_path, trained):
    """Save A as trained; return (path A, path B, a deep copy to edit and save as B)."""
    path_a, path_b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(trained, path_a)
    return path_a, path_b, copy.deepcopy(trained)


def _differing(report: CheckpointReport) -> list[str]:
    return [t.name for t in report.tensors if not t.equal]


def _one(values: list, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).to(dtype)


def _ulp(a: list, b: list, dtype: torch.dtype) -> TensorDiff:
    return compare_tensors("t", _one(a, dtype), _one(b, dtype))


def _from_bits(bits: list[int], dtype: torch.dtype) -> torch.Tensor:
    signed = {2: torch.int16, 8: torch.int64}[dtype.itemsize]
    return torch.tensor(bits, dtype=torch.int64).to(signed).view(dtype)


# ---------------------------------------------------------------- comparing checkpoints


def test_identical_copy_is_reproducible(pair):
    path_a, path_b, b = pair
    torch.save(b, path_b)
    report = diff_checkpoints(path_a, path_b)
    assert report.reproducible
    assert len(report.tensors) == ALL_TENSORS
    assert all(t.equal and t.differing == 0 and t.max_abs_diff == 0.0 for t in report.tensors)
    assert report.missing == report.extra == report.mismatched == report.values == []
    assert report.paths == [str(path_a), str(path_b)]
    # Equal tensors in name order, numbers as numbers.
    assert report.tensors[0].name == "model.0.bias"
    assert all(g["differing"] == 0 for g in report.groups)


def test_one_ulp_in_one_weight(pair):
    path_a, path_b, b = pair
    weight = b["model"]["2.weight"]
    before = weight[1, 3].item()
    weight[1, 3] = torch.nextafter(weight[1, 3], torch.tensor(math.inf))
    torch.save(b, path_b)
    report = diff_checkpoints(path_a, path_b)
    assert not report.reproducible
    assert _differing(report) == ["model.2.weight"]
    first = report.tensors[0]
    assert (first.name, first.dtype, first.shape) == ("model.2.weight", "float32", [4, 16])
    assert (first.differing, first.max_ulp_diff, first.nan_differing) == (1, 1, 0)
    assert first.max_abs_diff == abs(weight[1, 3].item() - before) > 0
    assert report.groups[0] == {
        "prefix": "model.2",
        "tensors": 2,
        "differing": 1,
        "max_abs_diff": first.max_abs_diff,
        "nan_differing": 0,
    }
    assert all(g["differing"] == 0 for g in report.groups[1:])


def test_differing_tensors_ranked_by_size(pair):
    path_a, path_b, b = pair
    b["model"]["0.bias"][0] += 1.0
    b["model"]["2.bias"][0] += 0.5
    torch.save(b, path_b)
    report = diff_checkpoints(path_a, path_b)
    assert _differing(report) == ["model.0.bias", "model.2.bias"]
    assert [g["prefix"] for g in report.groups[:2]] == ["model.0", "model.2"]


def test_optimizer_state_is_named(pair):
    path_a, path_b, b = pair
    b["optimizer"]["state"][4]["exp_avg"][2, 5] += 1e-3
    torch.save(b, path_b)
    report = diff_checkpoints(path_a, path_b)
    assert _differing(report) == ["optimizer.state.4.exp_avg"]
    assert report.groups[0]["prefix"] == "optimizer.state.4"


def test_missing_and_extra(pair):
    path_a, path_b, b = pair
    del b["model"]["2.bias"]
    b["model"]["3.weight"] = torch.ones(2)
    torch.save(b, path_b)
    report = diff_checkpoints(path_a, path_b)
    assert not report.reproducible
    assert report.missing == ["model.2.bias"]
    assert report.extra == ["model.3.weight"]
    assert _differing(report) == []
    assert len(report.tensors) == ALL_TENSORS - 1


def test_dtype_shape_and_kind_mismatch(pair):
    path_a, path_b, b = pair
    b["model"]["0.weight"] = b["model"]["0.weight"].bfloat16()
    b["model"]["0.bias"] = b["model"]["0.bias"][:15].clone()
    b["step"] = torch.tensor(2)
    torch.save(b, path_b)
    report = diff_checkpoints(path_a, path_b)
    assert not report.reproducible
    assert report.mismatched == [
        {"name": "model.0.weight", "a": "float32[16, 8]", "b": "bfloat16[16, 8]"},
        {"name": "model.0.bias", "a": "float32[16]", "b": "float32[15]"},
        {"name": "step", "a": "int", "b": "int64[]"},
    ]
    assert len(report.tensors) == ALL_TENSORS - 2


def test_plain_values(pair):
    path_a, path_b, b = pair
    a = copy.deepcopy(b)
    a.update(nan=math.nan, zero=0.0, flag=True)
    b.update(nan=math.nan, zero=-0.0, flag=1, step=3)
    b["optimizer"]["param_groups"][0]["lr"] = 2e-3
    torch.save(a, path_a)
    torch.save(b, path_b)
    report = diff_checkpoints(path_a, path_b)
    assert not report.reproducible
    assert _differing(report) == []
    # NaN equals NaN (same bits); -0.0 is not 0.0; True is not 1 (different types).
    assert report.values == [
        {"name": "optimizer.param_groups.0.lr", "a": 1e-3, "b": 2e-3},
        {"name": "step", "a": 2, "b": 3},
        {"name": "zero", "a": 0.0, "b": -0.0},
        {"name": "flag", "a": True, "b": 1},
    ]


def test_legacy_and_zip_formats_compare_equal(pair):
    path_a, path_b, b = pair
    torch.save(b, path_b, _use_new_zipfile_serialization=False)
    assert diff_checkpoints(path_a, path_b).reproducible


def test_json_shape(pair):
    path_a, path_b, b = pair
    b["model"]["1.weight"][0] = math.nan
    torch.save(b, path_b)
    data = json.loads(diff_checkpoints(path_a, path_b).to_json())
    assert list(data)[:2] == ["schema", "reproducible"]
    expected = {"schema", "reproducible", "tensors", "missing", "extra", "mismatched", "values"}
    assert set(data) == expected | {"groups", "paths"}
    assert data["schema"] == 1 and data["reproducible"] is False
    first = data["tensors"][0]
    assert first == {
        "name": "model.1.weight",
        "dtype": "float32",
        "shape": [16],
        "equal": False,
        "differing": 1,
        "max_abs_diff": 0.0,
        "max_ulp_diff": 0,
        "nan_differing": 1,
    }
    assert data["groups"][0] == {
        "prefix": "model.1",
        "tensors": 2,
        "differing": 1,
        "max_abs_diff": 0.0,
        "nan_differing": 1,
    }


# ---------------------------------------------------------------- bits and ULPs


def test_signed_zero_and_nan():
    zeros = compare_tensors("z", torch.tensor([0.0, 1.0]), torch.tensor([-0.0, 1.0]))
    assert (zeros.equal, zeros.differing, zeros.max_ulp_diff, zeros.max_abs_diff) == (
        False,
        1,
        0,
        0.0,
    )
    nan = torch.tensor([math.nan, 2.0])
    assert compare_tensors("n", nan, nan.clone()).equal
    other_nan = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    payload = compare_tensors("p", nan[:1], other_nan)
    assert (payload.equal, payload.nan_differing, payload.max_ulp_diff) == (False, 1, 0)
    one_side = compare_tensors("o", torch.tensor([math.nan, 1.0]), torch.tensor([3.0, 1.5]))
    assert (one_side.differing, one_side.nan_differing, one_side.max_abs_diff) == (2, 1, 0.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_ulp_across_zero(dtype):
    tiny = torch.nextafter(torch.zeros(1, dtype=dtype), torch.ones(1, dtype=dtype))
    assert tiny.item() > 0
    diff = compare_tensors("t", tiny, -tiny)
    assert diff.max_ulp_diff == 2
    assert diff.max_abs_diff == 2 * tiny.double().item()


def test_ulp_float64():
    one = torch.tensor([1.0], dtype=torch.float64)
    up = one
    for _ in range(3):
        up = torch.nextafter(up, torch.tensor([2.0], dtype=torch.float64))
    assert compare_tensors("t", one, up).max_ulp_diff == 3
    # Beyond the int64 range: the gaps need 64 unsigned bits.
    biggest = torch.finfo(torch.float64).max
    assert _ulp([biggest], [-biggest], torch.float64).max_ulp_diff == 2 * 0x7FEFFFFFFFFFFFFF
    assert _ulp([math.inf], [-math.inf], torch.float64).max_ulp_diff == 2 * 0x7FF0000000000000
    inf_vs_max = _ulp([math.inf], [biggest], torch.float64)
    assert (inf_vs_max.max_ulp_diff, inf_vs_max.max_abs_diff) == (1, math.inf)


def test_ulp_bfloat16_and_float8():
    assert _ulp([1.0], [1.0078125], torch.bfloat16).max_ulp_diff == 1
    assert _ulp([1.0], [2.0], torch.bfloat16).max_ulp_diff == 128
    assert _ulp([-1.0], [1.0], torch.bfloat16).max_ulp_diff == 2 * 0x3F80
    big = _from_bits([0x7F7F], torch.bfloat16)  # the largest finite bfloat16
    assert compare_tensors("t", big, -big).max_ulp_diff == 2 * 0x7F7F
    assert _ulp([1.0], [1.125], torch.float8_e4m3fn).max_ulp_diff == 1
    assert _ulp([1.0], [1.25], torch.float8_e5m2).max_ulp_diff == 1


def test_integer_bool_and_complex():
    low, high = torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max
    ints = compare_tensors("i", torch.tensor([low, 5]), torch.tensor([high, 5]))
    assert (ints.differing, ints.max_abs_diff, ints.max_ulp_diff) == (1, float(2**64 - 1), None)
    flags = compare_tensors("b", torch.tensor([True, False]), torch.tensor([False, False]))
    assert (flags.differing, flags.max_abs_diff) == (1, 1.0)
    a = torch.tensor([1 + 1j, 2 + 2j], dtype=torch.complex64)
    b = torch.tensor([1 + 1j, 5 + 6j], dtype=torch.complex64)
    complex_diff = compare_tensors("c", a, b)
    assert (complex_diff.differing, complex_diff.max_abs_diff) == (1, 5.0)


def test_empty_and_scalar():
    empty = compare_tensors("e", torch.zeros(0, 3), torch.zeros(0, 3))
    assert (empty.equal, empty.shape, empty.max_ulp_diff) == (True, [0, 3], 0)
    scalar = compare_tensors("s", torch.tensor(1.0), torch.tensor(1.5))
    assert (scalar.shape, scalar.differing, scalar.max_abs_diff) == ([], 1, 0.5)
    assert scalar.max_ulp_diff == 0x3FC00000 - 0x3F800000


def test_sparse_tensors_compare_as_dense(tmp_path):
    indices = torch.tensor([[0, 1], [1, 0]])
    for name, values in (("a", [1.0, 2.0]), ("b", [1.0, 2.5])):
        sparse = torch.sparse_coo_tensor(
            indices, torch.tensor(values), (2, 2), check_invariants=True
        )
        torch.save({"s": sparse}, tmp_path / f"{name}.pt")
    report = diff_checkpoints(tmp_path / "a.pt", tmp_path / "b.pt")
    diff = report.tensors[0]
    assert (diff.name, diff.shape, diff.differing, diff.max_abs_diff) == ("s", [2, 2], 1, 0.5)


def test_chunks_line_up_for_strided_tensors(monkeypatch):
    monkeypatch.setattr(tensor_diff, "CHUNK", 7)
    base = torch.arange(6 * 5 * 4, dtype=torch.float32).reshape(6, 5, 4)
    strided = base.permute(2, 1, 0).contiguous().permute(2, 1, 0)  # same values, other strides
    assert not strided.is_contiguous() and torch.equal(base, strided)
    assert compare_tensors("s", base, strided).equal
    changed = strided.clone()
    changed[0, 0, 0] += 1
    changed[5, 4, 3] -= 3
    changed[2, 3, 1] += 2
    diff = compare_tensors("s", base, changed)
    assert (diff.differing, diff.max_abs_diff) == (3, 3.0)
    row = torch.arange(20.0)
    assert compare_tensors("r", row, row.flip(0).flip(0)).equal
    assert compare_tensors("r", row, row + 1).differing == 20


# ---------------------------------------------------------------- safetensors

_ST_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def _write_safetensors(path, tensors: dict[str, torch.Tensor], pad: int = 0) -> None:
    """A minimal writer, independent of the reader under test."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, tensor in tensors.items():
        raw = (
            tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
            if tensor.numel()
            else b""
        )
        header[name] = {
            "dtype": _ST_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (pad + (-len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_round_trip_all_dtypes(tmp_path):
    values = torch.tensor([[1.5, -0.0, math.inf], [-2.25, math.nan, 3.0]])
    tensors = {f"t.{code}": values.to(dtype) for dtype, code in _ST_CODES.items()}
    tensors["empty"] = torch.zeros(0, 3)
    tensors["scalar"] = torch.tensor(7, dtype=torch.int32)
    path = tmp_path / "all.safetensors"
    _write_safetensors(path, tensors, pad=3)  # pad 3: data starts unaligned
    assert sniff_checkpoint(path) == "safetensors"
    loaded = load_checkpoint(path)
    assert sorted(loaded) == sorted(tensors)  # the library lists them by name
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        bits = tensor_diff._bits(tensor_diff._rows(tensor.reshape(-1)))
        assert torch.equal(bits, tensor_diff._bits(tensor_diff._rows(loaded[name].reshape(-1))))


def test_safetensors_against_torch_save(tmp_path, trained):
    state = trained["model"]
    torch_path, own_path = tmp_path / "model.pt", tmp_path / "own.safetensors"
    torch.save(state, torch_path)
    _write_safetensors(own_path, state)
    assert diff_checkpoints(torch_path, own_path).reproducible
    changed = {k: v.clone() for k, v in state.items()}
    changed["1.bias"][3] += 0.25
    _write_safetensors(own_path, changed)
    report = diff_checkpoints(torch_path, own_path)
    assert _differing(report) == ["1.bias"]
    assert report.tensors[0].differing == 1
    assert report.tensors[0].max_abs_diff == pytest.approx(0.25, rel=1e-6)

    safetensors_torch = pytest.importorskip("safetensors.torch")
    theirs = tmp_path / "theirs.safetensors"
    safetensors_torch.save_file(dict(state), theirs)
    assert sniff_checkpoint(theirs) == "safetensors"
    assert diff_checkpoints(torch_path, theirs).reproducible
    assert _differing(diff_checkpoints(own_path, theirs)) == ["1.bias"]


# ---------------------------------------------------------------- bad files


def _bad_files(tmp_path, trained) -> dict:
    good = tmp_path / "good.pt"
    torch.save(trained, good)
    data = good.read_bytes()
    files = {
        "truncated zip": data[: len(data) // 2],
        "random bytes": bytes(range(256)) * 4,
        "empty": b"",
        "text": b"hello, not a checkpoint\n",
        "bad pickle": b"\x80\x02garbage",
    }
    paths = {}
    for label, content in files.items():
        paths[label] = tmp_path / (label.replace(" ", "_") + ".pt")
        paths[label].write_bytes(content)
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    paths["folder"] = folder
    paths["missing"] = tmp_path / "missing.pt"
    past_end = tmp_path / "past_end.safetensors"
    _write_safetensors(past_end, {"w": torch.ones(4)})
    past_end.write_bytes(past_end.read_bytes()[:-4])
    paths["safetensors past end"] = past_end
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}).encode()
    wrong_size = tmp_path / "wrong_size.safetensors"
    wrong_size.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    paths["safetensors size mismatch"] = wrong_size
    short = tmp_path / "short_header.safetensors"
    short.write_bytes(struct.pack("<Q", 4096) + b'{"w": ')
    paths["safetensors header past end"] = short
    not_json = tmp_path / "not_json.safetensors"
    not_json.write_bytes(struct.pack("<Q", 4) + b"{abc")
    paths["safetensors header not JSON"] = not_json
    return paths


BAD = [
    ("truncated zip", "corrupt or truncated zip"),
    ("random bytes", "not a PyTorch"),
    ("empty", "is empty"),
    ("text", "not a PyTorch"),
    ("bad pickle", "(UnpicklingError: Unsupported operand 103); it may be corrupt"),
    ("folder", "is a folder"),
    ("missing", "not found"),
    ("safetensors past end", "corrupt safetensors file: incomplete metadata"),
    ("safetensors size mismatch", "corrupt safetensors file: invalid shape, data type, or offset"),
    ("safetensors header not JSON", "corrupt safetensors file: invalid JSON in header"),
    ("safetensors header past end", "corrupt safetensors file: invalid header length"),
]


@pytest.mark.parametrize(("label", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_files_give_one_line(tmp_path, trained, label, expected):
    path = _bad_files(tmp_path, trained)[label]
    with pytest.raises(TraceError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and expected in message
    with pytest.raises(TraceError):
        diff_checkpoints(tmp_path / "good.pt", path)


def _touch(path: str) -> None:
    with open(path, "w") as f:
        f.write("code ran")


class _Planted:
    """Unpickling this calls _touch: it proves whether a loader ran code from the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_file_that_needs_code_is_refused_without_running_it(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "custom.pt"
    torch.save(
        {"w": torch.ones(2), "obj": _Planted(str(marker))},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    with pytest.raises(TraceError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "needs code to load" in message and "state_dict" in message
    assert not marker.exists()
    # The planted object does run code when a loader allows it: the check above can fail.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_sniff(tmp_path):
    tensors = {"w": torch.ones(3)}
    zip_path, legacy, st, text = (tmp_path / n for n in ("z.pt", "l.pt", "s.bin", "t.txt"))
    torch.save(tensors, zip_path)
    torch.save(tensors, legacy, _use_new_zipfile_serialization=False)
    _write_safetensors(st, tensors)
    text.write_text("{not a checkpoint}\n")
    assert sniff_checkpoint(zip_path) == "torch"
    assert sniff_checkpoint(legacy) == "torch"
    assert sniff_checkpoint(st) == "safetensors"
    assert sniff_checkpoint(text) is None
    assert sniff_checkpoint(tmp_path / "missing") is None
    assert sniff_checkpoint(tmp_path) is None
    # Content decides, not the extension.
    assert torch.equal(load_checkpoint(st)["w"], load_checkpoint(zip_path)["w"])


# ---------------------------------------------------------------- rendering


def _render(report: CheckpointReport) -> str:
    console = Console(file=io.StringIO(), width=120)
    render(report, console)
    return console.file.getvalue()


def test_render_differing(pair):
    path_a, path_b, b = pair
    b["model"]["2.weight"][0, 0] += 1e-3
    b["optimizer"]["state"][5]["exp_avg"][1] = math.nan
    del b["model"]["0.bias"]
    b["step"] = 3
    torch.save(b, path_b)
    text = _render(diff_checkpoints(path_a, path_b))
    assert text.startswith(
        f"Checkpoints differ: 2 of {ALL_TENSORS - 1} tensors differ; also 1 only in A, "
        "1 differing plain value"
    )
    rows = text.splitlines()[2:4]
    assert rows[0].split() == ["optimizer.state.5.exp_avg", "float32[4]", "1", "(25%)", "NaN", "-"]
    assert rows[1].split()[:4] == ["model.2.weight", "float32[4,", "16]", "1"]
    assert "1 (1.56%)" in rows[1]
    assert "model.2: 1 of 2 tensors" in text
    assert "fully identical: model.1, optimizer.state.0," in text
    assert "Only in A (1)\n  model.0.bias" in text
    assert "step: 2 in A, 3 in B" in text


def test_render_identical_and_empty(pair):
    path_a, _, _ = pair
    text = _render(diff_checkpoints(path_a, path_a))
    assert text.startswith(f"Checkpoints are bitwise identical ({ALL_TENSORS} tensors")
    assert "Checkpoints are bitwise identical (0 tensors" in _render(
        CheckpointReport(reproducible=True, tensors=[])
    )
    assert _render(CheckpointReport(reproducible=False, tensors=[])).startswith(
        "Checkpoints differ: 0 of 0 tensors differ"
    )


def test_render_caps_long_lists():
    tensors = [
        TensorDiff(f"layers.{i}.w", "float32", [10], False, 1, float(i), 1) for i in range(45)
    ]
    report = CheckpointReport(
        reproducible=False, tensors=tensors, missing=[f"m{i}" for i in range(20)]
    )
    text = _render(report)
    assert "layers.29.w" in text and "layers.30.w" not in text
    assert "... and 15 more (see --json)" in text
    assert "... and 8 more (see --json)" in text


def test_cli_diff_of_checkpoints(tmp_path):
    """`bisector diff a.pt b.pt`: exit 1 and the JSON contract; a truncated file: one line, 2."""
    import json

    from test_cli import _one_error_line, run_cli

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1}
    torch.save(state, tmp_path / "a.ckpt")
    del state["model"]["1.bias"]
    torch.save(state, tmp_path / "b.ckpt")
    result = run_cli(
        "diff",
        str(tmp_path / "a.ckpt"),
        str(tmp_path / "b.ckpt"),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert result.returncode == 1, result.stderr
    assert "model.1.bias" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == 1 and report["reproducible"] is False
    assert report["missing"] == ["model.1.bias"] and report["extra"] == []
    assert all(t["equal"] for t in report["tensors"])
    assert run_cli("diff", str(tmp_path / "a.ckpt"), str(tmp_path / "a.ckpt")).returncode == 0

    data = (tmp_path / "a.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    line = _one_error_line(run_cli("diff", str(tmp_path / "cut.ckpt"), str(tmp_path / "a.ckpt")))
    assert "cut.ckpt" in line

"""The trace file: round trip, streaming, and clear errors for every kind of bad file."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from streams import Ev, make_trace

import bisector
from bisector import records
from bisector import trace as trace_mod
from bisector.errors import TraceError
from bisector.trace import FORMAT_VERSION, MAGIC, load


def _train(steps: int = 3) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture
def recorded(tmp_path):
    path = tmp_path / "run.trace"
    with bisector.record(path) as recorder:
        _train()
    return path, recorder


def test_round_trip(recorded):
    path, recorder = recorded
    trace = load(path)
    assert trace.complete and trace.footer["status"] == "complete"
    assert len(trace) == recorder.events > 100
    assert trace.footer["steps"] == 3
    assert trace.header["versions"]["torch"] == torch.__version__
    assert "deterministic_algorithms" in trace.header["settings"]
    assert set(trace.columns) == set(trace_mod.ALL_COLUMNS)
    ops = {trace.string("op", i) for i in range(len(trace))}
    assert {"aten.addmm.default", "aten.relu.default", "aten.mm.default"} <= ops


def test_small_chunks_give_the_same_trace(tmp_path):
    whole, chunked = tmp_path / "whole.trace", tmp_path / "chunked.trace"
    from bisector.capture.recorder import Recorder, RecordOptions

    with Recorder(whole):
        _train(2)
    with Recorder(chunked, RecordOptions(chunk_events=7)):
        _train(2)
    a, b = load(whole), load(chunked)
    assert len(a) == len(b)
    for name in ("n_in", "n_out", "in_back", "out_fp", "phase", "step"):
        assert np.array_equal(a.columns[name], b.columns[name]), name
    assert [a.string("op", i) for i in range(len(a))] == [b.string("op", i) for i in range(len(b))]


def test_cut_short_trace_loads_up_to_its_last_record(recorded, tmp_path):
    path, _ = recorded
    data = path.read_bytes()
    cut = tmp_path / "cut.trace"
    cut.write_bytes(data[: len(data) - 30])  # lose the footer, as a killed run would
    trace = load(cut)
    assert not trace.complete
    assert trace.footer == {}


def _record_starts(data: bytes) -> list[int]:
    """Offsets of the records of a trace file (after its magic and version)."""
    from bisector.records import _RECORD

    for first in range(64):  # the records start right after the file's preamble
        starts, pos = [], first
        while pos + _RECORD.size <= len(data):
            _, length, crc = _RECORD.unpack_from(data, pos)
            payload = data[pos + _RECORD.size : pos + _RECORD.size + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            starts.append(pos)
            pos += _RECORD.size + length
        if starts and pos == len(data):
            return starts
    raise AssertionError("no record structure found")


@pytest.mark.parametrize("where", ["payload", "checksum", "length"])
def test_corrupt_byte_is_a_clear_error(recorded, tmp_path, where):
    """A flipped bit in a record's payload, checksum or length field (a length that then
    claims bytes past the end is not taken for a run killed while writing)."""
    path, _ = recorded
    data = bytearray(path.read_bytes())
    starts = _record_starts(bytes(data))
    middle = starts[len(starts) // 2]
    offset = {"payload": 12, "checksum": 6, "length": 2}[where]  # kind 1, length 4, crc 4
    data[middle + offset] ^= 0x40
    bad = tmp_path / "bad.trace"
    bad.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="corrupt"):
        load(bad)


def test_not_a_trace(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(TraceError, match="not a bisector trace"):
        load(other)
    empty = tmp_path / "empty.trace"
    empty.write_bytes(b"")
    with pytest.raises(TraceError, match="not a bisector trace"):
        load(empty)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        load(tmp_path / "nope.trace")
    with pytest.raises(TraceError, match="folder"):
        load(tmp_path)


def test_newer_format_version_is_refused(recorded, tmp_path):
    path, _ = recorded
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, len(MAGIC), FORMAT_VERSION + 1)
    newer = tmp_path / "newer.trace"
    newer.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="newer than this bisector reads"):
        load(newer)


def test_huge_length_claim_does_not_allocate(tmp_path):
    bad = tmp_path / "huge.trace"
    bad.write_bytes(MAGIC + struct.pack("<I", 1) + struct.pack("<cII", b"H", 2**32 - 1, 0))
    with pytest.raises(TraceError, match="corrupt"):
        load(bad)


def test_header_only_trace_is_valid_and_empty(tmp_path):
    path = tmp_path / "h.trace"
    writer = trace_mod.TraceWriter(path, {"argv": ["x.py"]})
    writer.close({"status": "complete"})
    trace = load(path)
    assert len(trace) == 0 and trace.complete


def test_bytes_per_event_is_compact(recorded):
    path, recorder = recorded
    per_event = path.stat().st_size / recorder.events
    # The header is a fixed cost; on this tiny run it still stays well under 64 bytes/event
    # on average for the event data (measured figures live in benchmarks/).
    assert per_event < 64 + 4000 / recorder.events


def test_a_chunk_too_large_for_one_record_is_split(tmp_path, monkeypatch):
    # readers inflate at most records.MAX_INFLATED bytes of a record: the writer splits larger runs
    events = [Ev("leaf.tensor", [], [1])] + [
        Ev("aten.add.Tensor", [(i, 0), (-1, 0)], [i, i + 1]) for i in range(200)
    ]
    built = make_trace(events)
    monkeypatch.setattr(trace_mod, "_MAX_CHUNK_BYTES", 1000)
    writer = trace_mod.TraceWriter(tmp_path / "split.trace", built.header)
    writer.add_strings(built.strings)
    writer.add_chunk(built.columns)
    writer.close(built.footer)
    data = (tmp_path / "split.trace").read_bytes()
    chunks = [k for k, _, _ in records.records(tmp_path, data, len(MAGIC) + 4) if k == b"C"]
    assert len(chunks) > 8 and writer.events_written == len(built)
    loaded = load(tmp_path / "split.trace")
    for name in trace_mod.ALL_COLUMNS:
        assert np.array_equal(loaded.columns[name], built.columns[name]), name

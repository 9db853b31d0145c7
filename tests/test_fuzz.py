"""Fuzzing the trace and digest readers: a damaged or hostile file loads, or is one clear error.

Every case starts from a real file (a recorded trace, a ``bisector.watch`` digest file) and damages
it: cuts at every kind of position, flipped bytes, garbage after a valid prefix, records that claim
huge lengths, and records whose checksum is recomputed after their payload was made hostile (JSON
of the wrong shape, columns of the wrong length, ids out of range, zlib bombs). The property:
``load()`` returns an object (a cut file loads up to its last complete record, ``complete`` False)
or raises TraceError with one line naming the file; nothing else, and never gigabytes of memory.
A trace that loads can always be compared with the intact one.

A deeper run: ``BISECTOR_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py`` (default 150
examples per test, about 20 s in all).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import os
import pickle
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streams import Ev, make_trace

import bisector
from bisector import digests, records, trace
from bisector.analysis import compare
from bisector.capture.recorder import Recorder, RecordOptions
from bisector.errors import MismatchError, TraceError

FUZZ = settings(
    max_examples=int(os.environ.get("BISECTOR_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_FRAME = struct.Struct("<cII")
_START = len(trace.MAGIC) + 4  # records start after the magic and the format version
assert len(digests.MAGIC) == len(trace.MAGIC)


# ----- the real files everything starts from ----------------------------------------------------


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _loop(model, optimizer, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A recorded trace in small chunks (many records) and a digest file of a few steps."""
    folder = tmp_path_factory.mktemp("fuzz")
    model, optimizer = _model()
    with Recorder(folder / "run.trace", RecordOptions(chunk_events=32)):
        _loop(model, optimizer, 2)
    model, optimizer = _model()
    with bisector.watch(model, optimizer, folder / "run.digests"):
        _loop(model, optimizer, 4)
    return _Files(
        trace=(folder / "run.trace").read_bytes(),
        digests=(folder / "run.digests").read_bytes(),
        intact_trace=trace.load(folder / "run.trace"),
        intact_digests=digests.load(folder / "run.digests"),
        folder=folder,
    )


class _Files(dict):
    """The real files, as a dict with a short repr (hypothesis prints it with each failure)."""

    def __repr__(self) -> str:
        return "files"


def _frames(data: bytes) -> list[tuple[bytes, bytes, int]]:
    """(kind, payload, offset) of every record of an intact file."""
    return list(records.records(Path("intact"), data, _START))


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _FRAME.pack(kind, len(payload), zlib.crc32(payload)) + payload


def _replace(data: bytes, index: int, payload: bytes) -> bytes:
    """The file with record ``index`` holding ``payload`` under a valid checksum."""
    kind, old, offset = _frames(data)[index]
    return data[:offset] + _frame(kind, payload) + data[offset + _FRAME.size + len(old) :]


# ----- the property ------------------------------------------------------------------------------


def _check(files, data: bytes, kind: str):
    """Load ``data`` as a trace or digest file: an object, or a TraceError of one line naming
    the file. Whatever loads compares with the intact file without crashing."""
    path = files["folder"] / f"fuzzed.{kind}"
    path.write_bytes(data)
    reader = trace if kind == "trace" else digests
    try:
        loaded = reader.load(path)
    except TraceError as exc:
        message = str(exc)
        assert str(path) in message and "\n" not in message, message
        return None
    intact = files["intact_trace"] if kind == "trace" else files["intact_digests"]
    diff = compare if kind == "trace" else digests.compare
    for left, right in ((loaded, intact), (intact, loaded), (loaded, loaded)):
        with contextlib.suppress(MismatchError):  # "not two runs of one script": a fine answer
            diff(left, right)
    return loaded


KINDS = ["trace", "digests"]


# ----- cuts --------------------------------------------------------------------------------------


def _cut_points(data: bytes) -> list[int]:
    """Every kind of position: inside the magic and version, at each record boundary, inside
    each record's frame, inside its payload, one byte short of its end."""
    points = {0, 3, len(trace.MAGIC), _START - 1}
    for _, payload, offset in _frames(data):
        end = offset + _FRAME.size + len(payload)
        points |= {offset, offset + 1, offset + 5, offset + _FRAME.size}
        points |= {offset + _FRAME.size + len(payload) // 2, end - 1, end}
    return sorted(p for p in points if p <= len(data))


@pytest.mark.parametrize("kind", KINDS)
def test_a_cut_file_loads_up_to_its_last_complete_record(files, kind):
    data = files[kind]
    frames = _frames(data)
    for cut in _cut_points(data):
        loaded = _check(files, data[:cut], kind)
        kept = [k for k, p, o in frames if o + _FRAME.size + len(p) <= cut]
        if cut < _START:
            assert loaded is None, cut
            continue
        if b"H" not in kept:
            assert loaded is None, cut  # no header: "corrupt or empty"
            continue
        assert loaded is not None, cut
        assert loaded.complete == (b"F" in kept), cut
        if kind == "trace":
            assert len(loaded) == sum(
                len(trace._parse_chunk(zlib.decompress(p))["op"])
                for k, p, o in frames
                if k == b"C" and (o + _FRAME.size + len(p) <= cut)
            ), cut
        else:
            assert len(loaded.steps) == kept.count(b"D"), cut


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_any_cut(files, kind, data):
    raw = files[kind]
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    loaded = _check(files, raw[:cut], kind)
    if loaded is not None and cut < len(raw):
        assert not loaded.complete


# ----- flipped bytes and garbage -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_flipped_bytes(files, kind, data):
    raw = bytearray(files[kind])
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=4
        )
    )
    for position, mask in flips:
        raw[position] ^= mask
    _check(files, bytes(raw), kind)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_garbage_after_a_valid_prefix(files, kind, data):
    raw = files[kind]
    cut = data.draw(st.sampled_from(_cut_points(raw)), label="cut")
    garbage = data.draw(st.binary(min_size=1, max_size=2000), label="garbage")
    _check(files, raw[:cut] + garbage, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [2**31 + 1, 2**32 - 1, 2**31, 10**6])
def test_huge_claimed_lengths(files, kind, length):
    raw = files[kind]
    for _, _, offset in _frames(raw)[:3]:
        # a record that claims more than the file holds: a cut (if plausible) or corruption
        bad = raw[:offset] + _FRAME.pack(b"C", length, 0) + raw[offset + _FRAME.size :]
        loaded = _check(files, bad, kind)
        assert loaded is None or not loaded.complete
    appended = _check(files, raw + _FRAME.pack(b"D", length, 0) + b"\0" * 64, kind)
    assert appended is None or appended.complete  # the footer is there; the rest is a cut


# ----- hostile payloads under a valid checksum ---------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
_hostile_json = st.one_of(
    _json.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 50_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 50_000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.sampled_from([b"", b"\xff\xfe\x00", b"1" * 5000, b"NaN", b'"x"', b"[1e999]", b"-"]),
    st.binary(max_size=64),
)


def _indices(raw: bytes, kind: bytes) -> list[int]:
    return [i for i, (k, _, _) in enumerate(_frames(raw)) if k == kind]


_JSON_RECORDS = [("trace", k) for k in (b"H", b"S", b"F")] + [
    ("digests", k) for k in (b"H", b"N", b"F")
]


@pytest.mark.parametrize(("kind", "record"), _JSON_RECORDS)
@FUZZ
@given(data=st.data())
def test_json_records_of_any_shape(files, kind, record, data):
    raw = files[kind]
    index = data.draw(st.sampled_from(_indices(raw, record)), label="record")
    payload = data.draw(_hostile_json, label="payload")
    _check(files, _replace(raw, index, payload), kind)


_header_values = st.one_of(
    _json, st.sampled_from([[], [1], {}, "", 0, -1, 2**70, None]).map(copy.deepcopy)
)
_HEADER_KEYS = ["argv", "rank", "cwd", "fingerprint", "versions", "settings", "seeds_at_start"]
_FOOTER_KEYS = ["steps", "status", "seconds", "settings_at_end", "seeds_at_end"]


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_header_and_footer_fields_of_any_type(files, kind, data):
    """The analysis reads a few header and footer fields: any type there is loadable-or-error."""
    raw = files[kind]
    frames = _frames(raw)
    record = data.draw(st.sampled_from([b"H", b"F"]), label="record")
    index = _indices(raw, record)[0]
    fields = json.loads(frames[index][1])
    keys = _HEADER_KEYS if record == b"H" else _FOOTER_KEYS
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, unique=True), label="keys"):
        fields[key] = data.draw(_header_values, label=key)
        if isinstance(fields.get("settings"), dict) and data.draw(st.booleans()):
            fields["settings"]["env"] = data.draw(_header_values, label="env")
    _check(files, _replace(raw, index, json.dumps(fields).encode()), kind)


def _encode_chunk(meta, body: bytes) -> bytes:
    text = json.dumps(meta).encode()
    return zlib.compress(struct.pack("<I", len(text)) + text + body)


def _chunk_parts(payload: bytes) -> tuple[list, dict[str, np.ndarray]]:
    raw = zlib.decompress(payload)
    (size,) = struct.unpack_from("<I", raw)
    meta = json.loads(raw[4 : 4 + size])
    return meta, trace._parse_chunk(raw)


def _assemble(meta, columns: dict[str, np.ndarray]) -> bytes:
    meta = [[name, len(columns[name]) if name in columns else count] for name, count in meta]
    body = b"".join(
        np.ascontiguousarray(columns[name], trace.ALL_COLUMNS[name]).tobytes()
        for name, _ in meta
        if name in columns
    )
    return _encode_chunk(meta, body)


@FUZZ
@given(data=st.data())
def test_chunk_columns_with_hostile_values(files, data):
    """Values out of range (string ids, producers, slots, phases) in any column of a chunk."""
    raw = files["trace"]
    index = data.draw(st.sampled_from(_indices(raw, b"C")), label="chunk")
    meta, columns = _chunk_parts(_frames(raw)[index][1])
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(sorted(columns)), label="column")
        column = columns[name]
        if not len(column):
            continue
        info = np.iinfo(column.dtype) if column.dtype.kind in "iu" else None
        values = (
            st.integers(int(info.min), int(info.max))
            if info
            else st.floats(width=8 * column.dtype.itemsize)
        )
        rows = data.draw(st.lists(st.integers(0, len(column) - 1), min_size=1, max_size=4))
        for row in rows:
            column[row] = data.draw(values | st.sampled_from([0, 1, 2, 3, 255]), label=name)
    _check(files, _replace(raw, index, _assemble(meta, columns)), "trace")


@FUZZ
@given(data=st.data())
def test_chunk_columns_of_wrong_lengths(files, data):
    raw = files["trace"]
    index = data.draw(st.sampled_from(_indices(raw, b"C")), label="chunk")
    meta, columns = _chunk_parts(_frames(raw)[index][1])
    for name in data.draw(st.lists(st.sampled_from(sorted(columns)), min_size=1, max_size=3)):
        column = columns[name]
        change = data.draw(st.integers(-len(column), 5), label=f"{name} length change")
        columns[name] = (
            column[: len(column) + change]
            if change <= 0
            else np.resize(column, len(column) + change)
        )
    _check(files, _replace(raw, index, _assemble(meta, columns)), "trace")


_counts = st.one_of(
    st.integers(-(2**63), 2**64),
    st.sampled_from([-1, 0, 2**31, 2**62, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.text(max_size=3),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@FUZZ
@given(data=st.data())
def test_chunk_metadata_of_any_shape(files, data):
    """Counts that are negative, huge, not numbers; names unknown, missing, repeated or not
    strings; metadata that is not a list of pairs; a length prefix that lies."""
    raw = files["trace"]
    index = data.draw(st.sampled_from(_indices(raw, b"C")), label="chunk")
    meta, columns = _chunk_parts(_frames(raw)[index][1])
    body = b"".join(columns[name].tobytes() for name, _ in meta)
    choice = data.draw(st.integers(0, 4), label="what")
    if choice == 0:  # one count replaced
        row = data.draw(st.integers(0, len(meta) - 1))
        meta[row][1] = data.draw(_counts, label="count")
        payload = _encode_chunk(meta, body)
    elif choice == 1:  # names shuffled, dropped, repeated, unknown or not strings
        names = st.sampled_from(sorted(trace.ALL_COLUMNS)) | st.text(max_size=4) | _json
        meta = data.draw(st.lists(st.tuples(names, _counts).map(list), max_size=20), label="meta")
        payload = _encode_chunk(meta, body)
    elif choice == 2:  # metadata of another shape altogether
        payload = _encode_chunk(data.draw(_json, label="meta"), body)
    elif choice == 3:  # the metadata length prefix lies
        text = json.dumps(meta).encode()
        size = data.draw(st.integers(0, 2**32 - 1), label="meta length")
        payload = zlib.compress(struct.pack("<I", size) + text + body)
    else:  # not zlib, or a zlib stream cut short or followed by junk
        good = _encode_chunk(meta, body)
        payload = data.draw(
            st.sampled_from([good[: len(good) // 2], good + b"junk", good[:-1]])
            | st.binary(max_size=64)
            | st.binary(max_size=12).map(zlib.compress),
            label="payload",
        )
    _check(files, _replace(raw, index, payload), "trace")


@FUZZ
@given(data=st.data())
def test_digest_step_records_of_any_shape(files, data):
    """Name ids out of range, counts that disagree with the size, records of the wrong size."""
    raw = files["digests"]
    index = data.draw(st.sampled_from(_indices(raw, b"D")), label="step record")
    step_raw = bytearray(zlib.decompress(_frames(raw)[index][1]))
    step, count = struct.unpack_from("<II", step_raw)
    choice = data.draw(st.integers(0, 3), label="what")
    if choice == 0:  # one name id replaced
        row = data.draw(st.integers(0, count - 1))
        struct.pack_into("<I", step_raw, 8 + 4 * row, data.draw(st.integers(0, 2**32 - 1)))
    elif choice == 1:  # another count
        struct.pack_into("<I", step_raw, 4, data.draw(st.integers(0, 2**32 - 1)))
    elif choice == 2:  # bytes missing or added
        change = data.draw(st.integers(-len(step_raw), 64))
        step_raw = step_raw[: len(step_raw) + change] if change <= 0 else step_raw + bytes(change)
    else:  # any step number
        struct.pack_into("<I", step_raw, 0, data.draw(st.integers(0, 2**32 - 1)))
    _check(files, _replace(raw, index, zlib.compress(bytes(step_raw))), "digests")


# ----- zlib bombs --------------------------------------------------------------------------------


def _bomb(prefix: bytes, zeros: int) -> bytes:
    """A valid zlib stream of ``prefix`` and then ``zeros`` zero bytes, built in milliseconds:
    once the window is all zeros, each further MiB of zeros compresses to the same bytes."""
    piece = 1 << 20
    assert zeros % piece == 0 and zeros >= 2 * piece
    compressor = zlib.compressobj(9)
    head = compressor.compress(prefix + bytes(piece)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    repeat = compressor.compress(bytes(piece)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    again = compressor.compress(bytes(piece)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert repeat == again
    count = zeros // piece - 1
    a_b = zlib.adler32(prefix)
    a, b = a_b & 0xFFFF, a_b >> 16
    b = (b + zeros * a) % 65521  # zeros leave the adler sum alone and add it to b each byte
    final_empty_block = b"\x03\x00"
    return head + repeat * count + final_empty_block + struct.pack(">I", (b << 16) | a)


def test_the_bomb_builder_builds_valid_streams():
    prefix = b"meta"
    out = zlib.decompress(_bomb(prefix, 3 << 20))
    assert out == prefix + bytes(3 << 20)


GIB = 1 << 30


def _chunk_bomb(events: int) -> bytes:
    sizes = {**trace.EVENT_COLUMNS, **trace.INPUT_COLUMNS, **trace.OUTPUT_COLUMNS}
    meta = [[name, events if name in trace.EVENT_COLUMNS else 0] for name in sizes]
    text = json.dumps(meta).encode()
    prefix = struct.pack("<I", len(text)) + text
    total = sum(events * np.dtype(d).itemsize for n, d in sizes.items() if n in trace.EVENT_COLUMNS)
    return _bomb(prefix, total - total % (1 << 20))


@pytest.mark.parametrize(
    ("kind", "record", "payload"),
    [
        ("trace", b"C", lambda: _bomb(b"", 2 * GIB)),
        ("trace", b"C", lambda: _chunk_bomb(2 * GIB // 26)),
        ("digests", b"D", lambda: _bomb(struct.pack("<II", 0, 2 * GIB // 24), 2 * GIB)),
    ],
    ids=["chunk-of-zeros", "chunk-of-events", "digest-step"],
)
def test_a_zlib_bomb_is_refused_without_inflating_it(files, kind, record, payload):
    bomb = payload()
    assert len(bomb) < 4 << 20  # a few MB that claim gigabytes
    raw = files[kind]
    data = _replace(raw, _indices(raw, record)[0], bomb)
    tracemalloc.start()
    try:
        loaded = _check(files, data, kind)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded is None
    assert peak < 256 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_many_small_bombs_are_refused_by_the_budget_of_the_whole_file(files):
    """Records that each stay under the per-record cap (13 MiB of valid all-zero events from
    13 kB) but together would inflate a thousand times the file: refused once the file's budget
    (MAX_INFLATED plus 32 times its size) is spent, before they all sit in memory."""
    events = 1 << 19  # 26 bytes of event columns each: 13 MiB, a whole number of MiB
    bomb = _chunk_bomb(events)
    assert len(zlib.decompress(bomb)) < records.MAX_INFLATED
    raw = files["trace"]
    first_chunk = _indices(raw, b"C")[0]
    kind, old, offset = _frames(raw)[first_chunk]
    data = raw[:offset] + _frame(b"C", bomb) * 40 + raw[offset + _FRAME.size + len(old) :]
    assert len(data) < 1 << 20
    tracemalloc.start()
    try:
        loaded = _check(files, data, "trace")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded is None
    assert peak < 256 << 20, f"peak {peak / 2**20:.0f} MiB"


# ----- nothing in a file is ever executed --------------------------------------------------------


class _Plant:
    """Unpickling this writes a file: the proof that something was unpickled."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "unpickled"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_pickle_in_a_file_stays_inert(files, kind, tmp_path):
    planted = tmp_path / "planted"
    bomb = pickle.dumps(_Plant(str(planted)))
    raw = files[kind]
    header_index = _indices(raw, b"H")[0]
    header = json.loads(_frames(raw)[header_index][1])
    header["argv"] = [bomb.hex(), bomb.decode("latin-1")]
    header["pickle"] = bomb.decode("latin-1")
    as_text = _replace(raw, header_index, json.dumps(header).encode())
    loaded = _check(files, as_text, kind)
    assert loaded is not None and loaded.header["pickle"] == bomb.decode("latin-1")
    for record in (b"H", b"F", b"C" if kind == "trace" else b"D"):
        for payload in (bomb, zlib.compress(bomb)):
            _check(files, _replace(raw, _indices(raw, record)[0], payload), kind)
    assert not planted.exists()


_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
_FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "importlib"}


@pytest.mark.parametrize("module", [trace, digests, records])
def test_the_readers_never_unpickle_or_evaluate(module):
    tree = ast.parse(Path(module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not {n.split(".")[0] for n in names} & _FORBIDDEN_MODULES, ast.dump(node)
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            assert name not in _FORBIDDEN_CALLS, ast.unparse(node)
            if name == "load":  # torch.load, np.load (allow_pickle) and the like
                assert ast.unparse(func) in ("json.load",), ast.unparse(node)
            for keyword in node.keywords:
                assert keyword.arg != "allow_pickle", ast.unparse(node)


# ----- valid files of any shape: round trip and comparison ---------------------------------------

_OPS = ["leaf.tensor", "aten.mm.default", "aten.add_.Tensor", "aten._local_scalar_dense.default"]
_KINDS = [
    trace.OUT_HASHED,
    trace.OUT_NODATA,
    trace.OUT_UNHASHABLE,
    trace.OUT_HASHED | trace.OUT_PARTIAL,
]


@st.composite
def _stream(draw) -> list[Ev]:
    """Any valid event stream: inputs from earlier outputs or untracked, zero to two outputs,
    partial writes over earlier values."""
    events: list[Ev] = []
    made: list[tuple[int, int]] = []  # (event, slot) of every output so far
    for index in range(draw(st.integers(0, 25))):
        refs = st.sampled_from(made) | st.just((-1, 0)) if made else st.just((-1, 0))
        outputs = []
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(_KINDS))
            partial = kind & trace.OUT_PARTIAL
            prev = draw(st.sampled_from(made) | st.none()) if partial and made else None
            outputs.append((draw(st.integers(0, 3)), kind, prev))
        events.append(
            Ev(
                draw(st.sampled_from(_OPS)),
                draw(st.lists(refs, max_size=3)),
                outputs,
                args=draw(st.sampled_from(["", "1"])),
                random=draw(st.booleans()),
            )
        )
        made += [(index, slot) for slot in range(len(outputs))]
    return events


@st.composite
def _twin(draw, events: list[Ev]) -> list[Ev]:
    """Another run of the same stream: values, arguments or ops changed, or cut short."""
    twin = [Ev(e.op, list(e.inputs), list(e.outputs), e.args, random=e.random) for e in events]
    for _ in range(draw(st.integers(0, 3))):
        if not twin:
            break
        event = twin[draw(st.integers(0, len(twin) - 1))]
        what = draw(st.sampled_from(["value", "args", "op", "input"]))
        if what == "value" and event.outputs:
            slot = draw(st.integers(0, len(event.outputs) - 1))
            _, kind, prev = event.outputs[slot]
            event.outputs[slot] = (draw(st.integers(0, 3)), kind, prev)
        elif what == "args":
            event.args = "2"
        elif what == "op":
            event.op = draw(st.sampled_from(_OPS))
        elif what == "input" and event.inputs:
            event.inputs[0] = (-1, 0)
    return twin[: draw(st.integers(0, len(twin)))] if draw(st.booleans()) else twin


def _write(built: trace.Trace, path: Path, chunk: int) -> trace.Trace:
    writer = trace.TraceWriter(path, built.header)
    writer.add_strings(built.strings)
    c, ins, outs = built.columns, built.in_start, built.out_start
    for start in range(0, len(built), chunk):
        end = min(start + chunk, len(built))
        rows = {
            **dict.fromkeys(trace.EVENT_COLUMNS, (start, end)),
            **dict.fromkeys(trace.INPUT_COLUMNS, (ins[start], ins[end])),
            **dict.fromkeys(trace.OUTPUT_COLUMNS, (outs[start], outs[end])),
        }
        writer.add_chunk({name: c[name][slice(*rows[name])] for name in trace.ALL_COLUMNS})
    writer.close(built.footer)
    return trace.load(path)


@FUZZ
@given(data=st.data())
def test_any_valid_stream_round_trips_and_compares(files, data):
    events = data.draw(_stream(), label="run A")
    twin = data.draw(_twin(events), label="run B")
    chunk = data.draw(st.integers(1, 8), label="events per chunk")
    a = _write(make_trace(events), files["folder"] / "a.trace", chunk)
    b = _write(make_trace(twin), files["folder"] / "b.trace", chunk)
    built = make_trace(events)
    assert a.strings == built.strings
    for name in trace.ALL_COLUMNS:
        assert np.array_equal(a.columns[name], built.columns[name]), name
    for left, right in ((a, b), (b, a), (a, a)):
        try:
            report = compare(left, right)
        except MismatchError:
            continue
        assert report.compared_events <= min(len(left), len(right))
        if left is right:
            assert report.reproducible

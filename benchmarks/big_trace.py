"""Scale: write, load and diff two synthetic traces of a million events each.

The traces are written with TraceWriter directly, with realistic columns: a few hundred distinct
ops, modules and locations; 1-3 tensor inputs and 1-2 outputs per event, reading the outputs of
recent events; leaves, random ops, uninitialised outputs and partial in-place writes. Run B
differs from run A in one planted kernel source at 70% of the run, whose difference spreads along
the dataflow to everything downstream (as in real training). A second variant of B also has 1000
extra events right after the source: a structural break.

Prints, per variant: write time, file size and bytes per event, load time, peak memory, diff time,
load + diff total, and whether the planted source is found. Loading and diffing run in a fresh
process, so that the peak RSS is theirs alone.

    python benchmarks/big_trace.py [--events 1000000] [--json out.json] [--profile] [--keep DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bisector.trace import (
    ALL_COLUMNS,
    EVENT_COLUMNS,
    FLAG_RANDOM,
    INPUT_COLUMNS,
    OUT_HASHED,
    OUT_NODATA,
    OUT_PARTIAL,
    OUTPUT_COLUMNS,
    TraceWriter,
)

OPS, MODULES, LOCATIONS, ARGS = 300, 300, 300, 200
EVENTS_PER_STEP = 10_000
WINDOW = 64  # inputs read the outputs of the last WINDOW events
INSERTED = 1000
CHUNK_EVENTS = 16384  # as the recorder writes them


def _strings() -> list[str]:
    return (
        ["leaf.tensor", "leaf.parameter"]
        + [f"aten.op_{i:03d}.default" for i in range(OPS)]
        + [f"model.layers.{i // 10}.block_{i % 10}" for i in range(MODULES)]
        + [f"/work/project/model_{i % 7}.py:{100 + i}" for i in range(LOCATIONS)]
        + [f"T float32[{i}, 256] alpha={i % 3}" for i in range(ARGS)]
    )


def _synthesize(events: int, source: int, seed: int) -> dict[str, np.ndarray]:
    """The columns of run A (see trace.py for their meaning)."""
    rng = np.random.default_rng(seed)
    leaf = rng.random(events) < 0.01
    leaf[0], leaf[source] = True, False
    n_in = np.where(leaf, 0, rng.integers(1, 4, events))
    n_out = np.where(leaf, 1, rng.integers(1, 3, events))
    index = np.arange(events)
    c: dict[str, np.ndarray] = {
        "op": np.where(leaf, rng.integers(0, 2, events), 2 + rng.integers(0, OPS, events)),
        "module": 2 + OPS + rng.integers(0, MODULES, events),
        "location": 2 + OPS + MODULES + rng.integers(0, LOCATIONS, events),
        "args": 2 + OPS + MODULES + LOCATIONS + rng.integers(0, ARGS, events),
        "phase": np.digitize(index % EVENTS_PER_STEP / EVENTS_PER_STEP, [0.4, 0.9]),
        "step": index // EVENTS_PER_STEP,
        "n_in": n_in,
        "n_out": n_out,
        "flags": np.where(rng.random(events) < 0.01, FLAG_RANDOM, 0),
    }
    c["flags"][source] = 0
    in_start = np.concatenate([[0], np.cumsum(n_in)])
    out_start = np.concatenate([[0], np.cumsum(n_out)])

    consumer = np.repeat(index, n_in)
    back = np.minimum(rng.integers(1, WINDOW + 1, len(consumer)), consumer)
    back[rng.random(len(consumer)) < 0.02] = 0  # an untracked tensor
    producer = consumer - back
    slot = (rng.random(len(consumer)) * n_out[producer]).astype(np.int64)
    c["in_back"], c["in_slot"] = back, np.where(back > 0, slot, 0)

    rows = int(out_start[-1])
    writer = np.repeat(index, n_out)
    kind = np.full(rows, OUT_HASHED)
    kind[rng.random(rows) < 0.005] = OUT_NODATA
    # A partial in-place write (x[idx] = y) into the first output: its first input is the value
    # it overwrites, so the previous value is both an input and the write's ``prev``.
    first_row = out_start[:-1]
    partial = first_row[(~leaf) & (rng.random(events) < 0.01)]
    partial = partial[writer[partial] > 0]
    prev_back = np.zeros(rows, dtype=np.int64)
    prev_slot = np.zeros(rows, dtype=np.int64)
    kind[partial] = OUT_HASHED | OUT_PARTIAL
    prev_back[partial] = np.minimum(rng.integers(1, WINDOW + 1, len(partial)), writer[partial])
    prev_event = writer[partial] - prev_back[partial]
    prev_slot[partial] = (rng.random(len(partial)) * n_out[prev_event]).astype(np.int64)
    first_input = in_start[writer[partial]]
    c["in_back"][first_input], c["in_slot"][first_input] = prev_back[partial], prev_slot[partial]
    kind[out_start[source] : out_start[source + 1]] = OUT_HASHED  # the source is hashed
    c.update(
        out_kind=kind,
        out_fp=rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64),
        out_sum=rng.normal(size=rows),
        out_absmax=np.abs(rng.normal(size=rows)).astype(np.float32),
        out_numel=rng.integers(1, 1 << 20, rows),
        out_prev_back=prev_back,
        out_prev_slot=prev_slot,
    )
    return {name: np.ascontiguousarray(c[name], dtype) for name, dtype in ALL_COLUMNS.items()}


def _plant(a: dict[str, np.ndarray], source: int) -> tuple[dict[str, np.ndarray], int]:
    """Run B: the source's outputs differ, and so does every output that reads a differing
    value, along the dataflow. Returns B's columns and the number of differing events."""
    n_in, n_out = a["n_in"].tolist(), a["n_out"].tolist()
    in_start = np.concatenate([[0], np.cumsum(a["n_in"], dtype=np.int64)]).tolist()
    out_start = np.concatenate([[0], np.cumsum(a["n_out"], dtype=np.int64)]).tolist()
    back, slot = a["in_back"].tolist(), a["in_slot"].tolist()
    nodata = ((a["out_kind"] & OUT_NODATA) > 0).tolist()
    differs = bytearray(len(nodata))  # per output row: the value left behind differs
    for event in range(source, len(n_in)):
        first = out_start[event]
        hit = event == source
        row = in_start[event]
        while not hit and row < in_start[event] + n_in[event]:
            hit = back[row] > 0 and differs[out_start[event - back[row]] + slot[row]]
            row += 1
        if hit:
            for row in range(first, first + n_out[event]):
                differs[row] = not nodata[row]
    mask = np.frombuffer(bytes(differs), dtype=bool)
    writer = np.repeat(np.arange(len(n_in)), a["n_out"].astype(np.int64))
    events = len(np.unique(writer[mask]))  # an event of uninitialised outputs only is equal
    b = {name: column.copy() for name, column in a.items()}
    b["out_fp"][mask] ^= 0x5BD1E995
    b["out_sum"][mask] += 1e-6
    b["out_absmax"][mask] *= np.float32(1 + 1e-6)
    return b, events


def _insert(b: dict[str, np.ndarray], at: int, count: int, op: int) -> dict[str, np.ndarray]:
    """B with ``count`` extra events (op ``op``, each reading the one before) before event
    ``at``; the later events' references across the inserted ones are moved back."""
    in_at = int(b["n_in"][:at].sum())
    out_at = int(b["n_out"][:at].sum())
    ones = np.ones(count, dtype=np.int64)
    extra = {
        "op": ones * op,
        "module": ones * int(b["module"][at - 1]),
        "location": ones * int(b["location"][at - 1]),
        "args": ones * int(b["args"][at - 1]),
        "phase": ones * int(b["phase"][at - 1]),
        "step": ones * int(b["step"][at - 1]),
        "n_in": ones,
        "n_out": ones,
        "flags": 0 * ones,
        "in_back": ones,
        "in_slot": 0 * ones,
        "out_kind": ones * OUT_HASHED,
        "out_fp": np.arange(count, dtype=np.int64) * 7919,
        "out_sum": ones * 1.0,
        "out_absmax": ones * 1.0,
        "out_numel": ones * 64,
        "out_prev_back": 0 * ones,
        "out_prev_slot": 0 * ones,
    }
    later = np.arange(len(b["n_in"]) - at) + at  # original indices of the events after
    consumer = np.repeat(later, b["n_in"][at:].astype(np.int64))
    writer = np.repeat(later, b["n_out"][at:].astype(np.int64))
    in_back = b["in_back"][in_at:].astype(np.int64)
    prev_back = b["out_prev_back"][out_at:].astype(np.int64)
    in_back += np.where((in_back > 0) & (consumer - in_back < at), count, 0)
    prev_back += np.where((prev_back > 0) & (writer - prev_back < at), count, 0)
    cut = {
        **dict.fromkeys(EVENT_COLUMNS, at),
        **dict.fromkeys(INPUT_COLUMNS, in_at),
        **dict.fromkeys(OUTPUT_COLUMNS, out_at),
    }
    tail = {name: b[name][cut[name] :] for name in ALL_COLUMNS}
    tail.update(in_back=in_back, out_prev_back=prev_back)
    return {
        name: np.concatenate([b[name][: cut[name]], extra[name].astype(dtype), tail[name]]).astype(
            dtype
        )
        for name, dtype in ALL_COLUMNS.items()
    }


def _write(path: Path, strings: list[str], c: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    writer = TraceWriter(path, {"argv": ["train.py"], "cwd": "/work/project", "rank": 0})
    writer.add_strings(strings)
    in_start = np.concatenate([[0], np.cumsum(c["n_in"], dtype=np.int64)])
    out_start = np.concatenate([[0], np.cumsum(c["n_out"], dtype=np.int64)])
    events = len(c["op"])
    for first in range(0, events, CHUNK_EVENTS):
        last = min(first + CHUNK_EVENTS, events)
        bounds = {
            **dict.fromkeys(EVENT_COLUMNS, (first, last)),
            **dict.fromkeys(INPUT_COLUMNS, (in_start[first], in_start[last])),
            **dict.fromkeys(OUTPUT_COLUMNS, (out_start[first], out_start[last])),
        }
        writer.add_chunk({name: c[name][slice(*bounds[name])] for name in ALL_COLUMNS})
    writer.close({"status": "complete", "steps": int(c["step"][-1]) + 1})
    return time.perf_counter() - start


def _rss_mib() -> float:
    """Peak resident memory of this process so far. Linux's VmHWM, because ru_maxrss also counts
    the parent's pages at the fork that started this process."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(path_a: Path, path_b: Path, profile: bool) -> dict:
    """Load both traces and diff them (run in a fresh process)."""
    from bisector import analysis, trace

    baseline = _rss_mib()
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    start = time.perf_counter()
    a = trace.load(path_a)
    loaded_a = time.perf_counter()
    b = trace.load(path_b)
    loaded = time.perf_counter()
    report = analysis.compare(a, b)
    done = time.perf_counter()
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
    peak = _rss_mib()
    del a, b
    tracemalloc.start()
    trace.load(path_a)
    _, load_traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    first = report.first_divergence
    return {
        "load_a_s": round(loaded_a - start, 3),
        "load_b_s": round(loaded - loaded_a, 3),
        "diff_s": round(done - loaded, 3),
        "load_and_diff_s": round(done - start, 3),
        "rss_baseline_mib": round(baseline),
        "rss_peak_mib": round(peak),
        "load_one_traced_peak_mib": round(load_traced / 2**20),
        "first_divergence": None if first is None else [first.kind, first.event, first.op],
        "sources": [[s.kind, s.event] for s in report.sources],
        "differing_events": report.differing_events,
        "compared_events": report.compared_events,
        "structure": report.structure,
        "notes": report.notes,
    }


def _in_child(path_a: Path, path_b: Path, profile: bool) -> dict:
    command = [sys.executable, __file__, "--measure", str(path_a), str(path_b)]
    done = subprocess.run(command + ["--profile"] * profile, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"measuring failed:\n{done.stderr[-4000:]}")
    if profile:
        print(done.stderr, file=sys.stderr)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--profile", action="store_true", help="cProfile load and diff")
    parser.add_argument("--keep", type=Path, default=None, help="write the traces here")
    parser.add_argument("--measure", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.profile)))
        return

    events = args.events
    source = int(events * 0.7)
    strings = _strings()
    start = time.perf_counter()
    a = _synthesize(events, source, args.seed)
    b, spread = _plant(a, source)
    broken = _insert(b, source + 1, INSERTED, op=len(strings))
    print(f"built the columns in {time.perf_counter() - start:.1f} s")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="big-trace-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.trace" for name in ("a", "b", "b_inserted")}
    written = {
        "a": _write(paths["a"], strings, a),
        "b": _write(paths["b"], strings, b),
        "b_inserted": _write(paths["b_inserted"], [*strings, "aten.extra.default"], broken),
    }
    size = paths["a"].stat().st_size
    figures = {
        "events": events,
        "planted_source": source,
        "differing_events_planted": spread,
        "file_bytes": size,
        "bytes_per_event": round(size / events, 1),
        "write_s": round(written["a"], 3),
        "variants": {},
    }
    print(
        f"{events} events per trace; planted source at event {source}, "
        f"{spread} differing events\n"
        f"write {written['a']:.2f} s, file {size / 2**20:.1f} MiB, {size / events:.1f} B/event"
    )
    for variant in ("b", "b_inserted"):
        row = _in_child(paths["a"], paths[variant], args.profile)
        found = ["kernel", source] in row["sources"]
        row["source_found"] = found
        row["source_is_headline"] = (row["first_divergence"] or [None, None])[1] == source
        figures["variants"][variant] = row
        print(
            f"[A vs {variant}] load {row['load_a_s']:.2f} + {row['load_b_s']:.2f} s, "
            f"diff {row['diff_s']:.2f} s, load+diff {row['load_and_diff_s']:.2f} s; "
            f"peak RSS {row['rss_peak_mib']} MiB (after imports {row['rss_baseline_mib']}), "
            f"one load allocates {row['load_one_traced_peak_mib']} MiB; "
            f"source found: {found} (headline {row['first_divergence']}, sources "
            f"{row['sources'][:3]}); {row['differing_events']} differing events of "
            f"{row['compared_events']} compared; notes: {row['notes']}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not args.keep:
        for path in paths.values():
            path.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()

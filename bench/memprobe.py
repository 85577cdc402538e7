"""The fetcher with memory probes, for `bench/idle.py --probe DIR` (BENCH_FETCHER_WRAPPER).

On SIGUSR1 the process writes `DIR/probe-<n>.json`: resident memory, glibc's malloc counters (OpenSSL
and every block Python does not take from its own small-object allocator land there, outside
tracemalloc) and a census of live Python objects by type (count, sys.getsizeof sum). With
MEMPROBE_TRACEMALLOC=<frames> tracemalloc runs from the start and each probe also dumps a snapshot
(`snap-<n>.tracemalloc`) for `python -m bench.memprobe compare A B`. tracemalloc itself costs memory:
read RSS figures from a run without it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

_MALLINFO2 = [
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


def mallinfo() -> dict[str, int]:
    """glibc's heap counters: `uordblks` + `hblkhd` is what malloc has handed out and not got back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {name: int(getattr(info, name)) for name in _MALLINFO2}


def status_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmData"):
            out[key] = int(rest.split()[0])
    return out


def census(top: int = 60) -> list[tuple[str, int, int]]:
    """(type, count, bytes by sys.getsizeof) of every object the collector tracks, plus their
    untracked direct referents (str, bytes, int members), largest first."""
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    seen: set[int] = set()
    objs = gc.get_objects()
    for obj in objs:
        seen.add(id(obj))
    for obj in objs:
        for o in (obj, *(r for r in gc.get_referents(obj) if not gc.is_tracked(r))):
            if o is not obj:
                if id(o) in seen:
                    continue
                seen.add(id(o))
            name = type(o).__qualname__
            mod = type(o).__module__
            key = name if mod == "builtins" else f"{mod}.{name}"
            counts[key] += 1
            with contextlib.suppress(TypeError):
                sizes[key] += sys.getsizeof(o)
    del objs
    return [(k, counts[k], sizes[k]) for k, _ in sizes.most_common(top)]


def probe(out_dir: Path, seq: int) -> None:
    report: dict[str, Any] = {"status_kb": status_kb(), "mallinfo": mallinfo()}
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        snap.dump(str(out_dir / f"snap-{seq}.tracemalloc"))
        report["traced_bytes"] = tracemalloc.get_traced_memory()[0]
    report["census"] = census()
    (out_dir / f"probe-{seq}.json").write_text(json.dumps(report, indent=1))


def _run() -> None:
    out_dir = Path(os.environ.get("MEMPROBE_DIR", "/tmp/memprobe"))
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get("MEMPROBE_TRACEMALLOC", "0"))
    if frames:
        tracemalloc.start(frames)
    seq = [0]

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        seq[0] += 1
        probe(out_dir, seq[0])

    signal.signal(signal.SIGUSR1, on_signal)
    sys.argv = ["services.fetcher"]
    runpy.run_module("services.fetcher", run_name="__main__", alter_sys=True)


def compare(a: str, b: str, key: str = "traceback", top: str = "40") -> None:
    """What grew from snapshot `a` to `b`, grouped by `key` (filename, lineno or traceback)."""
    old = tracemalloc.Snapshot.load(a)
    new = tracemalloc.Snapshot.load(b)
    for stat in new.compare_to(old, key)[: int(top)]:
        print(f"{stat.size_diff / 1024:10.0f} KiB {stat.count_diff:8d} blocks")
        for line in stat.traceback.format()[-(16 if key == "traceback" else 2) :]:
            print("      " + line)


if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:
        compare(*sys.argv[2:])
    else:
        _run()

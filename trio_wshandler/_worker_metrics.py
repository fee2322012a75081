"""Where the workers of ``serve --workers N --metrics-path P`` share their numbers.

The workers share one port, so a scrape of ``P`` reaches whichever worker the kernel picks: it
must answer for all of them.  Each worker writes its :class:`HandlerStats` (and its CPU time and
resident memory) to a file of its own in a directory the supervisor made, every
``WRITE_INTERVAL`` seconds, by atomic rename; the worker that is scraped answers with its own
live snapshot and the others' files, each series labelled ``worker="<number>"``.  So the other
workers' figures are at most ``WRITE_INTERVAL`` old, and a scrape never waits for another
process.  A file not rewritten for ``STALE_AFTER`` seconds is of a worker that died and is
being restarted: it is left out (the restarted worker counts from zero, which Prometheus reads
as a counter reset).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from ._handler import WebSocketHandler
from ._prometheus import PrometheusHandler, Snapshot
from ._stats import HandlerStats

__all__ = ["STALE_AFTER", "WRITE_INTERVAL", "WorkerMetrics"]

#: Seconds between two writes of a worker's snapshot file.
WRITE_INTERVAL = 1.0
#: A snapshot file older than this many seconds is left out of scrapes.
STALE_AFTER = 10.0


def _process_figures() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = 0
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak instead (ru_maxrss is in KiB on Linux and BSDs)
        rss = usage.ru_maxrss * 1024
    return {"cpu_seconds": usage.ru_utime + usage.ru_stime, "resident_memory_bytes": rss}


class WorkerMetrics(PrometheusHandler):
    """The metrics of every worker of one ``serve --workers N`` (see the module docstring)."""

    def __init__(self, handler: WebSocketHandler, directory: str, number: int) -> None:
        super().__init__(handler, process_metrics=False)
        self.handler = handler
        self.directory = Path(directory)
        self.number = number
        self._scraped: list[tuple[int, dict[str, float], HandlerStats]] | None = None

    def _file(self, number: int | str) -> Path:
        return self.directory / f"worker-{number}.json"

    def write(self, snapshot: tuple[int, dict[str, float], HandlerStats] | None = None) -> None:
        """Write this worker's snapshot file (atomically: a reader never sees half of it)."""
        _, process, stats = snapshot or (self.number, _process_figures(), self.handler.stats())
        data = {
            "worker": self.number,
            "pid": os.getpid(),
            "written": time.time(),
            "process": process,
            "stats": stats.to_dict(),
        }
        temporary = self.directory / f".worker-{self.number}.json.tmp"  # not matched by scrapes
        temporary.write_text(json.dumps(data))
        temporary.replace(self._file(self.number))

    async def run(self) -> None:
        """Write the snapshot file every ``WRITE_INTERVAL`` seconds, forever."""
        while True:
            try:
                self.write()
            except OSError:
                self.handler.log_warning(
                    "worker %d: cannot write metrics to %s",
                    self.number,
                    self.directory,
                    exc_info=True,
                )
            await trio.sleep(WRITE_INTERVAL)

    def _workers(self) -> Iterator[tuple[int, dict[str, float], HandlerStats]]:
        """(number, process figures, stats) of every live worker, this one's live."""
        mine = (self.number, _process_figures(), self.handler.stats())
        # what this scrape serves is on disk first: a later scrape answered by another worker
        # never shows an older value of ours (counters only grow)
        with contextlib.suppress(OSError):
            self.write(mine)
        yield mine
        now = time.time()
        seen = {self.number}
        for path in sorted(self.directory.glob("worker-[0-9]*.json")):
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                number = int(data["worker"])
                if number in seen or now - float(data["written"]) > STALE_AFTER:
                    continue
                process = {
                    "cpu_seconds": float(data["process"]["cpu_seconds"]),
                    "resident_memory_bytes": float(data["process"]["resident_memory_bytes"]),
                }
                stats = HandlerStats.from_dict(data["stats"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # being replaced, or left by an older version: skip it
            seen.add(number)
            yield number, process, stats

    def exposition(self) -> bytes:
        self._scraped = list(self._workers())  # once per scrape, for every family
        try:
            return super().exposition()
        finally:
            self._scraped = None

    def _current(self) -> list[tuple[int, dict[str, float], HandlerStats]]:
        return self._scraped if self._scraped is not None else list(self._workers())

    def snapshots(self) -> list[Snapshot]:
        return [({"worker": str(n)}, stats) for n, _, stats in self._current()]

    def extra_families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cpu = CounterMetricFamily(
            "trio_wshandler_worker_cpu_seconds",
            "CPU time (user and system) of each worker process.",
            labels=["worker"],
        )
        memory = GaugeMetricFamily(
            "trio_wshandler_worker_resident_memory_bytes",
            "Resident memory of each worker process.",
            labels=["worker"],
        )
        for number, figures, _ in self._current():
            cpu.add_metric([str(number)], figures["cpu_seconds"])
            memory.add_metric([str(number)], figures["resident_memory_bytes"])
        yield cpu
        yield memory

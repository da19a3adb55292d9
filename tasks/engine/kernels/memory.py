"""What a kernel uses, cell by cell, and the memory limit that stops a cell in time.

A ``MemoryWatch`` follows the kernel's process tree (the kernel and what it started)
while a run goes: every ``SAMPLE_SECONDS`` it reads their resident memory, keeping the
run's peak and the running cell's; at each cell's end the cell's peak and CPU seconds go
into its report. The kernel process's own high-water mark (``VmHWM``, reset per cell
through ``/proc/PID/clear_refs``) catches a peak that rose and fell between two samples.

With a limit, the sample that finds the tree at or over it interrupts the running cell
(SIGINT, as Jupyter's interrupt button); a cell that does not stop within
``KILL_AFTER_SECONDS`` has its kernel killed. Either way the run reports
``MemoryLimitError`` for that cell, never a kernel the OOM killer took.

Prefect-free, like the rest of the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from notebook_jobs.blocks.sizes import size_text
from notebook_jobs.tasks.models import Resources

SAMPLE_SECONDS = 0.1
KILL_AFTER_SECONDS = 3.0  # a cell interrupted at the limit has this long to stop

Action = Callable[[], Awaitable[None]]


@dataclass
class CellUsage:
    """What one cell used: its peak resident memory and CPU seconds (the tree's)."""

    peak_memory_bytes: int | None
    cpu_seconds: float | None


@dataclass
class MemoryWatch:
    """The kernel's memory and CPU, per run and per cell (see the module).

    Attributes:
        limit_bytes: Stop the cell whose kernel tree reaches this; None: no limit.
        pid: The kernel's process, once started.
        peak: The highest resident memory of the tree seen in the run.
        cell: The running cell (its index in the input notebook).
        cell_peak: The highest seen since the running cell started.
        exceeded: The memory seen at or over the limit, once it was.
        exceeded_cell: The cell that was running then.
    """

    limit_bytes: int | None = None
    pid: int | None = None
    peak: int = 0
    cell: int | None = None
    cell_peak: int = 0
    exceeded: int | None = None
    exceeded_cell: int | None = None
    _cell_cpu: float | None = field(default=None, repr=False)

    def sample(self) -> int | None:
        """The tree's resident memory now (None once the kernel is gone); peaks updated."""
        if self.pid is None:
            return None
        rss = tree_rss(self.pid)
        if rss is None:
            return None
        self.peak = max(self.peak, rss)
        self.cell_peak = max(self.cell_peak, rss)
        return rss

    def start_cell(self, index: int | None) -> None:
        """A cell starts: its peak and CPU count from now (two reads of ``/proc``)."""
        self.cell = index
        _reset_high_water_mark(self.pid)
        self.cell_peak = 0
        self._cell_cpu = _cpu_seconds(self.pid)

    def end_cell(self) -> CellUsage:
        """The cell ended: what it used. A cell whose peak passed the limit between two
        samples is over it too."""
        own = _high_water_mark(self.pid)  # the kernel's own peak since the cell began
        self.cell_peak = max(self.cell_peak, own)
        self.peak = max(self.peak, self.cell_peak)
        if (
            self.limit_bytes is not None
            and self.exceeded is None
            and self.cell_peak >= self.limit_bytes
        ):
            self.exceeded, self.exceeded_cell = self.cell_peak, self.cell
        cpu, before = _cpu_seconds(self.pid), self._cell_cpu
        self.cell = None
        return CellUsage(
            peak_memory_bytes=self.cell_peak or None,
            cpu_seconds=round(cpu - before, 3) if cpu is not None and before is not None else None,
        )

    def resources(self) -> Resources | None:
        """The run's peak memory and CPU seconds, read before the kernel is shut down."""
        cpu = _cpu_seconds(self.pid)
        if cpu is None:
            return None
        self.peak = max(self.peak, _high_water_mark(self.pid))
        return Resources(peak_memory_bytes=self.peak or None, cpu_seconds=round(cpu, 3))

    def limit_message(self) -> str:
        """``cell 4 used 2.1 GiB of its 2 GiB limit``."""
        assert self.exceeded is not None and self.limit_bytes is not None
        return (
            f"cell {self.exceeded_cell} used {size_text(self.exceeded)} of its "
            f"{size_text(self.limit_bytes)} limit"
        )

    async def follow(self, interrupt: Action, kill: Action) -> None:
        """Sample until the kernel is gone; at the limit, interrupt the cell, then kill
        the kernel if the cell has not stopped within ``KILL_AFTER_SECONDS``."""
        while True:
            rss = self.sample()
            if rss is None:
                return
            if self.limit_bytes is not None and self.exceeded is None and rss >= self.limit_bytes:
                self.exceeded, self.exceeded_cell = rss, self.cell
                running = self.cell
                await interrupt()
                await asyncio.sleep(KILL_AFTER_SECONDS)
                if self.cell == running and self.cell is not None:
                    await kill()
            await asyncio.sleep(SAMPLE_SECONDS)


_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The process's children, from each of its threads' ``children`` file."""
    found: list[int] = []
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/children") as children:
                found += [int(child) for child in children.read().split()]
    except OSError:  # ended meanwhile
        pass
    return found


def tree_rss(pid: int) -> int | None:
    """Resident memory of the process and its descendants; None if it is gone.

    Read from ``/proc`` directly: psutil's ``children(recursive=True)`` reads every
    process of the machine, 3 to 16 ms here against 0.1 ms for a kernel's tree.
    """
    total, todo, root = 0, [pid], True
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as statm:
                total += int(statm.read().split()[1]) * _PAGE
        except OSError:
            if root:
                return None
            continue  # a child that ended meanwhile
        root = False
        todo += _children(current)
    return total


def _cpu_seconds(pid: int | None) -> float | None:
    """User and system CPU seconds of the process and its ended children."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after the command: state, ppid, ... utime (14th field), stime, cutime, cstime
    return sum(int(value) for value in fields[11:15]) / _TICKS


def _high_water_mark(pid: int | None) -> int:
    """The process's own peak resident memory (``VmHWM``), 0 if unknown."""
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_high_water_mark(pid: int | None) -> None:
    """Start the process's ``VmHWM`` again from its current memory (Linux: ``5`` to
    ``/proc/PID/clear_refs``); where that is refused, sampling alone measures."""
    if pid is None:
        return
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")

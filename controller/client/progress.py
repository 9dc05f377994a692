"""Progress of long work, for a person watching and for a log: the command line's side.

On a terminal (stderr is a tty, or a rich Console that is a terminal is given)
`Reporter` draws rich progress bars; otherwise it writes plain lines, one per step
(`lab up: hv3: OVS up ... (3/10)`) or one per tenth of a count (`tenant create: blue:
workloads plugged 12/30`), never a line per refresh. Progress goes to stderr, so
`--json` on stdout stays clean. `follow_change` polls the controller's `progress`
operation (controller/server/progress.py) on a second connection while a change's own
request blocks.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

POLL_INTERVAL = 0.3  # seconds between two `progress` requests while a change runs


class Task:
    """One bar (terminal) or one kind of line (plain). lines: "each" = a line per
    advance (steps: hosts, scenario steps, bench suites); "tenth" = a line per tenth of
    the total and at the end (counts: workloads); "end" = one line when it completes."""

    def __init__(self, rep: "Reporter", description: str, total: int | None, lines: str):
        self.rep, self.description, self.total, self.lines = rep, description, total, lines
        self.done = 0
        self.t0 = time.monotonic()
        self._tenth = 0
        self._ended = False
        self._id = rep._rich.add_task(description, total=total, text="") if rep._rich is not None else None

    def update(self, completed: int | None = None, total: int | None = None, text: str | None = None) -> None:
        """Set the count (and total); `text` is the current sub-step, shown on a terminal
        only (a plain log gets lines for finished steps, not for every sub-step)."""
        if total is not None:
            self.total = total
        if completed is not None:
            self.done = completed
        if self.rep._rich is not None:
            fields = {} if text is None else {"text": text}
            self.rep._rich.update(self._id, total=total, completed=completed, **fields)
            return
        if completed is None or self.lines == "each" or not self.total or self._ended:
            return
        tenth = self.done * 10 // self.total
        if self.done >= self.total:
            self._ended = True
            self.rep._line(f"{self.description} {self.done}/{self.total}")
        elif self.lines == "tenth" and tenth > self._tenth:
            self._tenth = tenth
            self.rep._line(f"{self.description} {self.done}/{self.total}")

    def advance(self, text: str | None = None) -> None:
        """One more step done; `text` says which (a plain line: 'TEXT (3/10)')."""
        self.done += 1
        if self.rep._rich is not None:
            self.rep._rich.update(self._id, advance=1, **({} if text is None else {"text": text}))
            return
        if self.lines != "each":
            return self.update(completed=self.done)
        count = f"{self.done}/{self.total}" if self.total else f"step {self.done} at {time.monotonic() - self.t0:.1f}s"
        self.rep._line(f"{text or self.description} ({count})")


class Reporter:
    """Progress for one command: `with Reporter("lab up") as rep: t = rep.task(...)`.
    `console`: a rich Console to draw on (tests give one); else stderr (`stream`), drawn
    on when it is a terminal and written to line by line when it is not."""

    def __init__(self, label: str, console=None, stream=None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self._rich = None
        self._lock = threading.Lock()
        terminal = console.is_terminal if console is not None else _isatty(self.stream)
        if terminal:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)
            self._rich = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[text]}"),
                console=console if console is not None else Console(file=self.stream),
                # prints to stdout show above the bars only when stdout is the same terminal:
                # a piped stdout (--json | jq) must not be drawn into stderr
                redirect_stdout=_isatty(sys.stdout), redirect_stderr=False)
        elif console is not None:
            self.stream = console.file

    @property
    def terminal(self) -> bool:
        return self._rich is not None

    def __enter__(self) -> "Reporter":
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()

    def task(self, description: str, total: int | None = None, lines: str = "tenth") -> Task:
        if self._rich is not None:
            description = f"{self.label}: {description}"
        return Task(self, description, total, lines)

    def note(self, text: str) -> None:
        """A line of its own: above the bars, or one plain line (a `log=` for the lab)."""
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            self._write(text)

    def _line(self, text: str) -> None:
        self._write(f"{self.label}: {text}")

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed pipe: progress is not worth failing for
                pass


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# a change followed from the command line -----------------------------------------------------

class ChangeView:
    """`progress` snapshots of one change drawn as bars: workloads plugged, hosts synced."""

    def __init__(self, rep: Reporter, tenant: str):
        self.rep, self.tenant = rep, tenant
        self.workloads: Task | None = None
        self.hosts: Task | None = None

    def show(self, snap: dict | None) -> None:
        if not snap:
            return
        w, h = snap["workloads"], snap["hosts"]
        if w["total"]:
            if self.workloads is None:
                self.workloads = self.rep.task(f"{self.tenant}: workloads plugged", w["total"], lines="tenth")
            self.workloads.update(completed=w["done"], total=w["total"], text=snap["phase"])
        if h["total"]:
            if self.hosts is None:
                self.hosts = self.rep.task(f"{self.tenant}: hosts synced", h["total"], lines="end")
            self.hosts.update(completed=h["done"], total=h["total"], text=snap["phase"])


def follow_change(run, poll, rep: Reporter, tenant: str, interval: float = POLL_INTERVAL):
    """run(): the change's own request (blocks until it is done); poll(after=N): the
    `progress` operation for this tenant. Shows the change's progress while run() blocks
    and its final figures when it returns; returns run()'s result. A controller without
    the `progress` operation just runs the change."""
    try:
        base = poll(after=0)  # the tenant's last change before ours (or None)
    except Exception:
        return run()
    after = base["seq"] if base else 0
    view = ChangeView(rep, tenant)
    stop = threading.Event()

    def poller():
        while not stop.wait(interval):
            try:
                snap = poll(after=after)
            except Exception:  # one slow or failed poll: the next one
                continue
            if not stop.is_set():
                view.show(snap)
    th = threading.Thread(target=poller, name="progress", daemon=True)
    th.start()
    try:
        result = run()
    finally:
        stop.set()
        th.join(timeout=2)  # a poll stuck on a failing-over cluster is left behind, not waited for
    try:
        view.show(poll(after=after))
    except Exception as e:  # noqa: BLE001 - the change is made; only its final figures are missing
        logging.getLogger("nvctl.progress").debug("final progress not read: %s", e)
    return result

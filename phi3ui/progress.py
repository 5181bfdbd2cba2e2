"""How far a model's preparation (download, export, load) has got, for the terminal, the
page and `/health` alike.

The loading thread reports; any thread reads a `Snapshot`:

    progress = Preparation("microsoft/Phi-3-mini-4k-instruct", emit=log.info)
    progress.plan("Loading", "Warming up")
    progress.stage("Loading")
    progress.snapshot().describe()  # 'Loading microsoft/… (stage 1 of 2, 3 s so far)'

Nothing here imports Gradio or an engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)
TRANSFER_LOG_EVERY_S = 5.0  # how often the terminal hears about a download's bytes


def size_text(count: float) -> str:
    """Bytes as people read them: '1.4 GB', '512 MB', '12 kB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def duration_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class Progress:
    """What a long preparation reports: stages, bytes and lines. This one only passes lines
    on (to the terminal, or an event's stream); `Preparation` also keeps them for readers.
    Plain callables (`print`, `log.info`) are accepted wherever a `Progress` is: `of` wraps them."""

    def __init__(self, emit: Callable[[str], None] = log.info, clock: Callable[[], float] = time.monotonic):
        self.emit = emit
        self._clock = clock
        self._transfer_lock = threading.Lock()  # downloads report from several threads
        self._logged_transfer = -TRANSFER_LOG_EVERY_S

    @staticmethod
    def of(progress: Progress | Callable[[str], None]) -> Progress:
        return progress if isinstance(progress, Progress) else Progress(progress)

    def __call__(self, line: str) -> None:
        self.emit(line)

    def plan(self, *stages: str) -> None:
        """Stages still to come, before those planned earlier that have not begun."""

    def stage(self, name: str) -> None:
        self(f"{name}…")

    def transfer(self, done: int, total: int) -> None:
        """Bytes of the current stage's download so far: a line now and then, and at the end."""
        with self._transfer_lock:
            now = self._clock()
            due = now - self._logged_transfer >= TRANSFER_LOG_EVERY_S or bool(total and done >= total)
            if due:
                self._logged_transfer = now
        if due:
            self.emit(f"{size_text(done)} of {size_text(total)} downloaded")


@dataclass(frozen=True)
class Snapshot:
    """The preparation as it stood when read."""

    model: str
    stage: str
    number: int  # the current stage, from 1; 0 before the first
    stages: int
    seconds: float  # since the preparation began
    done_bytes: int = 0
    total_bytes: int = 0
    line: str = ""  # the last thing the work said
    failure: str = ""  # why it failed, once it has
    finished: bool = False
    notice: str = ""  # a way round a problem it took (the bundled model instead)

    @property
    def active(self) -> bool:
        return not self.finished and not self.failure

    def describe(self) -> str:
        """One line for a visitor: what, stage k of n, bytes, time so far."""
        if self.failure:
            return f"Preparing {self.model} failed: {self.failure}"
        where = f"stage {self.number} of {self.stages}, " if self.number else ""
        transfer = (f"{size_text(self.done_bytes)} of {size_text(self.total_bytes)}, "
                    if self.total_bytes else "")
        return f"{self.stage or 'Preparing'} {self.model} ({where}{transfer}{duration_text(self.seconds)} so far)"

    def as_dict(self) -> dict:
        """For `/health` and 503 answers."""
        return {"model": self.model, "stage": self.stage, "stage_number": self.number, "stages": self.stages,
                "seconds": round(self.seconds, 1), "bytes_done": self.done_bytes, "bytes_total": self.total_bytes,
                "detail": self.line, "failure": self.failure, "notice": self.notice}


class Preparation(Progress):
    """A preparation readers can follow from other threads: everything it is told is kept
    under a lock, and each line also goes to `emit` (the terminal shows what the page shows)."""

    def __init__(self, model: str, emit: Callable[[str], None] = log.info, clock: Callable[[], float] = time.monotonic):
        super().__init__(emit, clock)
        self.model = model
        self._began = clock()
        self._lock = threading.Lock()
        self._stages: list[str] = []
        self._current = -1
        self._bytes = (0, 0)
        self._line = ""
        self._failure = ""
        self._notice = ""
        self._finished = False

    def __call__(self, line: str) -> None:
        with self._lock:
            self._line = line
        self.emit(line)

    def plan(self, *stages: str) -> None:
        with self._lock:
            self._stages[self._current + 1:self._current + 1] = stages

    def stage(self, name: str) -> None:
        with self._lock:
            later = self._stages[self._current + 1:]
            if name in later:
                self._current += 1 + later.index(name)
            else:  # unplanned: it comes now
                self._current += 1
                self._stages.insert(self._current, name)
            self._bytes, self._line = (0, 0), ""
        self.emit(self.snapshot().describe())

    def transfer(self, done: int, total: int) -> None:
        with self._lock:
            self._bytes = (done, total)
        super().transfer(done, total)

    def instead(self, model: str, notice: str, keep: tuple[str, ...] = ()) -> None:
        """It goes on with another model; `notice` says why. Of the stages still to come, only
        those in `keep` stay planned (the new model plans its own)."""
        with self._lock:
            self.model, self._notice = model, notice
            done, later = self._stages[:self._current + 1], self._stages[self._current + 1:]
            self._stages = done + [stage for stage in later if stage in keep]

    def fail(self, reason: str) -> None:
        with self._lock:
            self._failure = reason

    def finish(self) -> None:
        with self._lock:
            self._finished = True

    def snapshot(self) -> Snapshot:
        with self._lock:
            stage = self._stages[self._current] if self._current >= 0 else ""
            return Snapshot(self.model, stage, self._current + 1, len(self._stages), self._clock() - self._began,
                            *self._bytes, line=self._line, failure=self._failure, finished=self._finished,
                            notice=self._notice)

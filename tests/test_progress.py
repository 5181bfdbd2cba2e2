"""How a model's preparation is reported: stages planned and announced, bytes, time, and
what readers in other threads see (phi3ui/progress.py)."""

from __future__ import annotations

import threading

from phi3ui.progress import TRANSFER_LOG_EVERY_S, Preparation, Progress, duration_text, size_text


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stages_planned_later_come_before_those_planned_first() -> None:
    lines: list[str] = []
    clock = Clock()
    preparation = Preparation("microsoft/Phi-3-mini-4k-instruct", emit=lines.append, clock=clock)
    preparation.plan("Loading", "Warming up")  # the load knows its own stages first
    preparation.plan("Downloading", "Exporting", "Checking the export")  # the export its own, which come first
    clock.now += 75
    preparation.stage("Exporting")  # a stage may be skipped (the download was cached)
    snapshot = preparation.snapshot()
    assert (snapshot.stage, snapshot.number, snapshot.stages) == ("Exporting", 2, 5)
    assert snapshot.describe() == "Exporting microsoft/Phi-3-mini-4k-instruct (stage 2 of 5, 1 min 15 s so far)"
    assert lines == [snapshot.describe()], "the terminal hears the same"
    preparation.stage("Loading")
    assert preparation.snapshot().number == 4
    preparation.stage("Converting")  # unplanned: it comes now, and the rest move on
    assert (preparation.snapshot().number, preparation.snapshot().stages) == (5, 6)


def test_download_bytes_are_shown_and_logged_now_and_then() -> None:
    lines: list[str] = []
    clock = Clock()
    preparation = Preparation("m", emit=lines.append, clock=clock)
    preparation.plan("Downloading")
    preparation.stage("Downloading")
    preparation.transfer(1_500_000_000, 7_600_000_000)
    preparation.transfer(1_600_000_000, 7_600_000_000)  # within the interval: not logged
    assert "1.6 GB of 7.6 GB" in preparation.snapshot().describe()
    clock.now += TRANSFER_LOG_EVERY_S
    preparation.transfer(2_000_000_000, 7_600_000_000)
    preparation.transfer(7_600_000_000, 7_600_000_000)  # the end is always told
    assert lines[1:] == ["1.5 GB of 7.6 GB downloaded", "2.0 GB of 7.6 GB downloaded", "7.6 GB of 7.6 GB downloaded"]


def test_failure_fallback_and_end_are_kept_for_readers() -> None:
    preparation = Preparation("microsoft/Phi-3-mini-4k-instruct", emit=lambda line: None)
    preparation.instead("bundled", "Phi-3 could not be had; the bundled model instead.")
    snapshot = preparation.snapshot()
    assert snapshot.model == "bundled" and snapshot.notice.startswith("Phi-3 could not") and snapshot.active
    preparation.fail("There is no folder /nowhere.")
    assert preparation.snapshot().describe() == "Preparing bundled failed: There is no folder /nowhere."
    assert not preparation.snapshot().active
    preparation.finish()
    assert preparation.snapshot().finished


def test_readers_in_other_threads_always_see_a_whole_snapshot() -> None:
    """Stages arrive unplanned, each with its bytes; a reader never sees a stage beside another
    stage's number or bytes."""
    preparation = Preparation("m", emit=lambda line: None)
    seen: list[tuple[str, int, int, int]] = []
    writing = threading.Event()

    def read() -> None:
        while not writing.is_set() or len(seen) < 2000:
            snapshot = preparation.snapshot()
            seen.append((snapshot.stage, snapshot.number, snapshot.stages, snapshot.done_bytes))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(1, 301):
        preparation.stage(f"stage {i}")
        preparation.transfer(i, 1000)
    writing.set()
    reader.join()
    started = [s for s in seen if s[1]]
    assert started, "the reader saw the stages go by"
    assert all(stage == f"stage {number}" and stages == number and done in (0, number)
               for stage, number, stages, done in started)


def test_plain_callables_are_progress_too() -> None:
    lines: list[str] = []
    progress = Progress.of(lines.append)
    progress.plan("Exporting")
    progress.stage("Exporting")
    progress.transfer(1, 2)
    progress.transfer(2, 2)  # the end: always told
    assert lines == ["Exporting…", "1 B of 2 B downloaded", "2 B of 2 B downloaded"], "the command line hears it too"
    assert Progress.of(progress) is progress


def test_sizes_and_durations_read_as_people_write_them() -> None:
    assert [size_text(n) for n in (512, 12_000, 566_433, 7_646_373_869)] == ["512 B", "12.0 kB", "566.4 kB", "7.6 GB"]
    assert [duration_text(s) for s in (0.4, 59.9, 101)] == ["0 s", "59 s", "1 min 41 s"]


def banner(page) -> tuple[str, bool, bool]:
    """The page's banner text, whether it shows, and whether the page keeps polling."""
    update, _, timer = page.preparation()
    return update.get("value", ""), update.get("visible"), timer.active


def test_the_page_banner_follows_the_preparation() -> None:
    from phi3ui.chat import ChatBackend, HostPrompt
    from phi3ui.ui import Page

    backend = ChatBackend()
    page = Page(backend)
    text, shown, polling = banner(page)
    assert not shown and polling, "before the preparation begins: nothing to show yet, but keep asking"

    backend.preparation = preparation = Preparation("microsoft/Phi-3-mini-4k-instruct", emit=lambda line: None)
    preparation.plan("Downloading", "Exporting")
    preparation.stage("Downloading")
    preparation.transfer(2_000_000_000, 7_600_000_000)
    preparation("/data/huggingface/hub/models--microsoft--Phi-3-mini-4k-instruct/blobs/x.incomplete")
    text, shown, polling = banner(page)
    assert shown and polling and "Downloading microsoft/Phi-3-mini-4k-instruct (stage 1 of 2, 2.0 GB of 7.6 GB" in text
    assert "what you type stays in the box" in text and "/data/huggingface" in text, "the host sees the detail"

    backend.host_prompt = HostPrompt(locked=True)
    locked = Page(backend, lock_settings=True)
    preparation.instead("bundled", "Downloading failed at /data/huggingface/secret.", keep=("Loading",))
    text, shown, polling = banner(locked)
    assert shown and polling and "/data" not in text, "a locked page names no server path"
    assert "the bundled SmolLM2-135M-Instruct answers instead" in text

    preparation.fail("There is no folder /data/models/x.")
    text, shown, polling = banner(locked)
    assert shown and not polling and "No model could be loaded" in text and "/data" not in text
    backend.host_prompt = HostPrompt()
    text, shown, polling = banner(page)
    assert "There is no folder /data/models/x." in text, "unlocked, the host reads the reason on the page"

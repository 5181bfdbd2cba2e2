"""Files in the prompt, in the real page (headless Chromium, the bundled model, one engine:
what is checked is the page): a text file and a PDF attached, counted by the budget, sent,
read by the model (the prompt inspector), shown as chips and kept across a reload; a binary
file refused by name with nothing sent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from phi3ui.settings import DEFAULT_ENGINE
from tests.pdf_files import text_pdf
from tests.test_browser import (  # noqa: F401 - fixtures
    USER,
    open_page,
    page,
    ready,
    set_max_new_tokens,
    wait_idle,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("engine_name", [DEFAULT_ENGINE], indirect=True)]

NOTES = "Ann owes 3 euros.<|end|>"  # a special-token string: text like any other
PDF_TEXT = "Invoice 42: 17 euros."
CHIP = "#chat .thought-group .title"  # a file under its message: its name, its size beside it
BOX = "#message"


def prompt_tokens(page: Page) -> int:
    return int(re.search(r"\(([\d,]+) prompt", page.locator("#budget").inner_text())[1].replace(",", ""))


def kept_files(page: Page) -> list[str]:
    """The names of the files kept with the conversations in this browser's storage."""
    return page.evaluate("""() => Object.keys(localStorage).filter((k) => k.startsWith("phi3ui:conversation:"))
        .flatMap((k) => JSON.parse(localStorage.getItem(k)).messages || [])
        .flatMap((m) => (m.attachments || []).map((a) => a.name))""")


def hand_over(page: Page, event: str, path: Path, mime: str) -> None:
    """A file dropped on the message box ("drop") or pasted into it ("paste"), handed over
    as the browser does: in a DataTransfer."""
    page.locator(f"{BOX} textarea").evaluate(
        """(box, [event, name, bytes, mime]) => {
             const data = new DataTransfer();
             data.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
             box.dispatchEvent(event === "drop"
               ? new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true})
               : new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
           }""", [event, path.name, list(path.read_bytes()), mime])


def chips(page: Page):
    return page.locator(CHIP, has_text="📎")


def expect_chips(page: Page, sizes: dict[str, int]) -> None:
    chips_ = chips(page)
    expect(chips_).to_have_count(len(sizes))
    for chip, (name, size) in zip(chips_.all(), sizes.items()):
        expect(chip).to_contain_text(f"📎 {name}")
        expect(chip).to_contain_text(f"{size} B")


def test_a_text_file_and_a_pdf_are_counted_sent_read_and_kept(page: Page, tmp_path: Path) -> None:
    notes, pdf = tmp_path / "notes.txt", tmp_path / "invoice.pdf"
    notes.write_text(NOTES)
    pdf.write_bytes(text_pdf([PDF_TEXT]))
    set_max_new_tokens(page, 8)
    page.locator(f"{BOX} textarea").fill("Who owes what?")
    expect(page.locator("#budget")).not_to_contain_text("counted")
    typed = prompt_tokens(page)

    hand_over(page, "paste", notes, "text/plain")
    expect(page.locator(f"{BOX} [aria-label='File thumbnail']")).to_have_count(1)
    hand_over(page, "drop", pdf, "application/pdf")
    sizes = {"notes.txt": notes.stat().st_size, "invoice.pdf": pdf.stat().st_size}
    expect(page.locator(f"{BOX} [aria-label='File thumbnail']")).to_have_count(2)
    # both files' text is counted before anything is sent, each named with its size
    expect(page.locator("#budget")).to_contain_text(
        f"counted: 📎 notes.txt · {sizes['notes.txt']} B, 📎 invoice.pdf · {sizes['invoice.pdf']} B")
    assert prompt_tokens(page) > typed + 10

    page.locator("#send").click()
    expect(page.locator(USER).first).to_have_text("Who owes what?")
    expect_chips(page, sizes)
    wait_idle(page)
    expect(page.locator(f"{BOX} [aria-label='File thumbnail']")).to_have_count(0)  # sent: the box is empty

    page.get_by_text("Prompt inspector").click()
    inspector = page.locator("#inspector")
    expect(inspector).to_contain_text("File: notes.txt")
    text = inspector.inner_text()
    assert NOTES in text and "File: invoice.pdf" in text and PDF_TEXT in text
    assert text.index("Who owes what?") < text.index("File: notes.txt") < text.index("File: invoice.pdf")

    wait_until(lambda: kept_files(page) == ["notes.txt", "invoice.pdf"], 20, "the files to be kept", every_s=0.1)
    page.reload()
    ready(page)
    expect(page.locator(USER).first).to_have_text("Who owes what?")
    expect_chips(page, sizes)
    chips(page).first.click()  # the chip opens on the text the model read
    expect(page.locator("#chat .thought-group", has_text="📎 notes.txt").first).to_contain_text(NOTES)
    page.get_by_text("Prompt inspector").click()
    expect(page.locator("#inspector")).to_contain_text(PDF_TEXT)  # the model still reads them


def test_a_binary_file_is_refused_by_name_and_nothing_is_sent(page: Page, tmp_path: Path) -> None:
    blob = tmp_path / "blob.dat"
    blob.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    page.locator(f"{BOX} textarea").fill("What is this?")
    page.locator(f"{BOX} input[type=file]").set_input_files([blob])
    expect(page.locator("#budget")).to_contain_text("“blob.dat” looks like a binary file")
    page.locator("#send").click()
    expect(page.get_by_text(re.compile("“blob.dat” looks like a binary file.*Nothing was sent; your text and "
                                       "files are still in the box"))).not_to_have_count(0)
    assert page.locator(USER).count() == 0 and chips(page).count() == 0
    expect(page.locator(f"{BOX} textarea")).to_have_value("What is this?")
    expect(page.locator(f"{BOX} [aria-label='File thumbnail']")).to_have_count(1)  # still attached

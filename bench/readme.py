"""Copy the benchmark results into bench/README.md, between its `<!-- bench:NAME -->` markers.

    python -m bench.readme

chat: bench/results/README-section.md (`python -m bench.bench`); concurrency:
bench/results/concurrency.md (`python -m bench.concurrency`); decode: the part of
bench/NOTES.md between its `<!-- README -->` markers (the hand-written summary of
`python -m bench.decode`'s sessions); lookup: bench/results/lookup.md (`python -m bench.lookup`);
long_chat: the summaries of bench/results/long_chat*.md (`python -m bench.long_chat`);
memory: bench/results/memory.md and memory-breakdown.md (`python -m bench.memory`); scale_out: bench/results/scale_out.md (`python -m bench.scale_out`); startup:
bench/results/startup.md (`python -m bench.startup`).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NOTES = ROOT / "bench" / "NOTES.md"
PAGE = ROOT / "bench" / "README.md"


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def sections() -> dict[str, str]:
    """Each block of the page, its links relative to bench/."""
    chat = (RESULTS / "README-section.md").read_text().replace("## Benchmark\n", "## Multi-turn chat\n", 1)
    chat = chat.replace("](bench/results/", "](results/")
    concurrency = (RESULTS / "concurrency.md").read_text()
    decode = between(NOTES.read_text(), "<!-- README -->", "<!-- /README -->")
    lookup = (RESULTS / "lookup.md").read_text()
    scale_out = (RESULTS / "scale_out.md").read_text()
    startup = (RESULTS / "startup.md").read_text()
    memory = (RESULTS / "memory.md").read_text() + "\n" + (RESULTS / "memory-breakdown.md").read_text()
    return {"chat": chat, "concurrency": concurrency, "decode": decode, "lookup": lookup,
            "long_chat": long_chats(), "memory": memory, "scale_out": scale_out, "startup": startup}


def long_chats() -> str:
    """Each long-chat run's heading, command, summary table and plot; the per-turn tables
    stay in bench/results."""
    parts = ["## Long chats past the context window", "",
             "The same chat twice through the app's backend, each turn adding a ~70-token message and a "
             "forced-length answer: \"before\" leaves out the fewest old exchanges each turn (the old "
             "behaviour), \"after\" is the app's policy (cut to half the window, keep the cut). Computed "
             "tokens are the prompt minus the start the engine had already read (its token memory); "
             "the fit shows they explain the time to first token.", ""]
    for path in sorted(RESULTS.glob("long_chat*.md")):
        head, rest = path.read_text().split("\n\n", 1)
        summary = rest.split("\n| turn |", 1)[0].strip()
        parts += [head.replace("# ", "### ", 1), "", summary, "",
                  f"![Time to first token and tokens per turn](results/{path.stem}.png)", "",
                  f"Every turn: [results/{path.name}](results/{path.name}).", ""]
    return "\n".join(parts)


def filled(page: str) -> str:
    """`page` with every `<!-- bench:NAME -->` block replaced by the current results."""
    readme = page
    for name, text in sections().items():
        marker = rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->"
        if not re.search(marker, readme, flags=re.S):
            raise SystemExit(f"bench/README.md has no <!-- bench:{name} --> markers")
        readme = re.sub(marker, lambda _: f"<!-- bench:{name} -->\n{text.strip()}\n<!-- /bench:{name} -->",
                        readme, flags=re.S)
    return readme


def main() -> int:
    PAGE.write_text(filled(PAGE.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

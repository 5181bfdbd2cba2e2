"""Copy the benchmark results into README.md, between its `<!-- bench:NAME -->` markers.

    python bench/readme.py

chat: bench/results/README-section.md (bench/bench.py); concurrency:
bench/results/concurrency.md (bench/concurrency.py); decode: the part of
bench/results/decode.md between its `<!-- README -->` markers (the hand-written summary of
bench/decode.py's sessions); lookup: bench/results/lookup.md (bench/lookup.py).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def sections() -> dict[str, str]:
    """Each README block, its headings moved one level down under README's '## Benchmarks'."""
    chat = (RESULTS / "README-section.md").read_text().replace("## Benchmark\n", "### Multi-turn chat\n", 1)
    chat = re.sub(r"^### (?!Multi-turn chat)", "#### ", chat, flags=re.M)
    concurrency = (RESULTS / "concurrency.md").read_text().replace("## ", "### ", 1)
    decode = between((RESULTS / "decode.md").read_text(), "<!-- README -->", "<!-- /README -->")
    decode = re.sub(r"^### ", "#### ", decode, flags=re.M)
    lookup = (RESULTS / "lookup.md").read_text().replace("## ", "### ", 1)
    return {"chat": chat, "concurrency": concurrency, "decode": decode, "lookup": lookup}


def main() -> int:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    for name, text in sections().items():
        marker = rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->"
        if not re.search(marker, readme, flags=re.S):
            raise SystemExit(f"README.md has no <!-- bench:{name} --> markers")
        readme = re.sub(marker, lambda _: f"<!-- bench:{name} -->\n{text.strip()}\n<!-- /bench:{name} -->",
                        readme, flags=re.S)
    readme_path.write_text(readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

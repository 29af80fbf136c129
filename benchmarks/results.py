"""Writing a benchmark's section of RESULTS.md: replaced in place when it is there, appended otherwise."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def record(section: str, results_file: Path = RESULTS) -> None:
    """`section` starts with its `## ` heading; the old section runs up to the next `## ` heading."""
    heading = section.splitlines()[0]
    text = results_file.read_text(encoding="utf-8") if results_file.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section.rstrip("\n").splitlines() + ([""] if end < len(lines) else [])
    else:
        lines += ["", *section.rstrip("\n").splitlines()]
    results_file.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")

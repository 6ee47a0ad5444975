"""What every bench script does with its table: print it, and write it to its file under bench/results/."""

from __future__ import annotations

from pathlib import Path


def publish(text: str, output: Path) -> None:
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)

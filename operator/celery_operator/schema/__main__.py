"""Regenerate crds/*.yaml and docs/crd-reference.md: `python -m celery_operator.schema [REPO_ROOT]`."""

from __future__ import annotations

import sys
from pathlib import Path

from celery_operator.schema import reference_markdown, write_crds


def generate(repo: Path) -> list[Path]:
    written = write_crds(repo / "crds")
    doc = repo / "docs" / "crd-reference.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(reference_markdown())
    return [*written, doc]


def main(argv: list[str]) -> int:
    repo = Path(argv[0]) if argv else Path.cwd()
    for path in generate(repo):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

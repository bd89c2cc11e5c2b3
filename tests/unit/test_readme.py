"""The README stays true to the code it describes."""

from __future__ import annotations

from pathlib import Path

from celery_operator import api, metrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_documents_every_exported_metric() -> None:
    missing = [m for m in sorted(metrics.ALL_METRIC_NAMES) if f"`{m}`" not in README]
    assert missing == []


def test_readme_names_every_kind_and_its_short_name() -> None:
    for kind, (_, _, short) in api.KINDS.items():
        assert f"`{kind}` (`{short}`)" in README


def test_readme_quick_start_names_the_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick

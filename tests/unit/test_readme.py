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


def test_readme_states_the_queue_policys_name_pattern_and_priority() -> None:
    from celery_operator.brokers import rabbitmq

    section = README.split("## Queue settings that can change", 1)[1].split("\n## ", 1)[0]
    assert f"| name | `{rabbitmq.policy_name('<queue>')}`" in section
    assert f"| priority | {rabbitmq.POLICY_PRIORITY} |" in section
    assert f"| apply-to | `{rabbitmq.POLICY_APPLY_TO}` |" in section
    assert rabbitmq.policy_pattern("a.b") == r"^a\.b$"


def test_readme_names_every_settings_reason() -> None:
    for reason in (api.Reason.POLICY_NOT_APPLIED, api.Reason.UNSUPPORTED_BY_BROKER,
                   api.Reason.VISIBILITY_TIMEOUT_TOO_SHORT, api.Reason.PREFETCH_HIDES_BACKLOG):
        assert f"`{reason}`" in README

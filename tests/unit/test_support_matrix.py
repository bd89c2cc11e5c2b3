"""The README's support table and promise agree with the matrix `make test` runs (dev/localenv/matrix.py)."""

from __future__ import annotations

from typing import Any

from localenv import matrix


def result(celery: str, python: str, scenarios: list[str], pools: list[str]) -> dict[str, Any]:
    return {"case": f"py{python}-celery{celery}", "celery_minor": celery, "python_minor": python,
            "soft_shutdown": celery >= "5.5", "scenarios": scenarios, "pools": pools,
            "python": f"{python}.0", "celery": f"{celery}.0", "kombu": f"{celery}.0"}


def test_readme_promises_the_declared_python_celery_and_pools() -> None:
    text = matrix.README.read_text()
    celery = list(matrix.CELERY)
    assert f"**Python {matrix.PYTHONS[0]} to {matrix.PYTHONS[-1]}**" in text
    assert f"**Celery {celery[0]} to {celery[-1]}, each" in text
    assert f"**{', '.join(matrix.POOLS[:-1])} and {matrix.POOLS[-1]}** pools" in text


def test_readme_table_has_a_row_per_declared_celery_minor_with_its_python_range() -> None:
    rows = [line.split("|")[1:-1] for line in matrix.readme_table(matrix.README.read_text()).splitlines()[2:]]
    assert [r[0].strip() for r in rows] == [f"{c} ({k})" for c, (k, _) in matrix.CELERY.items()]
    assert [r[1].strip() for r in rows] == [f"{oldest} to {matrix.PYTHONS[-1]}" for _, oldest in matrix.CELERY.values()]


def test_table_lists_a_python_only_when_worker_and_beat_passed_and_a_pool_only_when_it_passed_on_each() -> None:
    results = matrix.merge([
        result("5.7", "3.10", ["worker"], ["prefork"]), result("5.7", "3.10", ["beat"], []),
        result("5.7", "3.10", ["pool:gevent"], ["gevent"]),
        result("5.7", "3.13", ["worker"], ["prefork"]), result("5.7", "3.13", ["beat"], []),
        result("5.3", "3.9", ["worker"], ["prefork"]),  # beat did not pass: 5.3 is not listed
    ])
    [_header, _rule, row] = matrix.table(results).splitlines()
    assert row.startswith("| 5.7 (5.7) | 3.10 to 3.13 | 3.10, 3.13 | prefork | prefork: soft shutdown")


def test_warm_shutdown_is_the_documented_sigterm_before_celery_5_5() -> None:
    results = matrix.merge([result("5.4", "3.9", ["worker", "beat"], ["prefork"])])
    assert "| warm shutdown (no soft shutdown in this Celery)" in matrix.table(results)
    assert [c.soft_shutdown for c in (matrix.Case("3.9", "5.4", ()), matrix.Case("3.9", "5.5", ()))] == [False, True]

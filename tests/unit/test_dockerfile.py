"""The operator's Dockerfile: structure (dockerfile-parse), hadolint, checkov, and a buildable context."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from localenv.images import context_files
from localenv.procs import REPO
from tests.fixtures.delivery import CHART
from tests.unit.test_chart_checkov import run_checkov

DOCKERFILE = REPO / "Dockerfile"
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|python3?-dev|libc6?-dev)\b")


def stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions grouped by stage (comments dropped)."""
    out: list[list[dict[str, Any]]] = []
    for ins in DockerfileParser(str(DOCKERFILE)).structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if ins["instruction"] != "COMMENT" and out:
            out[-1].append(ins)
    return out


def values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, REPO / "sample_tasks" / "Dockerfile"], ids=["operator", "sample"])
def test_image_is_multi_stage_on_a_base_given_as_build_argument_defaulting_to_a_pinned_slim_python(
        dockerfile: Path) -> None:
    """Every stage builds FROM ${BASE_IMAGE}: the public pinned python image by default, the local
    Debian-built one in the test cluster (dev/localenv/images.py), with the Dockerfile unchanged."""
    parsed = DockerfileParser(str(dockerfile))
    assert parsed.is_multistage
    args = [i["value"] for i in parsed.structure if i["instruction"] == "ARG" and i["value"].startswith("BASE_IMAGE=")]
    assert len(args) == 1
    assert re.fullmatch(r"BASE_IMAGE=python:3\.11\.\d+-slim-(bookworm|trixie)", args[0]), args[0]
    froms = [i["value"] for i in parsed.structure if i["instruction"] == "FROM"]
    assert len(froms) >= 2
    for value in froms:
        assert re.fullmatch(r"\$\{BASE_IMAGE\}( AS \w+)?", value), value


def test_wheels_are_built_in_the_first_stage_and_installed_offline_in_the_last() -> None:
    first, *_, last = stages()
    assert any("pip wheel" in r and "--wheel-dir /wheels" in r for r in values(first, "RUN"))
    build_name = first[0]["value"].split(" AS ")[1]
    installs = [r for r in values(last, "RUN") if "pip install" in r]
    assert installs
    for run in installs:
        assert "--no-index" in run
        assert f"from={build_name}" in run
    assert not values(last, "COPY") or all("--from=" in c for c in values(last, "COPY"))


def test_final_stage_runs_as_the_numeric_non_root_user_the_chart_expects() -> None:
    user = values(stages()[-1], "USER")[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), user
    uid = int(user.split(":")[0])
    assert uid != 0
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert uid == chart_values["podSecurityContext"]["runAsUser"] == chart_values["securityContext"]["runAsUser"]


def test_final_stage_installs_no_compiler() -> None:
    for run in values(stages()[-1], "RUN"):
        assert not COMPILERS.search(run), run
        assert "apt-get install" not in run


def test_entrypoint_is_celery_operator_run_in_exec_form() -> None:
    entrypoint = values(stages()[-1], "ENTRYPOINT")[-1]
    assert json.loads(entrypoint) == ["celery-operator", "run"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "celery-operator" in scripts


def test_image_carries_the_oci_labels() -> None:
    labels = DockerfileParser(str(DOCKERFILE)).labels
    for key in ("title", "description", "source", "licenses", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    license_ = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert labels["org.opencontainers.image.licenses"] == license_


def test_image_exposes_the_port_the_chart_probes() -> None:
    port = yaml.safe_load((CHART / "values.yaml").read_text())["port"]
    assert values(stages()[-1], "EXPOSE") == [str(port)]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "sample_tasks/Dockerfile", "dev/images/flower/Dockerfile"])
def test_hadolint_passes(hadolint: str, dockerfile: str) -> None:
    path = REPO / dockerfile
    if not path.exists():
        pytest.fail(f"{dockerfile} missing")
    out = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_checkov_passes_the_operator_dockerfile_with_skips_explained(checkov: str, helm: str) -> None:
    report = run_checkov(checkov, helm, ["-f", str(DOCKERFILE), "--framework", "dockerfile"])
    assert report["summary"]["passed"] > 0
    assert not [c["check_id"] for c in report["results"]["failed_checks"]]
    for skipped in report["results"]["skipped_checks"]:
        assert (skipped["check_result"].get("suppress_comment") or "").strip(), skipped["check_id"]


def build_context() -> list[str]:
    """What `docker build .` sends (the image builder's own reading of .dockerignore)."""
    return sorted(f.relative_to(REPO).as_posix() for f in context_files(REPO))


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    context = build_context()
    first = stages()[0]
    sources = [s for c in values(first, "COPY") for s in c.split()[:-1]]
    for src in sources:
        assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in context), f"{src} not in context"
    assert not [f for f in context if f.startswith(("tests/", "dev/", "charts/", "deploy/", "sample_tasks/"))]
    assert not [f for f in context if "__pycache__" in f or ".egg-info/" in f]


def test_build_context_builds_the_operator_wheel(tmp_path: Path) -> None:
    """The first stage's `pip wheel .`, run on exactly the files the context sends."""
    ctx = tmp_path / "ctx"
    for rel in build_context():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, ctx / rel)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir",
                          str(tmp_path / "wheels"), str(ctx)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("celery_operator-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "celery_operator/api.py" in names
    assert "celery-operator = celery_operator.cli:main" in entry_points

"""The pod runner's image table (dev/localenv/images.py) says what each Dockerfile's final stage says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from localenv.images import OPERATOR_IMAGE, SAMPLE_TASKS_IMAGE, default_images
from localenv.procs import REPO


def final_stage(dockerfile: Path) -> dict[str, list[str]]:
    """Instruction -> values, for the last FROM's stage only."""
    stage: dict[str, list[str]] = {}
    for ins in DockerfileParser(str(dockerfile)).structure:
        if ins["instruction"] == "FROM":
            stage = {}
        stage.setdefault(ins["instruction"], []).append(ins["value"])
    return stage


@pytest.mark.parametrize(("image", "dockerfile"), [(SAMPLE_TASKS_IMAGE, "sample_tasks/Dockerfile"),
                                                   (OPERATOR_IMAGE, "Dockerfile")])
def test_image_table_mirrors_the_dockerfile(image: str, dockerfile: str) -> None:
    path = REPO / dockerfile
    if not path.exists():
        pytest.fail(f"{dockerfile} missing")
    stage = final_stage(path)
    env = default_images({})[image]
    assert list(env.entrypoint) == json.loads(stage["ENTRYPOINT"][-1])
    assert list(env.cmd) == (json.loads(stage["CMD"][-1]) if "CMD" in stage else [])
    assert env.working_dir == stage["WORKDIR"][-1]
    assert dict(env.env) == DockerfileParser(str(path)).envs


def test_sample_image_runs_as_the_uid_the_operator_gives_its_pods() -> None:
    from celery_operator.render.pod import DEFAULT_POD_SECURITY_CONTEXT

    user = final_stage(REPO / "sample_tasks" / "Dockerfile")["USER"][-1]
    assert user == f"{DEFAULT_POD_SECURITY_CONTEXT['runAsUser']}:{DEFAULT_POD_SECURITY_CONTEXT['runAsGroup']}"

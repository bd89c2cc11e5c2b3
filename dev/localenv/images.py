"""Which local environment stands in for a container image, for the local pod runner.

There is no container runtime here, so an image is mapped to a Python virtualenv whose ``bin``
goes first on the pod's PATH, plus what the image's Dockerfile would contribute (ENTRYPOINT,
CMD, ENV). The table is explicit: an image not in it is an error, never a silent guess.

Override or extend the table with ``LOCALENV_IMAGE_VENVS="repo=dir,repo=dir"`` (relative dirs
are resolved against the repo root); ``LOCALENV_VENV`` replaces the default venv (``.venv``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TASKS_IMAGE = "ghcr.io/celery-operator/sample-tasks"
OPERATOR_IMAGE = "ghcr.io/celery-operator/celery-operator"
ENV_IMAGE_VENVS = "LOCALENV_IMAGE_VENVS"
ENV_DEFAULT_VENV = "LOCALENV_VENV"
# What a Debian-based python image puts on PATH after the venv.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


_PYTHON_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


class UnknownImageError(LookupError):
    """The image has no local environment in the table."""


@dataclass(frozen=True)
class ImageEnv:
    """The parts of an image a pod runner needs: where its programs are and its defaults."""

    venv: Path
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str = "/"
    stop_signal: str = "SIGTERM"

    @property
    def path(self) -> str:
        return f"{self.venv / 'bin'}:{SYSTEM_PATH}"

    def base_env(self) -> dict[str, str]:
        """The image's ENV: what a container starts with before the pod's own env."""
        return {"PATH": self.path, "LANG": "C.UTF-8", **self.env}


def repository(image: str) -> str:
    """``image`` without tag or digest, with Docker Hub's implicit registry spelled out.

    >>> repository("ghcr.io/celery-operator/sample-tasks:0.1.0@sha256:ab")
    'ghcr.io/celery-operator/sample-tasks'
    >>> repository("python:3.11")
    'docker.io/library/python'
    """
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name = name[:colon]
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{first}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def _resolve(d: str) -> Path:
    p = Path(d)
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


def default_images(environ: Mapping[str, str] | None = None) -> dict[str, ImageEnv]:
    """The table: the project's two images, both run from the repo's venv, plus env overrides."""
    environ = os.environ if environ is None else environ
    venv = _resolve(environ.get(ENV_DEFAULT_VENV, ".venv"))
    table = {
        # Each mirrors its Dockerfile's final stage (tests/unit/test_images_match_dockerfiles.py).
        SAMPLE_TASKS_IMAGE: ImageEnv(
            venv=venv,
            entrypoint=("celery",),
            cmd=("-A", "sample_tasks.app", "worker", "--loglevel=INFO"),
            env={**_PYTHON_ENV, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            working_dir="/app",
        ),
        OPERATOR_IMAGE: ImageEnv(
            venv=venv,
            entrypoint=("celery-operator", "run"),
            env={**_PYTHON_ENV, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HOME": "/tmp"},
            working_dir="/tmp",
        ),
    }
    for entry in filter(None, (e.strip() for e in environ.get(ENV_IMAGE_VENVS, "").split(","))):
        repo, sep, d = entry.partition("=")
        if not sep or not repo or not d:
            raise ValueError(f"{ENV_IMAGE_VENVS}: expected repo=dir, got {entry!r}")
        repo = repository(repo)
        known = table.get(repo)
        table[repo] = replace(known, venv=_resolve(d)) if known else ImageEnv(venv=_resolve(d))
    return table


def image_env(image: str, table: Mapping[str, ImageEnv] | None = None) -> ImageEnv:
    """The local environment for ``image``, or UnknownImageError naming what is known."""
    table = default_images() if table is None else table
    repo = repository(image)
    try:
        found = table[repo]
    except KeyError:
        known = ", ".join(sorted(table)) or "(none)"
        raise UnknownImageError(
            f"image {image!r} (repository {repo!r}) has no local environment; known: {known}. "
            f"Add one with {ENV_IMAGE_VENVS}='{repo}=/path/to/venv'"
        ) from None
    if not (found.venv / "bin").is_dir():
        raise UnknownImageError(f"image {image!r} maps to {found.venv}, which has no bin/ directory")
    return found

"""The producer wiring: one rendering shared by the CLI, the example and the workers' own pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator import api, cli
from celery_operator.offline import render_documents

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "sample_tasks" / "topology"
EXAMPLE = REPO / "examples" / "producer.yaml"


def _patch(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert cli.main(["producer-patch", *args]) == 0
    return dict(yaml.safe_load(capsys.readouterr().out))


def test_producer_patch_mounts_the_config_like_workers_and_reads_urls_from_the_same_secrets(
        capsys: pytest.CaptureFixture[str]) -> None:
    patch = _patch(capsys, str(TOPOLOGY), "--container", "web")
    spec = patch["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert c["name"] == "web"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env == {api.ENV_BROKER_URL: {"secretKeyRef": {"name": "proj-broker", "key": "url"}},
                   api.ENV_RESULT_BACKEND: {"secretKeyRef": {"name": "proj-result-backend", "key": "url"}},
                   api.ENV_APP: "sample_tasks.app", "PYTHONPATH": api.CONFIG_MOUNT_PATH}
    # The same volume, mount and Secrets as the app's workers.
    docs = render_documents([d for f in sorted(TOPOLOGY.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())])
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "proj-high")
    worker_spec = worker["spec"]["template"]["spec"]
    assert spec["volumes"][0] in worker_spec["volumes"]
    assert c["volumeMounts"][0] in worker_spec["containers"][0]["volumeMounts"]
    assert [e for e in c["env"] if "valueFrom" in e] == [
        e for e in worker_spec["containers"][0]["env"] if "valueFrom" in e]


def test_external_broker_without_result_backend_names_the_users_secret(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = {"apiVersion": api.API_VERSION, "kind": api.APP, "metadata": {"name": "shop"},
           "spec": {"image": "shop:1", "app": "shop.celery:app",
                    "broker": {"external": {"urlSecretRef": {"name": "amqp", "key": "uri"}}}}}
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(app))
    [c] = _patch(capsys, str(tmp_path), "--container", "api")["spec"]["template"]["spec"]["containers"]
    assert [e["name"] for e in c["env"]] == [api.ENV_BROKER_URL, api.ENV_APP, "PYTHONPATH"]
    assert c["env"][0]["valueFrom"] == {"secretKeyRef": {"name": "amqp", "key": "uri"}}
    assert c["env"][1]["value"] == "shop.celery:app"


def test_producer_example_carries_exactly_the_rendered_wiring(capsys: pytest.CaptureFixture[str]) -> None:
    patch = _patch(capsys, str(TOPOLOGY), "--container", "web")["spec"]["template"]["spec"]
    example = yaml.safe_load(EXAMPLE.read_text())["spec"]["template"]["spec"]
    [want] = patch["containers"]
    [have] = example["containers"]
    assert have["name"] == want["name"]
    assert have["env"] == want["env"]
    assert have["volumeMounts"] == want["volumeMounts"]
    assert example["volumes"] == patch["volumes"]


def test_producer_patch_needs_one_app(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("kind: ConfigMap\n")
    with pytest.raises(SystemExit, match="need exactly one CeleryApp; found: none"):
        cli.main(["producer-patch", str(tmp_path), "--container", "web"])

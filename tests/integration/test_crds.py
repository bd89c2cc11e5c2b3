"""The generated CRDs against a real kube-apiserver: install, samples, explain, printer columns,
the scale subresource, server-side defaulting = `apply_defaults`, and the invalid corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator import api
from celery_operator.schema import apply_defaults, crd
from celery_operator.schema.examples import EXAMPLES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "sample_tasks" / "topology"
MINIMAL = REPO / "examples" / "minimal.yaml"
INVALID = sorted((REPO / "tests" / "invalid").glob("*.yaml"))


def ours(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("apiVersion") == api.API_VERSION]


def sample_objects() -> list[dict[str, Any]]:
    return [d for p in sorted(TOPOLOGY.glob("*.yaml")) for d in ours(p)]


def get(kubectl: Any, ns: str, kind: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "-n", ns, f"{api.plural(kind)}.{api.GROUP}", name, "-o", "json").stdout
    return dict(json.loads(out))


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_crd_is_established_with_a_structural_schema(kubectl: Any, crds_installed: Path, kind: str) -> None:
    name = crd(kind)["metadata"]["name"]
    got = json.loads(kubectl("get", "crd", name, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert "NonStructuralSchema" not in conditions
    assert got["status"]["acceptedNames"]["categories"] == [api.CATEGORY]


def test_sample_topology_and_minimal_example_apply(kubectl: Any, crds_installed: Path, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(TOPOLOGY))
    kubectl("apply", "-n", namespace, "-f", str(MINIMAL))
    for obj in [*sample_objects(), *ours(MINIMAL)]:
        assert get(kubectl, namespace, obj["kind"], obj["metadata"]["name"])["spec"]


def test_reference_examples_apply(kubectl: Any, crds_installed: Path, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(EXAMPLES.values()))


MINIMAL_POOL = {"apiVersion": api.API_VERSION, "kind": api.POOL, "metadata": {"name": "bare"},
                "spec": {"appRef": {"name": "proj"}, "queues": ["celery"]}}
DEFAULTING_SETS = {
    "samples": lambda: [*sample_objects(), *ours(MINIMAL)],
    "examples": lambda: [*EXAMPLES.values(), MINIMAL_POOL],
}


@pytest.mark.parametrize("which", list(DEFAULTING_SETS))
def test_server_defaults_equal_apply_defaults(
        kubectl: Any, crds_installed: Path, namespace: str, which: str) -> None:
    """Objects read back from the server equal the offline defaulting of what was sent."""
    objs = DEFAULTING_SETS[which]()
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objs))
    for obj in objs:
        served = get(kubectl, namespace, obj["kind"], obj["metadata"]["name"])
        assert served["spec"] == apply_defaults(obj["kind"], obj)["spec"], obj["metadata"]["name"]


def test_minimal_pool_reads_back_with_every_default_filled(
        kubectl: Any, crds_installed: Path, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(MINIMAL_POOL))
    spec = get(kubectl, namespace, api.POOL, "bare")["spec"]
    assert spec == {"appRef": {"name": "proj"}, "queues": ["celery"], "replicas": 1, "concurrency": 2,
                    "pool": "prefork", "prefetchMultiplier": 1, "terminationGracePeriodSeconds": 60,
                    "maxWorkerDeaths": 2, "stuckAfterSeconds": 60}
    assert spec == apply_defaults(api.POOL, MINIMAL_POOL)["spec"]


def test_kubectl_explain_prints_autoscaling_descriptions(kubectl: Any, crds_installed: Path) -> None:
    out = kubectl("explain", "celeryworkerpool.spec.autoscaling", "--api-version", api.API_VERSION).stdout
    assert "Scale the pool's replicas on its queues' depth" in out
    assert "maxReplicas" in out
    assert "-required-" in out
    assert "Scale down to the highest recommendation of this window" in out


def test_kubectl_get_celery_lists_every_sample_with_printer_columns(
        kubectl: Any, crds_installed: Path, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(TOPOLOGY))
    out = kubectl("get", api.CATEGORY, "-n", namespace).stdout
    for obj in sample_objects():
        assert f"{api.KINDS[obj['kind']][1]}.{api.GROUP}/{obj['metadata']['name']} " in out
    headers = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("NAME")}
    assert headers  # one table per kind
    for row in headers.values():
        assert row[-3:] == ["READY", "REASON", "AGE"]
    pools = kubectl("get", "celeryworkerpools", "-n", namespace).stdout
    assert pools.splitlines()[0].split()[:6] == ["NAME", "QUEUES", "DESIRED", "CURRENT", "AVAILABLE", "DEPTH"]
    assert "low_queue" in pools


def test_kubectl_scale_sets_pool_spec_replicas(kubectl: Any, crds_installed: Path, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(TOPOLOGY / "30-workerpools.yaml"))
    kubectl("scale", "-n", namespace, "celeryworkerpool/high", "--replicas=3")
    assert get(kubectl, namespace, api.POOL, "high")["spec"]["replicas"] == 3


def test_status_subresource_ignores_spec_and_keeps_status(
        kubectl: Any, crds_installed: Path, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(TOPOLOGY / "30-workerpools.yaml"))
    status = {"status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 1, "selector": "a=b",
                         "depthSource": "management", "conditions": [
                             {"type": api.READY, "status": "False", "reason": api.Reason.DEPLOYMENT_PROGRESSING,
                              "message": "1/2 ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    kubectl("patch", "-n", namespace, "celeryworkerpool/high", "--subresource=status", "--type=merge",
            "-p", json.dumps(status))
    got = get(kubectl, namespace, api.POOL, "high")
    assert got["status"]["readyReplicas"] == 1
    assert got["status"]["conditions"][0]["reason"] == api.Reason.DEPLOYMENT_PROGRESSING
    out = kubectl("get", "-n", namespace, "celeryworkerpool", "high").stdout
    assert "DeploymentProgressing" in out.splitlines()[1]


def test_queue_settings_a_policy_applies_may_change_and_a_renamed_queue_may_change_type(
        kubectl: Any, crds_installed: Path, namespace: str) -> None:
    """The transition rules forbid only what RabbitMQ fixes at declare time, and only for the same queue."""
    queue = {"apiVersion": api.API_VERSION, "kind": api.QUEUE, "metadata": {"name": "jobs"},
             "spec": {"appRef": {"name": "proj"}, "messageTTLSeconds": 60, "maxLength": 10, "maxPriority": 5}}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(queue))
    queue["spec"].update(messageTTLSeconds=120, deadLetter={"exchange": "dlx"})
    del queue["spec"]["maxLength"]
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(queue))
    queue["spec"].update(name="jobs_v2", queueType="quorum", durable=True)
    del queue["spec"]["maxPriority"]
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(queue))
    spec = get(kubectl, namespace, api.QUEUE, "jobs")["spec"]
    assert (spec["name"], spec["queueType"], spec["messageTTLSeconds"], "maxLength" in spec) == (
        "jobs_v2", "quorum", 120, False)


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_object_is_rejected_with_a_message_that_names_the_fix(
        kubectl: Any, crds_installed: Path, namespace: str, path: Path) -> None:
    """All documents but the last must apply (setup for update rules); the last must be rejected."""
    text = path.read_text()
    expect = text.splitlines()[0].removeprefix("# expect: ").strip()
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs[:-1]:
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    r = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(docs[-1]), check=False)
    assert r.returncode != 0, f"{path.name} was accepted:\n{r.stdout}"
    assert expect in r.stderr

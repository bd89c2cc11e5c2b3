"""Files generated from the chart and crds/ are up to date (dev/gen-manifests.sh regenerates them)."""

from __future__ import annotations

import subprocess

import yaml

import gen_manifests
from celery_operator import api
from localenv.binaries import cache_dir
from localenv.procs import REPO
from tests.fixtures.delivery import CHART, NAMESPACE, tool_missing

DEPLOY = REPO / "deploy"


def test_chart_crd_copy_matches_the_crds_directory() -> None:
    source = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    copy = {p.name: p.read_text() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert source, "crds/ holds no CRDs"
    assert copy == source, "charts/celery-operator/files/crds is stale: run dev/gen-manifests.sh"


def test_deploy_directory_matches_a_fresh_generation(helm: str) -> None:
    problems = gen_manifests.check(helm)
    assert not problems, "deploy/ is stale: run dev/gen-manifests.sh\n" + "\n".join(problems)


def test_check_reports_a_hand_edited_deploy_file() -> None:
    """Guards the test above: a diff between two trees is reported."""
    fresh = {"a.yaml": "x: 1\n", "b.yaml": "y: 2\n"}
    edited = {"a.yaml": "x: 2\n", "c.yaml": "z: 3\n"}
    problems = gen_manifests.diff_trees(fresh, edited)
    assert any("missing: b.yaml" in p for p in problems)
    assert any("stale" in p and "c.yaml" in p for p in problems)
    assert "+x: 1" in problems


def test_kustomization_lists_every_generated_manifest_exactly_once() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml")
               if p.parent.name != "argocd" and p.name != "kustomization.yaml"}
    assert set(listed) == on_disk


def test_kustomize_build_of_deploy_yields_the_chart_objects_plus_the_namespace(helm: str) -> None:
    kubectl = cache_dir() / "bin" / "kubectl"
    if not kubectl.exists():
        tool_missing("kubectl", "run dev/build-binaries.sh")
    built = subprocess.run([str(kubectl), "kustomize", str(DEPLOY)], check=True, capture_output=True, text=True)
    objects = [o for o in yaml.safe_load_all(built.stdout) if o]
    rendered = [o for _, o in gen_manifests.split_documents(gen_manifests.helm_template(helm))]

    def key(o: dict[str, object]) -> tuple[str, str]:
        meta = o["metadata"]
        assert isinstance(meta, dict)
        return (str(o["kind"]), str(meta["name"]))

    namespace = next(o for o in objects if o["kind"] == "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert sorted(map(key, objects)) == sorted([*map(key, rendered), ("Namespace", NAMESPACE)])
    by_key = {key(o): o for o in objects}
    for o in rendered:
        assert by_key[key(o)] == o


def test_argocd_patch_registers_the_health_check_for_every_kind() -> None:
    patch = yaml.safe_load((DEPLOY / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["metadata"]["name"] == "argocd-cm"
    lua = (DEPLOY / "argocd" / "health.lua").read_text()
    assert patch["data"] == {f"resource.customizations.health.{api.GROUP}_{kind}": lua for kind in api.KINDS}


def test_install_doc_values_table_matches_values_yaml() -> None:
    doc = (REPO / "docs" / "install.md").read_text()
    values = (CHART / "values.yaml").read_text()
    assert gen_manifests.with_values_table(doc, values) == doc, "run dev/gen-manifests.sh"
    documented = {name for name, _ in gen_manifests.documented_values(values)}
    assert {"replicaCount", "watchNamespaces", "crds.keep", "image.tag"} <= documented

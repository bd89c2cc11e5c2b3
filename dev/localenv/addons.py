"""The node's add-ons, applied as any cluster's are: CoreDNS, the local-path provisioner and Prometheus
Operator's PodMonitor CRD (the clusters the chart targets have it; the operator renders a PodMonitor per app
where it is served, so it is there from the start rather than installed under tests already running).

Manifests live in `dev/addons/`; `${NAME}` placeholders are filled from the running node.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from localenv.controlplane import ControlPlane
from localenv.procs import REPO, ServerError, wait_until

ADDONS_DIR = REPO / "dev" / "addons"
# namespace/deployment that must be Available before the cluster is handed over
DEPLOYMENTS = (("kube-system", "coredns"), ("local-path-storage", "local-path-provisioner"))
POD_MONITOR_CRD = ADDONS_DIR / "monitoring.coreos.com_podmonitors.yaml"
POD_MONITOR_CRD_NAME = "podmonitors.monitoring.coreos.com"


def render(name: str, values: dict[str, str]) -> str:
    text = string.Template((ADDONS_DIR / f"{name}.yaml").read_text()).safe_substitute(values)
    left = re.findall(r"\$\{[A-Z_]+\}", text)
    if left:
        raise ServerError(f"dev/addons/{name}.yaml: no value for {', '.join(sorted(set(left)))}")
    return text


def apply(cp: ControlPlane, *, coredns_image: str, cluster_dns_ip: str, cluster_domain: str,
          provisioner_image: str, helper_image: str, volumes_dir: Path) -> None:
    cp.kubectl("apply", "-f", "-", input=render("coredns", {
        "IMAGE": coredns_image, "CLUSTER_DNS_IP": cluster_dns_ip, "CLUSTER_DOMAIN": cluster_domain}))
    cp.kubectl("apply", "-f", "-", input=render("local-path-storage", {
        "IMAGE": provisioner_image, "HELPER_IMAGE": helper_image, "VOLUMES_DIR": str(volumes_dir)}))
    apply_pod_monitor_crd(cp)


def apply_pod_monitor_crd(cp: ControlPlane) -> None:
    # Server-side: the CRD is larger than the last-applied annotation client-side apply would write.
    cp.kubectl("apply", "--server-side", "-f", str(POD_MONITOR_CRD))


def crd_established(cp: ControlPlane, name: str) -> bool:
    # (`kubectl wait` fails outright on a CRD whose status the API server has not written yet.)
    status, body = cp.api_get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    conditions = (json.loads(body).get("status") or {}).get("conditions") or [] if status == 200 else []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def wait_available(cp: ControlPlane, timeout: float = 120) -> None:
    wait_until(lambda: crd_established(cp, POD_MONITOR_CRD_NAME), timeout, f"{POD_MONITOR_CRD_NAME} Established")
    for ns, name in DEPLOYMENTS:
        r = cp.kubectl("rollout", "status", f"deployment/{name}", "-n", ns, f"--timeout={int(timeout)}s",
                       check=False, timeout=timeout + 10)
        if r.returncode != 0:
            pods = cp.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
            events = cp.kubectl("get", "events", "-n", ns, check=False).stdout
            raise ServerError(f"{ns}/{name} not available: {r.stderr}\n{pods}\n{events[-3000:]}")

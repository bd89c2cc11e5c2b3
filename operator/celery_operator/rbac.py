"""Every Kubernetes permission the operator needs, in one place.

The chart's RBAC is generated from this module (`dev/gen_manifests.py` writes
`charts/celery-operator/files/rbac/`), and the end-to-end tests run the operator under exactly
that RBAC (a token of the chart's ServiceAccount), so a call missing here fails a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from celery_operator import api


@dataclass(frozen=True)
class Rule:
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"apiGroups": list(self.groups), "resources": list(self.resources), "verbs": list(self.verbs)}


_PLURALS = tuple(plural for plural, _, _ in api.KINDS.values())
_WRITE = ("get", "list", "watch", "create", "patch", "update", "delete")

# Granted in every watched namespace (a ClusterRole in all-namespaces mode, else one Role per namespace).
NAMESPACED: Final = (
    Rule((api.GROUP,), _PLURALS, ("get", "list", "watch", "patch", "update"),
         "watch the custom resources; kopf patches finalizers and its annotations"),
    Rule((api.GROUP,), tuple(f"{p}/status" for p in _PLURALS), ("patch", "update"),
         "write status.conditions and the observed fields"),
    Rule(("apps",), ("deployments", "statefulsets"), _WRITE,
         "worker and beat Deployments, managed broker StatefulSets (server-side apply)"),
    Rule(("apps",), ("deployments/scale",), ("get", "patch", "update"),
         "the autoscaler sets a pool's replicas through the scale subresource"),
    Rule(("",), ("services", "configmaps", "secrets"), _WRITE,
         "the generated Celery config, managed broker Services and credentials; broker URLs from Secrets"),
    Rule(("",), ("pods", "persistentvolumeclaims"), ("get", "list", "watch"),
         "pod and claim failures (image pull, crash loop, unschedulable, unbound) become pool and app conditions"),
    Rule(("",), ("pods",), ("patch",),
         "before a scale-in: worker pods' pod-deletion-cost (idle workers go first), the mark of drained ones"),
    Rule(("",), ("persistentvolumeclaims",), ("delete",),
         "a managed server whose storage changed: its claims that never bound are replaced"),
    Rule((api.MONITORING_GROUP,), (api.POD_MONITOR_PLURAL,), _WRITE,
         "each app's PodMonitor scraping its worker and beat pods, where Prometheus Operator is installed"),
    Rule(("",), ("serviceaccounts",), _WRITE, "each app's beat runs as a ServiceAccount of its own"),
    Rule(("rbac.authorization.k8s.io",), ("roles", "rolebindings"), _WRITE,
         "beat's Role (its state ConfigMap and its Lease, by name: BEAT below) and its binding"),
    Rule(("coordination.k8s.io",), ("leases",), _WRITE,
         "each app's beat Lease (beat renews it; the operator creates it and must hold what beat's Role grants)"),
    Rule(("networking.k8s.io",), ("ingresses",), _WRITE, "each app's Flower Ingress (spec.flower.ingress)"),
    Rule(("",), ("events",), ("create", "patch", "list"),
         "Events on the custom resources; a claim's Events say why it does not bind"),
    Rule(("events.k8s.io",), ("events",), ("create", "patch"), "kopf posts events.k8s.io Events"),
)

# Cluster-scoped reads kopf needs in every mode: CRD discovery, and namespaces for all-namespaces watching.
CLUSTER_READ: Final = (
    Rule(("apiextensions.k8s.io",), ("customresourcedefinitions",), ("get", "list", "watch"),
         "kopf discovers the CRDs it serves"),
    Rule(("",), ("namespaces",), ("get", "list", "watch"), "kopf follows namespaces in all-namespaces mode"),
)

# Leader election: the Lease in the operator's own namespace.
LEASE: Final = (
    Rule(("coordination.k8s.io",), ("leases",), ("get", "list", "watch", "create", "update", "patch"),
         "leader election"),
)

# What each app's beat may do, granted by a Role the operator creates in the app's namespace, each rule
# restricted to the one object of its resource (render/beat.py: the state ConfigMap, the Lease). The
# operator can only grant what it holds itself: NAMESPACED includes all of it.
BEAT: Final = (
    Rule(("",), ("configmaps",), ("get", "patch"),
         "read beat's state, and claim runs in it with compare-and-swap patches"),
    Rule(("coordination.k8s.io",), ("leases",), ("get", "update"),
         "hold the Lease that elects the one beat that sends"),
)

# Chart file name -> rules (the chart's templates include these files).
CHART_FILES: Final = {"namespaced.yaml": NAMESPACED, "cluster-read.yaml": CLUSTER_READ, "lease.yaml": LEASE}


def flatten(rules: tuple[Rule, ...] | list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) triples of rules (ours or rendered RBAC objects')."""
    out = set()
    for r in rules:
        d = r.as_dict() if isinstance(r, Rule) else r
        out |= {(g, res, v) for g in d["apiGroups"] for res in d["resources"] for v in d["verbs"]}
    return out

"""KEDA on the local cluster, installed as a KEDA user installs it: its own manifests, its own images.

The binaries (operator, metrics adapter, admission webhooks) are built from the Go module
github.com/kedacore/keda/v2 at KEDA_VERSION (`dev/build-binaries.sh keda`, `make keda`; not part of
`make test`: cold, that build alone is longer than the rest) and packed into images here
(dev/images/keda*). The manifests are the module's `config/default` kustomization, rendered by
kubectl's kustomize, with two changes only: the images are ours (`IfNotPresent`: nothing is pulled),
and nothing else. The HPA KEDA creates reads `external.metrics.k8s.io` through the API server's
aggregation layer (localenv.controlplane's front-proxy flags), exactly as on a real cluster.

    PYTHONPATH=dev python -m localenv keda install|uninstall   (on a `make up` cluster)
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from localenv import binaries
from localenv.cluster import Cluster
from localenv.images import KEDA_IMAGES
from localenv.procs import ServerError, read_versions

NAMESPACE = "keda"
# The upstream image each of ours replaces (as config/default names them after kustomize).
UPSTREAM = {"ghcr.io/kedacore/keda": "keda", "ghcr.io/kedacore/keda-metrics-apiserver": "keda-metrics-apiserver",
            "ghcr.io/kedacore/keda-admission-webhooks": "keda-admission-webhooks"}
DEPLOYMENTS = ("keda-operator", "keda-metrics-apiserver", "keda-admission")
APISERVICE = "v1beta1.external.metrics.k8s.io"


def version() -> str:
    return read_versions()["KEDA_VERSION"]


def source_dir() -> Path:
    """The KEDA module in Go's module cache (downloaded by dev/build-binaries.sh)."""
    env = {**os.environ, "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "auto"), "GOFLAGS": "-buildvcs=false"}
    out = subprocess.run(["go", "mod", "download", "-json", f"github.com/kedacore/keda/v2@v{version()}"],
                         capture_output=True, text=True, env=env, check=False, timeout=600)
    info = json.loads(out.stdout or "{}")
    if not info.get("Dir"):
        raise ServerError(f"KEDA v{version()} module not available: {info.get('Error') or out.stderr}")
    return Path(info["Dir"])


def manifests(cluster: Cluster) -> list[dict[str, Any]]:
    """KEDA's config/default, with our images."""
    text = cluster.control_plane.kubectl("kustomize", str(source_dir() / "config" / "default"), timeout=120).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            repo = c["image"].rsplit(":", 1)[0]
            if repo not in UPSTREAM:
                raise ServerError(f"KEDA manifest names an image this harness does not build: {c['image']}")
            c["image"] = cluster.image(UPSTREAM[repo])
            c["imagePullPolicy"] = "IfNotPresent"
    return docs


def install(cluster: Cluster, timeout: float = 240) -> float:
    """Install KEDA and wait until its operator, adapter and webhooks serve (the APIService Available).
    Idempotent. Returns the seconds it took."""
    t0 = time.monotonic()
    cp = cluster.control_plane
    binaries.ensure("keda")
    cluster.images.import_into(cluster.node.ctr, *KEDA_IMAGES)
    docs = manifests(cluster)
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
               input="\n---\n".join(yaml.safe_dump(d) for d in docs), timeout=120)
    for name in DEPLOYMENTS:
        left = max(10.0, timeout - (time.monotonic() - t0))
        r = cp.kubectl("rollout", "status", f"deployment/{name}", "-n", NAMESPACE, f"--timeout={int(left)}s",
                       check=False, timeout=left + 10)
        if r.returncode != 0:
            raise ServerError(f"KEDA {name} not available: {r.stderr}\n{diagnose(cluster)}")
    left = max(10.0, timeout - (time.monotonic() - t0))
    r = cp.kubectl("wait", f"apiservice/{APISERVICE}", "--for=condition=Available", f"--timeout={int(left)}s",
                   check=False, timeout=left + 10)
    if r.returncode != 0:
        raise ServerError(f"KEDA's metrics APIService not Available: {r.stderr}\n{diagnose(cluster)}")
    return time.monotonic() - t0


def installed(cluster: Cluster) -> bool:
    r = cluster.control_plane.kubectl("get", f"apiservice/{APISERVICE}", "-o", "json", check=False)
    if r.returncode != 0:
        return False
    conds = json.loads(r.stdout).get("status", {}).get("conditions") or []
    return any(c["type"] == "Available" and c["status"] == "True" for c in conds)


def uninstall(cluster: Cluster) -> None:
    cp = cluster.control_plane
    docs = manifests(cluster)
    cp.kubectl("delete", "--ignore-not-found", "--wait=true", "-f", "-",
               input="\n---\n".join(yaml.safe_dump(d) for d in docs), timeout=180, check=False)


def diagnose(cluster: Cluster) -> str:
    cp = cluster.control_plane
    out = [cp.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout,
           cp.kubectl("get", "apiservice", APISERVICE, "-o", "yaml", check=False).stdout[-1500:],
           cp.kubectl("get", "events", "-n", NAMESPACE, check=False).stdout[-2000:]]
    for name in DEPLOYMENTS:
        out.append(cp.kubectl("logs", "-n", NAMESPACE, f"deployment/{name}", "--tail=20", check=False).stdout)
    return "\n".join(out)

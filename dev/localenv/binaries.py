"""Where the local cluster's binaries are, building them (once, cached) when missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from localenv.procs import REPO

NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl",
         "helm", "coredns", "local-path-provisioner", "crictl")
KEDA_NAMES = ("keda", "keda-adapter", "keda-admission-webhooks")


def cache_dir() -> Path:
    return Path(os.environ.get("CELERY_OPERATOR_CACHE", Path.home() / ".cache" / "celery-operator"))


def ensure(*what: str) -> Path:
    """Return the bin directory, running dev/build-binaries.sh if anything is missing or stale
    (`ensure("keda")` builds KEDA too)."""
    out = subprocess.run(["bash", str(REPO / "dev" / "build-binaries.sh"), *what], check=True,
                         stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def bin_dir() -> Path:
    b = cache_dir() / "bin"
    if all((b / n).exists() for n in NAMES):
        return b
    return ensure()

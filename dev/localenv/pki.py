"""The local cluster's certificates: one CA, and a key pair per component identity (openssl).

Identities follow Kubernetes' conventions, so the API server's Node and RBAC authorizers treat each
component as they would in any cluster: the kubelet is `system:node:<node>` in `system:nodes`,
kube-proxy is `system:kube-proxy`, the scheduler `system:kube-scheduler`, the admin is in
`system:masters`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "7"


# ECDSA P-256 keys: generated in milliseconds where an RSA-2048 key takes about a tenth of a second, and
# cheaper for the API server to sign every TLS handshake with (each kubectl, operator and kubelet
# connection). The service-account signing key stays RSA (RS256, what every token reader accepts).
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def front_proxy_ca(self) -> Path:
        """The aggregation layer's CA: it signs only the API server's proxy client certificate, which
        extension API servers (KEDA's metrics adapter) trust for the request headers naming the user."""
        return self.dir / "front-proxy-ca.crt"

    def create(self) -> None:
        """The CAs (cluster, front proxy) and the service-account signing key pair."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for ca, cn in (("ca", "celery-operator-local-ca"), ("front-proxy-ca", "celery-operator-front-proxy-ca")):
            _openssl("req", "-x509", *NEW_KEY, "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                     "-days", DAYS, "-subj", f"/CN={cn}", cwd=self.dir)
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=self.dir)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=self.dir)

    def issue(self, name: str, cn: str, orgs: tuple[str, ...] = (), *, server_names: tuple[str, ...] = (),
              server_ips: tuple[str, ...] = (), client: bool = True, ca: str = "ca") -> KeyPair:
        """A key pair signed by a CA (`ca`, or `front-proxy-ca`): a client certificate, a serving one
        (names/IPs), or both."""
        subj = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
        usages = (["clientAuth"] if client else []) + (["serverAuth"] if server_names or server_ips else [])
        ext = [f"extendedKeyUsage={','.join(usages)}"]
        if server_names or server_ips:
            sans = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
            ext.append(f"subjectAltName={','.join(sans)}")
        (self.dir / f"{name}.ext").write_text("\n".join(ext) + "\n")
        _openssl("req", *NEW_KEY, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subj, cwd=self.dir)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", DAYS, "-extfile", f"{name}.ext", cwd=self.dir)
        return KeyPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")

    def pair(self, name: str) -> KeyPair:
        return KeyPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")


def kubeconfig(server: str, ca: Path, pair: KeyPair, user: str = "admin",
               namespace: str = "default") -> dict[str, object]:
    """A kubeconfig with file paths (what the harness writes; `kubectl config view --flatten` inlines it)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user, "namespace": namespace}}],
        "current-context": "local",
    }

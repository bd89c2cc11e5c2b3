"""Container images built on this machine (no registry): mmdebstrap for the base, buildah for the rest.

Every image is tagged `localhost/celery-operator/<name>:<hash>`, where the hash covers everything it
is built from (its Dockerfile, its build context, its base image's hash, pinned versions), so a tag
never means two things and an unchanged image is never rebuilt. Built images live in buildah's
storage and as archives in `$CELERY_OPERATOR_CACHE/images/`; `import_into(node)` loads them into
the node's containerd, which never pulls (pods use these tags with `imagePullPolicy: IfNotPresent`).

The project's own Dockerfiles (the operator's and sample_tasks') take their base as the build
argument BASE_IMAGE: here the local `python` image, elsewhere the public python image they default to.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from localenv.binaries import bin_dir, cache_dir, ensure
from localenv.procs import REPO, ServerError, read_versions

IMAGES_DIR = REPO / "dev" / "images"
REPOSITORY = "localhost/celery-operator"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
# The packages of the base rootfs, beyond Debian's minbase.
BASE_PACKAGES = ("ca-certificates", "passwd")
# Like debian:*-slim: no docs, man pages or translations in any image built on the base.
SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
# KEDA's images (bench/keda.py, its e2e test): image name -> the binary dev/build-binaries.sh built.
KEDA_IMAGES = {"keda": "keda", "keda-metrics-apiserver": "keda-adapter",
               "keda-admission-webhooks": "keda-admission-webhooks"}
SKIP_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def _log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def _run(args: list[str], *, cwd: Path | None = None, timeout: float = 1800) -> str:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise ServerError(f"{' '.join(args[:4])} ... failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    return r.stdout


# -- what an image is built from ------------------------------------------------------------------

def _pattern(pat: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**`, as Docker reads it)."""
    out, i = "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out)


def dockerignore_admits(patterns: list[str], rel: str) -> bool:
    """Whether a context file reaches the build under .dockerignore `patterns` (the last match wins;
    a pattern that matches a parent directory matches everything in it)."""
    parents = [rel[:i] for i, c in enumerate(rel) if c == "/"] + [rel]
    admitted = True
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern((raw[1:] if negate else raw).strip("/"))
        if any(regex.fullmatch(p) for p in parents):
            admitted = negate
    return admitted


def context_files(context: Path) -> list[Path]:
    """The files of a build context that reach the build (honouring its .dockerignore).

    A directory the patterns exclude is not descended into unless a `!` pattern may re-admit
    something inside it (which keeps large or changing trees, like a live cluster's state, out)."""
    ignore = context / ".dockerignore"
    patterns = [ln.strip() for ln in ignore.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")] if ignore.exists() else []
    exceptions = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    out = []
    for root, dirs, files in os.walk(context):
        base = Path(root).relative_to(context).as_posix()
        kept = []
        for d in sorted(dirs):
            rel = d if base == "." else f"{base}/{d}"
            if d in SKIP_PARTS or d.endswith(".egg-info") or d in (".git", ".venv", ".local"):
                continue
            if dockerignore_admits(patterns, rel) or any(e.startswith(rel + "/") or "*" in e for e in exceptions):
                kept.append(d)
        dirs[:] = kept
        for f in sorted(files):
            rel = f if base == "." else f"{base}/{f}"
            if not f.endswith(".pyc") and dockerignore_admits(patterns, rel):
                out.append(Path(root, f))
    return out


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Recipe:
    """How to build one image: its Dockerfile, the context it needs and what defines its content."""

    name: str
    dockerfile: Path
    base: str | None = None  # the recipe whose image is passed as BASE_IMAGE
    context: Path | None = None  # a directory of the repo sent as the build context
    prepare: Callable[[Path], None] | None = None  # or: fill a temporary context
    key: tuple[str, ...] = ()  # versions and other facts that define the content
    needs_go: bool = False  # its context needs what Go builds or fetches (a binary, the Kubernetes module)

    def inputs(self) -> list[bytes]:
        parts = [self.name.encode(), self.dockerfile.read_bytes(), *(k.encode() for k in self.key)]
        if self.context is not None:
            for f in context_files(self.context):
                parts += [f.relative_to(self.context).as_posix().encode(), f.read_bytes()]
        return parts


def debian_sources(suite: str) -> list[str]:
    """This machine's apt sources for `suite` (and its -updates/-security), one-line form, main only."""
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    lines: list[str] = []
    apt = Path("/etc/apt")
    for f in sorted((apt / "sources.list.d").glob("*.sources")) if (apt / "sources.list.d").is_dir() else []:
        for stanza in f.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for ln in stanza.splitlines():
                if ":" in ln and not ln.startswith((" ", "#")):
                    k, v = ln.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split() or "main" not in fields.get("components", "").split():
                continue
            for uri in fields.get("uris", "").split():
                lines += [f"deb {uri} {s} main" for s in fields.get("suites", "").split() if s in wanted]
    for f in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if f.exists():
            for ln in f.read_text().splitlines():
                words = ln.split("#", 1)[0].split()
                if len(words) >= 4 and words[0] == "deb" and words[2] in wanted and "main" in words[3:]:
                    uri = next(w for w in words[1:] if not w.startswith("["))
                    lines.append(f"deb {uri} {words[2 + words[1].startswith('[')]} main")
    if not lines:
        lines = [f"deb http://deb.debian.org/debian {suite} main",
                 f"deb http://deb.debian.org/debian {suite}-updates main",
                 f"deb http://deb.debian.org/debian-security {suite}-security main"]
    return sorted(set(lines))


def _host_cas() -> list[Path]:
    return sorted(HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []


def _prepare_debian(suite: str) -> Callable[[Path], None]:
    """A Debian `suite` minbase rootfs (plus BASE_PACKAGES and the host's CAs) as the build context's tarball."""
    return lambda ctx: _debootstrap(suite, ctx)


def _debootstrap(suite: str, ctx: Path) -> None:
    args = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "--components=main",
            *(f"--dpkgopt=path-exclude={p}" for p in SLIM_EXCLUDES),
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--customize-hook=mkdir -p \"$1/usr/local/share/ca-certificates\""]
    for ca in _host_cas():
        args.append(f"--customize-hook=copy-in {ca} /usr/local/share/ca-certificates")
    args += ["--customize-hook=chroot \"$1\" update-ca-certificates",
             "--customize-hook=rm -rf \"$1/var/lib/apt/lists\"/*",
             suite, str(ctx / "rootfs.tar"), *debian_sources(suite)]
    _run(args, timeout=900)


def _copy_binary(name: str, *build: str) -> Callable[[Path], None]:
    """Fill the context with one of dev/build-binaries.sh's binaries (`build`: its arguments that build it)."""
    def prepare(ctx: Path) -> None:
        b = bin_dir() if not build or (bin_dir() / name).exists() else ensure(*build)
        shutil.copy2(b / name, ctx / name)
    return prepare


def _pause_source() -> Path:
    """Kubernetes' pause.c, from the k8s.io/kubernetes module the node's binaries are built from."""
    version = read_versions()["KUBERNETES_VERSION"]
    out = _run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{version}"], timeout=600)
    return Path(json.loads(out)["Dir"]) / "build" / "pause" / "linux" / "pause.c"


def _prepare_pause(ctx: Path) -> None:
    _run(["gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION=celery-operator-local",
          "-o", str(ctx / "pause"), str(_pause_source())])
    _run(["strip", str(ctx / "pause")])


def recipes() -> dict[str, Recipe]:
    v = read_versions()
    k8s = v["KUBERNETES_VERSION"]

    def debian(name: str, suite: str) -> Recipe:
        return Recipe(name, IMAGES_DIR / "debian" / "Dockerfile", prepare=_prepare_debian(suite),
                      key=(suite, *BASE_PACKAGES, *SLIM_EXCLUDES, *debian_sources(suite),
                           *(ca.read_text() for ca in _host_cas())))

    return {r.name: r for r in [
        debian("debian", v["DEBIAN_SUITE"]),
        Recipe("python", IMAGES_DIR / "python" / "Dockerfile", base="debian"),
        # The same Python image and sample app on the newer Debian: a second Python version in pods.
        debian("debian-newer", v["DEBIAN_SUITE_NEWER"]),
        Recipe("python-newer", IMAGES_DIR / "python" / "Dockerfile", base="debian-newer"),
        Recipe("sample-tasks-newer", REPO / "sample_tasks" / "Dockerfile", base="python-newer",
               context=REPO / "sample_tasks"),
        Recipe("rabbitmq", IMAGES_DIR / "rabbitmq" / "Dockerfile", base="debian"),
        Recipe("redis", IMAGES_DIR / "redis" / "Dockerfile", base="debian"),
        Recipe("pause", IMAGES_DIR / "pause" / "Dockerfile", prepare=_prepare_pause, key=(k8s,), needs_go=True),
        Recipe("coredns", IMAGES_DIR / "coredns" / "Dockerfile", prepare=_copy_binary("coredns"),
               key=(v["COREDNS_VERSION"],), needs_go=True),
        Recipe("local-path-provisioner", IMAGES_DIR / "local-path-provisioner" / "Dockerfile",
               prepare=_copy_binary("local-path-provisioner"), key=(v["LOCAL_PATH_PROVISIONER_VERSION"],),
               needs_go=True),
        *(Recipe(image, IMAGES_DIR / image / "Dockerfile", prepare=_copy_binary(binary, "keda"),
                 key=(v["KEDA_VERSION"],), needs_go=True) for image, binary in KEDA_IMAGES.items()),
        Recipe("operator", REPO / "Dockerfile", base="python", context=REPO),
        Recipe("sample-tasks", REPO / "sample_tasks" / "Dockerfile", base="python", context=REPO / "sample_tasks"),
        Recipe("flower", IMAGES_DIR / "flower" / "Dockerfile", base="python", context=IMAGES_DIR / "flower"),
    ]}


# -- building ---------------------------------------------------------------------------------------

@dataclass
class Images:
    """The project's images: `ref(name)` is the tag pods use; `build(*names)` makes sure they exist."""

    _recipes: dict[str, Recipe] = field(default_factory=recipes)
    _tags: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def archive_dir(self) -> Path:
        d = cache_dir() / "images"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def names(self) -> tuple[str, ...]:
        return tuple(self._recipes)

    def without_go(self) -> tuple[str, ...]:
        """The images whose builds need nothing from Go: they can build while dev/build-binaries.sh runs."""
        def needs_go(name: str) -> bool:
            r = self._recipes[name]
            return r.needs_go or (r.base is not None and needs_go(r.base))
        return tuple(n for n in self._recipes if not needs_go(n))

    def hash(self, name: str) -> str:
        r = self._recipes[name]
        base = [self.hash(r.base).encode()] if r.base else []
        return _digest([*base, *r.inputs()])

    def ref(self, name: str) -> str:
        if name not in self._tags:
            self._tags[name] = f"{REPOSITORY}/{name}:{self.hash(name)}"
        return self._tags[name]

    def archive(self, name: str) -> Path:
        return self.archive_dir / f"{name}-{self.hash(name)}.tar"

    def build(self, *names: str) -> list[Path]:
        """Build what is missing (bases first); returns the archives of `names`."""
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        # Threads of this process, and other processes (pytest-xdist workers on a reused cluster), build one
        # at a time: the second finds the archive the first wrote.
        with self._lock, open(self.archive_dir / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return [self._ensure(n) for n in (names or tuple(self._recipes))]

    def _in_buildah(self, ref: str) -> bool:
        return subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True,
                              check=False).returncode == 0

    def _ensure(self, name: str) -> Path:
        archive, ref = self.archive(name), self.ref(name)
        if archive.exists():
            return archive
        r = self._recipes[name]
        if r.base:
            base_archive = self._ensure(r.base)
            if not self._in_buildah(self.ref(r.base)):
                _run(["buildah", "pull", "--quiet", f"docker-archive:{base_archive}"])
        if not self._in_buildah(ref):
            t0 = time.monotonic()
            _log(f"building {ref}")
            with tempfile.TemporaryDirectory(prefix=f"image-{name}-") as tmp:
                ctx = r.context or Path(tmp)
                if r.prepare is not None:
                    r.prepare(Path(tmp))
                args = ["buildah", "bud", "--quiet", "--network", "host", "--pull=never", "--layers=false",
                        "-f", str(r.dockerfile), "-t", ref]
                if r.base:
                    args += ["--build-arg", f"BASE_IMAGE={self.ref(r.base)}"]
                _run([*args, str(ctx)])
            _log(f"built {ref} in {time.monotonic() - t0:.0f}s")
        tmp_archive = archive.with_suffix(".tmp")
        tmp_archive.unlink(missing_ok=True)
        _run(["buildah", "push", "--quiet", ref, f"docker-archive:{tmp_archive}:{ref}"])
        tmp_archive.rename(archive)
        self._prune(name)
        return archive

    def _prune(self, name: str) -> None:
        """Older archives of the same image go (buildah's storage keeps its layers for rebuilds)."""
        keep = self.archive(name).name
        for old in self.archive_dir.glob(f"{name}-*.tar"):
            if old.name != keep and old.name[len(name) + 1:-4].isalnum():
                old.unlink(missing_ok=True)

    def import_into(self, ctr: Callable[..., subprocess.CompletedProcess[str]], *names: str) -> float:
        """Load images into a containerd (`ctr` runs its ctr); returns the seconds it took."""
        archives = self.build(*names)
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda a: ctr("images", "import", str(a)), archives))
        return time.monotonic() - t0

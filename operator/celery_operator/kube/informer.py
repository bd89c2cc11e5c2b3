"""A watch-fed cache of one kind of object, selected on the server (client-go's reflector, small).

LIST once (with a label selector, so only the operator's children are streamed; in pages, so the
memory a large LIST needs is bounded, as client-go's pager does), then WATCH from
that resourceVersion with bookmarks; a watch that ends is resumed from the last resourceVersion
seen, a `410 Gone` relists. Reads are served from memory: reconciles cost no API reads.
`metadata_only` asks for PartialObjectMetadata (Secrets: which changed, not what they hold).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from celery_operator.kube.client import ApiError, KubeClient, path_for
from celery_operator.render.labels import has_labels

log = logging.getLogger(__name__)
Body = dict[str, Any]
NamespacedName = tuple[str, str]  # (namespace, metadata.name)
# (event type, the object now or None when deleted, the object before or None when new)
OnChange = Callable[[str, Body | None, Body | None], None]
METADATA_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
METADATA_WATCH_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
WATCH_TIMEOUT_SECONDS = 290
LIST_PAGE_SIZE = 500  # client-go's pager default


def trim(obj: Body) -> Body:
    """What the cache keeps: the object without managedFields (the bulk of most objects)."""
    md = obj.get("metadata") or {}
    if "managedFields" in md:
        obj = {**obj, "metadata": {k: v for k, v in md.items() if k != "managedFields"}}
    return obj


@dataclass
class Packer:
    """Objects are cached as compressed compact JSON, parsed when read: tens of times smaller than Python
    dicts. Objects of one kind are alike, so the first one packed becomes the zlib preset dictionary of
    every later one (a Deployment: 1.5 KB alone, 0.2 KB against another Deployment). The dictionary never
    changes once set: every blob packed here unpacks only here."""

    zdict: bytes | None = None

    def pack(self, obj: Body) -> bytes:
        data = json.dumps(trim(obj), separators=(",", ":")).encode()
        if self.zdict is None:
            self.zdict = data[-32768:]  # zlib's window
        c = zlib.compressobj(1, zdict=self.zdict)
        return c.compress(data) + c.flush()

    def unpack(self, raw: bytes) -> Body:
        if self.zdict is None:
            raise ValueError("unpacking what this packer did not pack")
        d = zlib.decompressobj(zdict=self.zdict)
        return dict(json.loads(d.decompress(raw) + d.flush()))


@dataclass
class Informer:
    client: KubeClient
    kind: str
    namespace: str | None  # None: every namespace
    label_selector: str | None = None
    on_change: OnChange | None = None
    metadata_only: bool = False
    index_label: str | None = None  # `select` by this label's value without reading other objects
    page_size: int = LIST_PAGE_SIZE
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    lists: int = 0  # complete LISTs made (each may take several pages)
    pages: int = 0  # LIST requests made
    _packer: Packer = field(default_factory=Packer)
    _store: dict[NamespacedName, bytes] = field(default_factory=dict)
    _index: dict[tuple[str, str], set[NamespacedName]] = field(default_factory=dict)  # (namespace, label value) -> keys
    _resource_version: str = ""

    def get(self, namespace: str, name: str) -> Body | None:
        raw = self._store.get((namespace, name))
        return None if raw is None else self._packer.unpack(raw)

    def items(self) -> list[Body]:
        return [self._packer.unpack(raw) for raw in self._store.values()]

    def select(self, namespace: str, labels: dict[str, str]) -> list[Body]:
        """Cached objects of `namespace` carrying all `labels`."""
        if self.index_label is not None and self.index_label in labels:
            keys = sorted(self._index.get((namespace, labels[self.index_label]), ()))
            found = [self._packer.unpack(self._store[k]) for k in keys if k in self._store]
        else:
            found = [self._packer.unpack(raw) for (ns, _), raw in self._store.items() if ns == namespace]
        return [o for o in found if has_labels(o, labels)]

    def put(self, obj: Body) -> Body | None:
        """Cache `obj` (also our own writes, before their watch event); returns what it replaced."""
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        before = self.get(*key)
        self._unindex(key, before)
        self._store[key] = self._packer.pack(obj)
        if self.index_label is not None:
            value = (obj["metadata"].get("labels") or {}).get(self.index_label)
            if value is not None:
                self._index.setdefault((key[0], value), set()).add(key)
        return before

    def _remove(self, key: NamespacedName) -> Body | None:
        before = self.get(*key)
        self._unindex(key, before)
        self._store.pop(key, None)
        return before

    def _unindex(self, key: NamespacedName, before: Body | None) -> None:
        if self.index_label is None or before is None:
            return
        value = (before["metadata"].get("labels") or {}).get(self.index_label)
        keys = self._index.get((key[0], value or ""))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._index[(key[0], value or "")]

    def _emit(self, kind: str, new: Body | None, old: Body | None) -> None:
        if self.on_change is not None:
            try:
                self.on_change(kind, new, old)
            except Exception:  # a handler's bug must not stop the cache
                log.exception("handler of %s %s failed", self.kind, kind)

    async def _list(self) -> None:
        params = {"limit": str(self.page_size)}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        headers = {"Accept": METADATA_ACCEPT} if self.metadata_only else None
        seen: set[NamespacedName] = set()
        while True:  # one page at a time: each is cached before the next is read
            body = await self.client.request("GET", path_for(self.kind, self.namespace), params=params,
                                             headers=headers)
            self.pages += 1
            for obj in body.get("items") or []:
                key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                seen.add(key)
                before = self.put(obj)
                if before is None or \
                        before["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                    self._emit("ADDED" if before is None else "MODIFIED", trim(obj), before)
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                break
            params["continue"] = str(meta["continue"])  # an expired token (410) fails the LIST: it starts over
        self.lists += 1
        self._resource_version = str(meta.get("resourceVersion", ""))
        for key in [k for k in self._store if k not in seen]:
            self._emit("DELETED", None, self._remove(key))
        self.synced.set()

    async def _watch(self) -> None:
        params = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": self._resource_version,
                  "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS)}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        headers = {"Accept": METADATA_WATCH_ACCEPT} if self.metadata_only else None
        async for event in self.client.stream(path_for(self.kind, self.namespace), params=params, headers=headers,
                                              timeout_seconds=WATCH_TIMEOUT_SECONDS + 30):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise ApiError(int(obj.get("code") or 500), str(obj.get("message", "watch error")), obj)
            rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
            if rv:
                self._resource_version = rv
            if kind == "BOOKMARK":
                continue
            obj = trim(obj)
            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            if kind == "DELETED":
                before = self._remove(key)
                self._emit(kind, None, before or obj)
            else:
                before = self.put(obj)
                self._emit("ADDED" if before is None else "MODIFIED", obj, before)

    async def run(self) -> None:
        """LIST, then WATCH forever; errors back off and resume (a 410 relists). Cancel to stop."""
        backoff = 0.5
        while True:
            try:
                if not self._resource_version:
                    await self._list()
                await self._watch()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status == 410:  # the resourceVersion is too old: start over
                    self._resource_version = ""
                    continue
                log.warning("watching %s (%s): %s", self.kind, self.namespace or "all namespaces", e)
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, OSError) as e:
                log.info("watch of %s interrupted: %s; resuming", self.kind, e)
            except Exception:  # a bug here must not leave the cache silently frozen
                log.exception("watching %s failed; starting over", self.kind)
                self._resource_version = ""
            await asyncio.sleep(backoff * (1 + random.random()))
            backoff = min(backoff * 2, 30.0)

    async def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.run(), name=f"informer:{self.kind}:{self.namespace or '*'}")

"""Active-active sharding: every replica works, each on the CeleryApps of the shards it holds.

An app belongs to shard `sha256(namespace/name) mod N`; shard `i` is held through the Lease
`<name>-shard-<i>`, and each replica also renews a membership Lease `<name>-member-<identity>`, so
replicas know how many of them are alive and each takes a fair share (ceil(N / members)), giving
back what it holds beyond that. One shard (the default) is plain leader election.

Timing follows client-go's leaderelection:
- a held lease is renewed every `retry_seconds`; the holder stops acting on a shard once it has not
  renewed for `renew_deadline_seconds`, which is shorter than `lease_seconds`, so it has stopped
  before anyone may take the lease;
- another holder's lease counts as expired only when its record has not changed for
  `lease_seconds` *as observed by this replica's own monotonic clock* (no clock comparisons
  across machines); a standby wakes at that moment rather than at its next retry, so a frozen or
  dead holder is replaced within a lease duration of its last renewal;
- every update carries the resourceVersion read (compare-and-swap): two replicas never both win.
Writes of a reconcile are guarded (KubeClient.write_guard asks `holds` for the app's shard just
before sending), so a replica paused past its deadline (SIGSTOP, a long GC) writes nothing after
it wakes. Leases are read through a watch, so holding them costs no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from celery_operator import api
from celery_operator.kube.client import ApiError, KubeClient, path_for
from celery_operator.kube.informer import Informer

log = logging.getLogger(__name__)
Body = dict[str, Any]
LABEL_GROUP = f"{api.GROUP}/lease-of"
LABEL_ROLE = f"{api.GROUP}/lease-role"
EXPIRY_MARGIN_SECONDS = 0.05  # past a lease's expiry, so `_expired` holds when the cycle runs

# The shard whose lease guards the writes being made in this task (the reconciler sets it).
current_shard: contextvars.ContextVar[int | None] = contextvars.ContextVar("current_shard", default=None)


def shard_of(namespace: str, name: str, shards: int) -> int:
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def next_wake(now: float, retry_seconds: float, expiries: Iterable[float]) -> float:
    """Seconds from `now` to a replica's next cycle: the retry period, or sooner when a lease another
    replica holds expires before that, so a dead holder is replaced within its lease. An expiry that
    has passed already was tried in the cycle that just ran: if taking it failed (the API server
    unreachable, say), the next try waits the retry period, as client-go's does, rather than spinning."""
    return min([retry_seconds, *(at - now for at in expiries if at > now)])


def _fmt(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return _fmt(datetime.datetime.now(datetime.UTC))


def _member_name(base: str, identity: str) -> str:
    return f"{base}-member-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


@dataclass
class Observed:
    record: tuple[Any, ...]  # holder, renewTime, resourceVersion
    at: float  # monotonic time this replica saw the record change


@dataclass
class ShardManager:
    client: KubeClient
    namespace: str
    name: str
    identity: str
    shards: int = 1
    lease_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    on_acquired: Callable[[int], None] | None = None
    on_lost: Callable[[int], None] | None = None
    held: dict[int, float] = field(default_factory=dict)  # shard -> monotonic time of the last renewal sent
    _observed: dict[str, Observed] = field(default_factory=dict)
    _informer: Informer | None = None
    _member_since: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.renew_deadline_seconds >= self.lease_seconds:
            raise ValueError("the renew deadline must be shorter than the lease")

    # -- what this replica may do -----------------------------------------------------------------
    def shard_of(self, namespace: str, name: str) -> int:
        return shard_of(namespace, name, self.shards)

    def holds(self, shard: int) -> bool:
        renewed = self.held.get(shard)
        return renewed is not None and time.monotonic() - renewed < self.renew_deadline_seconds

    def owns(self, namespace: str, name: str) -> bool:
        return self.holds(self.shard_of(namespace, name))

    def guard(self) -> bool:
        """KubeClient.write_guard: writes made for an app go out only while its shard is held; a write
        made for no app (no shard set) is refused too, so none can escape the leases by omission
        (the leases' own writes are sent unguarded)."""
        shard = current_shard.get()
        return shard is not None and self.holds(shard)

    # -- leases -----------------------------------------------------------------------------------
    def lease_name(self, shard: int) -> str:
        return f"{self.name}-shard-{shard}"

    def _record(self, name: str) -> Body | None:
        assert self._informer is not None
        return self._informer.get(self.namespace, name)

    def _observe(self, kind: str, new: Body | None, old: Body | None) -> None:
        obj = new or old
        if obj is None:
            return
        name = obj["metadata"]["name"]
        if new is None:
            self._observed.pop(name, None)
            return
        spec = new.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), new["metadata"].get("resourceVersion"))
        seen = self._observed.get(name)
        if seen is None or seen.record != record:
            self._observed[name] = Observed(record, time.monotonic())

    def _expired(self, name: str) -> bool:
        """Free, or its record unchanged for a lease duration by this replica's own clock."""
        lease = self._record(name)
        if lease is None:
            return True
        spec = lease.get("spec") or {}
        if not spec.get("holderIdentity"):
            return True
        seen = self._observed.get(name)
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        return seen is None or time.monotonic() - seen.at > duration

    async def _take(self, name: str, role: str) -> bool:
        """Create or update the lease for this replica (compare-and-swap on its resourceVersion)."""
        lease = self._record(name)
        now = _now()
        spec: Body = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                      "renewTime": now}
        meta: Body = {"name": name, "namespace": self.namespace,
                      "labels": {LABEL_GROUP: self.name, LABEL_ROLE: role}}
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                    "spec": {**spec, "acquireTime": now, "leaseTransitions": 0}}
            await self.client.request("POST", path_for("Lease", self.namespace), body=body, guarded=False,
                                      timeout_seconds=self.renew_deadline_seconds / 2)
            return True
        old = lease.get("spec") or {}
        mine = old.get("holderIdentity") == self.identity
        spec["acquireTime"] = old.get("acquireTime") if mine else now
        spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + (0 if mine else 1)
        meta["resourceVersion"] = lease["metadata"]["resourceVersion"]
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
        result = await self.client.request("PUT", path_for("Lease", self.namespace, name), body=body,
                                           guarded=False, timeout_seconds=self.renew_deadline_seconds / 2)
        assert self._informer is not None
        self._informer.put(result)  # our own write, before its watch event
        self._observe("MODIFIED", result, lease)
        return True

    async def _try(self, name: str, role: str) -> bool:
        try:
            return await self._take(name, role)
        except ApiError as e:
            if e.status in (409, 422):  # someone else changed it first
                return False
            log.warning("lease %s/%s: %s", self.namespace, name, e)
            return False
        except (TimeoutError, OSError) as e:
            log.warning("lease %s/%s: %s", self.namespace, name, e)
            return False

    def live_members(self) -> int:
        assert self._informer is not None
        names = [o["metadata"]["name"] for o in self._informer.items()
                 if (o["metadata"].get("labels") or {}).get(LABEL_ROLE) == "member"]
        return max(1, sum(1 for n in names if not self._expired(n)))

    async def _cycle(self) -> None:
        await self._try(_member_name(self.name, self.identity), "member")
        for shard in list(self.held):
            sent = time.monotonic()
            lease = self._record(self.lease_name(shard))
            still_ours = lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity
            if still_ours and await self._try(self.lease_name(shard), "shard"):
                self.held[shard] = sent
            elif not self.holds(shard) or not still_ours:
                self._lose(shard, "could not renew its lease" if still_ours else "its lease was taken")
        # A newcomer waits one lease duration before taking shards, so the member count has settled.
        settled = time.monotonic() - self._member_since > (self.lease_seconds if self.shards > 1 else 0)
        target = math.ceil(self.shards / self.live_members())
        while len(self.held) > target and settled:
            shard = max(self.held)
            self._lose(shard, f"rebalancing to {target} shards per replica")
            await self._release_lease(self.lease_name(shard))
        if len(self.held) >= target or not settled:
            return
        for shard in range(self.shards):
            if shard in self.held or len(self.held) >= target:
                continue
            name = self.lease_name(shard)
            if self._expired(name) or (self._record(name) or {}).get("spec", {}).get("holderIdentity") == self.identity:
                sent = time.monotonic()
                if await self._try(name, "shard"):
                    self.held[shard] = sent
                    log.info("acquired shard %d/%d (lease %s/%s) as %s", shard, self.shards, self.namespace, name,
                             self.identity)
                    if self.on_acquired is not None:
                        self.on_acquired(shard)

    def _next_cycle(self) -> float:
        """Seconds to the next cycle (`next_wake`), from when this replica saw each lease another
        replica holds change, by its own clock."""
        expiries = []
        for shard in range(self.shards):
            name = self.lease_name(shard)
            lease, seen = self._record(name), self._observed.get(name)
            if shard in self.held or lease is None or seen is None:
                continue
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity"):
                duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
                expiries.append(seen.at + duration + EXPIRY_MARGIN_SECONDS)
        return next_wake(time.monotonic(), self.retry_seconds, expiries)

    def _lose(self, shard: int, why: str) -> None:
        self.held.pop(shard, None)
        log.warning("stopped acting on shard %d: %s", shard, why)
        if self.on_lost is not None:
            self.on_lost(shard)

    async def _release_lease(self, name: str) -> None:
        """Give a lease up (no holder), so another replica may take it at once."""
        lease = self._record(name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        with contextlib.suppress(ApiError, TimeoutError, OSError):
            await self.client.request(
                "PUT", path_for("Lease", self.namespace, name), guarded=False, timeout_seconds=5,
                body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {**lease["metadata"]},
                      "spec": {**lease.get("spec", {}), "holderIdentity": None, "renewTime": None}})

    async def run(self, stop: asyncio.Event) -> None:
        self._informer = Informer(self.client, "Lease", self.namespace, label_selector=f"{LABEL_GROUP}={self.name}",
                                  on_change=self._observe)
        watch = await self._informer.start()
        try:
            await asyncio.wait_for(self._informer.synced.wait(), 60)
            while not stop.is_set():
                await self._cycle()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._next_cycle())
        finally:
            for shard in sorted(self.held):
                self._lose(shard, "shutting down")
                await self._release_lease(self.lease_name(shard))
            await self._release_lease(_member_name(self.name, self.identity))
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

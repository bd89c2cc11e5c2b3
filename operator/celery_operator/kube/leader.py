"""Lease-based leader election in front of kopf: only the holder of the Lease reconciles.

kopf's peering only pauses operators with a lower priority and does not guarantee a single
active replica during races, so the operator takes a coordination.k8s.io Lease first (the same
protocol as client-go's leaderelection): acquire when free or expired, renew every
`renew_seconds`, and stop (so the process exits and restarts as a follower) when renewal fails
for longer than the lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from dataclasses import dataclass

from celery_operator.kube.client import ApiError, KubeClient

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _fmt(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str | None) -> datetime.datetime | None:
    if not s:
        return None
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


@dataclass
class LeaderElector:
    client: KubeClient
    namespace: str
    name: str
    identity: str
    lease_seconds: int = 15
    renew_seconds: float = 5.0
    retry_seconds: float = 2.0
    is_leader: bool = False

    async def _try(self) -> bool:
        now = _now()
        lease = await self.client.get("Lease", self.namespace, self.name)
        spec_new = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                    "renewTime": _fmt(now)}
        if lease is None:
            spec_new["acquireTime"] = _fmt(now)
            spec_new["leaseTransitions"] = 0
            try:
                await self.client.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                          "metadata": {"name": self.name, "namespace": self.namespace},
                                          "spec": spec_new})
                return True
            except ApiError as e:
                if e.status == 409:
                    return False
                raise
        spec = lease.get("spec", {})
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.identity:
            spec_new["acquireTime"] = _fmt(now)
            spec_new["leaseTransitions"] = transitions + 1
        else:
            spec_new["acquireTime"] = spec.get("acquireTime") or _fmt(now)
            spec_new["leaseTransitions"] = transitions
        # resourceVersion makes the update a compare-and-swap: two candidates cannot both win.
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": spec_new}
        try:
            await self.client.request("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}"
                                      f"/leases/{self.name}", body=body)
            return True
        except ApiError as e:
            if e.status == 409:
                return False
            raise

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Block until this process holds the Lease (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                if await self._try():
                    self.is_leader = True
                    log.info("acquired leadership (lease %s/%s) as %s", self.namespace, self.name, self.identity)
                    return True
            except Exception as e:  # noqa: BLE001 - API server hiccup: keep trying
                log.warning("leader election: %s", e)
            if not announced:
                log.info("waiting for leadership (lease %s/%s is held by another replica)",
                         self.namespace, self.name)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_seconds)
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set; return (leadership lost) when renewal fails for a lease duration."""
        last_ok = _now()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.renew_seconds)
                break
            except TimeoutError:
                pass
            try:
                if await self._try():
                    last_ok = _now()
                    continue
                log.error("leadership lost: the lease was taken by another replica")
                break
            except Exception as e:  # noqa: BLE001
                log.warning("lease renewal failed: %s", e)
            if (_now() - last_ok).total_seconds() > self.lease_seconds:
                log.error("leadership lost: could not renew the lease for %ss", self.lease_seconds)
                break
        self.is_leader = False

    async def release(self) -> None:
        """Give the lease up on clean shutdown so a follower takes over at once."""
        if not self.is_leader:
            return
        try:
            await self.client.patch("Lease", self.namespace, self.name,
                                    {"spec": {"holderIdentity": None, "renewTime": None}})
        except Exception as e:  # noqa: BLE001
            log.warning("could not release the lease: %s", e)
        self.is_leader = False

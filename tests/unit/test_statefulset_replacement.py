"""A managed server's StatefulSet whose storage changed is replaced (controller/act.py): the StatefulSet is
deleted before its unbound claims, so its controller cannot recreate them from the old template; claims
that hold data stop the replacement."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from celery_operator.controller.act import Executor
from celery_operator.kube.client import KubeClient

STS = {"kind": "StatefulSet", "metadata": {"namespace": "ns", "name": "proj-redis"}}


class RecordingClient:
    """The two calls a replacement makes, recorded in order."""

    def __init__(self, claims: list[dict[str, Any]]) -> None:
        self.claims = claims
        self.calls: list[tuple[str, ...]] = []

    async def list(self, kind: str, namespace: str | None, **_: Any) -> list[dict[str, Any]]:
        return self.claims

    async def delete(self, kind: str, namespace: str | None, name: str, propagation: str = "Background") -> bool:
        self.calls.append((kind, name, propagation))
        return True


def claim(name: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase}}


def replace(client: RecordingClient) -> str:
    executor = Executor(cast(KubeClient, client), cast(Any, None), cast(Any, None), cast(Any, None), lambda *_: None)
    return asyncio.run(executor.replace_statefulset(STS, "Forbidden: spec: updates to statefulset spec ..."))


def test_the_statefulset_is_deleted_before_its_unbound_claims() -> None:
    client = RecordingClient([claim("data-proj-redis-0", "Pending"), claim("data-other-0", "Pending")])
    message = replace(client)
    assert client.calls == [("StatefulSet", "proj-redis", "Foreground"),
                            ("PersistentVolumeClaim", "data-proj-redis-0", "Background")]
    assert "replaced" in message


def test_claims_that_hold_data_stop_the_replacement_and_say_so() -> None:
    client = RecordingClient([claim("data-proj-redis-0", "Bound")])
    message = replace(client)
    assert client.calls == []
    assert "data-proj-redis-0 hold data" in message and "delete them" in message

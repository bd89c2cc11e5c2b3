"""The informer against a real API server: a LIST in pages, then the watch keeps the cache current."""

from __future__ import annotations

import asyncio
import json

import pytest

from celery_operator.kube.informer import Informer
from localenv.controlplane import ControlPlane
from tests.fixtures.kube_async import kube_client, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _configmap(ns: str, name: str, selected: bool) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": {"pick": "yes" if selected else "no"}},
            "data": {"n": name}}


def test_a_list_in_pages_caches_every_selected_object_and_the_watch_follows_changes(
        control_plane: ControlPlane, namespace: str) -> None:
    items = [_configmap(namespace, f"cm-{i}", selected=i % 4 != 0) for i in range(11)]
    control_plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    want = {f"cm-{i}" for i in range(11) if i % 4 != 0}

    async def run() -> tuple[int, int, set[str], set[str]]:
        client = await kube_client(control_plane)
        events: list[tuple[str, str]] = []
        inf = Informer(client, "ConfigMap", namespace, label_selector="pick=yes", page_size=3,
                       on_change=lambda ev, new, old: events.append((ev, (new or old or {})["metadata"]["name"])))
        task = await inf.start()
        try:
            await asyncio.wait_for(inf.synced.wait(), 30)
            listed = {o["metadata"]["name"] for o in inf.items()}
            await asyncio.to_thread(control_plane.kubectl, "delete", "configmap", "cm-1", "-n", namespace)
            await asyncio.to_thread(control_plane.kubectl, "apply", "-f", "-",
                                    input=json.dumps(_configmap(namespace, "cm-new", selected=True)))
            await until(lambda: ("DELETED", "cm-1") in events and inf.get(namespace, "cm-new") is not None, 30)
            return inf.pages, inf.lists, listed, {o["metadata"]["name"] for o in inf.items()}
        finally:
            task.cancel()
            await client.close()

    pages, lists, listed, after = asyncio.run(run())
    assert listed == want
    assert lists == 1
    assert pages >= -(-len(want) // 3)  # at least ceil(8 / 3) pages of at most 3 (a page may hold fewer)
    assert after == (want - {"cm-1"}) | {"cm-new"}

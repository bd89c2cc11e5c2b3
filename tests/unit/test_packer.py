"""The informers' and indexes' object packing: lossless, and small for objects alike."""

from __future__ import annotations

import copy
import json
import zlib
from typing import Any

import pytest

from celery_operator import api
from celery_operator.kube.informer import Packer
from celery_operator.offline import render_documents

Body = dict[str, Any]


def _cr(kind: str, name: str, **spec: Any) -> Body:
    return {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def _deployments() -> list[Body]:
    docs = [_cr(api.APP, "shop", image="example/shop:1", app="shop.app",
                broker={"external": {"urlSecretRef": {"name": "broker", "key": "url"}}})]
    for i in range(4):
        docs += [_cr(api.QUEUE, f"q{i}", appRef={"name": "shop"}),
                 _cr(api.POOL, f"p{i}", appRef={"name": "shop"}, queues=[f"q{i}"], replicas=1)]
    out = [o for o in render_documents(copy.deepcopy(docs), "ns") if o["kind"] == "Deployment"]
    assert len(out) == 4
    return out


def test_packed_objects_unpack_to_what_was_packed_without_managed_fields() -> None:
    packer = Packer()
    first, *rest = _deployments()
    odd = {"kind": "ConfigMap", "metadata": {"name": "x", "managedFields": [{"manager": "m"}]}, "data": {"k": "ü"}}
    blobs = [packer.pack(o) for o in (first, *rest, odd)]
    assert [packer.unpack(b) for b in blobs[:-1]] == [first, *rest]
    assert packer.unpack(blobs[-1]) == {"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "ü"}}


def test_objects_alike_pack_smaller_against_the_first_than_alone() -> None:
    packer = Packer()
    first, *rest = _deployments()
    packer.pack(first)
    for o in rest:
        alone = zlib.compress(json.dumps(o, separators=(",", ":")).encode(), 1)
        assert len(packer.pack(o)) * 3 < len(alone)


def test_a_packer_refuses_to_unpack_before_it_packed() -> None:
    with pytest.raises(ValueError, match="did not pack"):
        Packer().unpack(zlib.compress(b"{}"))

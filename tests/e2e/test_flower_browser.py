"""Flower in a real browser: the sample topology with Flower on, opened by headless Chromium through its Service.

Debian's Chromium (`/usr/bin/chromium`, installed by `make system-deps`), driven by Playwright from PyPI
(its driver ships in the wheel; no browser is downloaded). The browser reaches Flower at its Service's
ClusterIP, which kube-proxy's rules route from the host to the pod.

Before the credentials' Secret exists Flower does not run (the app says why); once it exists Flower starts,
refuses a browser without credentials (401), and, logged in, shows the workers of every pool by name, a
task the producer sent with its result, and the app's queues on the broker page. Screenshots of the
workers page and of the task page are saved in the test's directory (docs/flower-*.png are copies).
"""

from __future__ import annotations

import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from celery_operator import api
from localenv.cluster import Cluster
from tests.fixtures.brokers import RedisDb, Vhost
from tests.fixtures.operator import (
    OperatorFactory,
    celery_call,
    condition,
    get,
    list_events,
    sample_client_env,
    sample_documents,
    secret,
    start_sample_app,
    wait_for,
)
from tests.fixtures.servers import Images

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CHROMIUM = Path("/usr/bin/chromium")
# A fresh profile, nothing fetched in the background, no GPU or sandbox (root in a container-like host).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
AUTH_SECRET = "proj-flower-auth"
POOLS = ("default", "high", "low")
# Flower's broker page lists the queues its workers consume (their active_queues, as Flower last inspected
# them): those of the pools that always run. low_queue's pool scales to zero between bursts.
QUEUES = ("default", "high_queue")


@pytest.fixture
def browser_profile() -> Iterator[Path]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make system-deps` installs it")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as d:
        yield Path(d)


def ok(response: Any) -> bool:
    return response is not None and response.status == 200


def flower_condition(cp: Any, ns: str) -> dict[str, Any] | None:
    return condition(get(cp, ns, "celeryapp", "proj"), api.FLOWER_READY)


def test_flower_needs_its_secret_then_shows_every_pools_workers_a_task_with_its_result_and_the_queues(
        cluster: Cluster, namespace: str, tmp_path: Path, images: Images, operator_factory: OperatorFactory,
        broker_vhost: Vhost, backend_db: RedisDb, browser_profile: Path) -> None:
    cp, ns = cluster.control_plane, namespace
    cluster.refresh_images()  # the Flower image, on a cluster started before it existed
    docs = sample_documents(image=images.sample_tasks)
    for d in docs:
        if d["kind"] == api.APP:
            d["spec"]["flower"]["image"] = cluster.image("flower")
    start_sample_app(cp, ns, operator_factory, images.sample_tasks, broker_vhost.url, broker_vhost.management_url,
                     backend_db.url, docs=docs)

    # No Secret yet: no Flower at all (never an open one), and the app says how to fix it.
    blocked = wait_for(lambda: (c := flower_condition(cp, ns)) and c["reason"] == api.FlowerReason.AUTH_SECRET_NOT_FOUND
                       and c, 60, "FlowerReady=False/FlowerAuthSecretNotFound")
    assert blocked["status"] == "False" and f"kubectl create secret generic {AUTH_SECRET}" in blocked["message"]
    assert get(cp, ns, "celeryapp", "proj")["status"]["flower"] == {"state": "Blocked"}
    assert get(cp, ns, "deployment", "proj-flower") is None and get(cp, ns, "service", "proj-flower") is None
    # The Event is posted after the status that names the reason: awaited, not read at once.
    wait_for(lambda: any(e["reason"] == api.FlowerReason.AUTH_SECRET_NOT_FOUND and e["type"] == "Warning"
                         for e in list_events(cp, ns)), 30, "a FlowerAuthSecretNotFound Warning Event")

    password = secrets.token_urlsafe(12)
    secret(cp, ns, AUTH_SECRET, auth=f"admin:{password}")
    ready = wait_for(lambda: (c := flower_condition(cp, ns)) and c["status"] == "True" and c, 240, "FlowerReady=True")
    assert ready["reason"] == api.FlowerReason.READY
    status = get(cp, ns, "celeryapp", "proj")["status"]["flower"]
    assert status["state"] == "Ready" and status["url"] == f"http://proj-flower.{ns}.svc:{api.FLOWER_PORT}/"
    cluster_ip = get(cp, ns, "service", "proj-flower")["spec"]["clusterIP"]
    base = f"http://{cluster_ip}:{api.FLOWER_PORT}"

    # Work for every pool: the low pool autoscales from zero, a task on low_queue wakes it.
    env = sample_client_env(cp, ns, tmp_path, broker_vhost.url, backend_db.url)
    celery_call(cluster, env, "add-low")
    task = celery_call(cluster, env, "add-default")
    assert task["result"] == 3

    with sync_playwright() as pw:
        # Without credentials: refused. (Headless Chromium cancels the login prompt; the response was 401.)
        anonymous = pw.chromium.launch_persistent_context(
            str(browser_profile / "anonymous"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = anonymous.new_page()
            statuses: list[int] = []
            page.on("response", lambda r: statuses.append(r.status) if r.url.rstrip("/") == base else None)
            with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                page.goto(f"{base}/")
            assert statuses == [401]
        finally:
            anonymous.close()

        browser = pw.chromium.launch_persistent_context(
            str(browser_profile / "user"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            http_credentials={"username": "admin", "password": password}, viewport={"width": 1280, "height": 800})
        try:
            page = browser.new_page()
            assert ok(page.goto(f"{base}/workers"))
            for pool in POOLS:  # node names are <pool>@<pod name>
                page.locator("a", has_text=f"{pool}@proj-{pool}-").first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "flower-workers.png"), full_page=True)

            assert ok(page.goto(f"{base}/task/{task['id']}"))
            page.get_by_text("SUCCESS", exact=True).first.wait_for(timeout=60_000)
            body = page.locator("body").inner_text()
            assert "sample_tasks.tasks.add" in body and "(1, 2)" in body
            assert re.search(r"Result\s+3\s", body), body
            assert "default@proj-default-" in body  # the worker that ran it
            page.screenshot(path=str(tmp_path / "flower-task.png"), full_page=True)

            assert ok(page.goto(f"{base}/broker"))
            for q in QUEUES:
                page.get_by_text(q, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "flower-broker.png"), full_page=True)
        finally:
            browser.close()
    for shot in ("flower-workers.png", "flower-task.png"):
        assert (tmp_path / shot).stat().st_size > 10_000
    print(f"screenshots in {tmp_path}")

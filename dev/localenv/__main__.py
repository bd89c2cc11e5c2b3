"""`python -m localenv up | down | demo | keda install|uninstall | rabbitmq up|down FILE | images [--without-go]`
(what `make up`, `make down` and `make demo` run; `rabbitmq` is `make test`'s shared loopback RabbitMQ; `images`
builds the images, or those that need nothing from Go, which `make test` builds beside the Go binaries).

`up` starts the local cluster (control plane + one kubelet node, state in `.local/` or $LOCALENV_DIR) and leaves it
running; `down` stops it and gives the host back what the node changed (it also cleans up after a
test run that died without stopping its node); `demo` installs the operator with helm and runs the
sample topology and a producer on it; `keda install` installs KEDA (localenv.keda) on the cluster `up` started.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from localenv.cluster import Cluster
from localenv.node import ACTIVE_FILE, ENV_WAIT, NodeBusy, clean_up_after_crash, node_owner_alive, wait_for_no_node
from localenv.procs import REPO

# LOCALENV_DIR: where the cluster's state lives (`make test` keeps its run's cluster apart from `make up`'s).
STATE_DIR = Path(os.environ.get("LOCALENV_DIR") or REPO / ".local")
STATE = STATE_DIR / "state.json"
NAMESPACE = "demo"


def load_state() -> dict[str, Any] | None:
    return json.loads(STATE.read_text()) if STATE.exists() else None


def up() -> int:
    state = load_state()
    if state is not None:
        print(f"already up (state in {STATE}); `make down` first to restart")
        print_env(state)
        return 0
    STATE_DIR.mkdir(exist_ok=True)
    cluster = Cluster(workdir=STATE_DIR / "cluster")
    cluster.start()
    state = cluster.detach()
    STATE.write_text(json.dumps(state, indent=2))
    print(f"local cluster up in {cluster.timings['total']:.0f}s ({cluster.timings})")
    print_env(state)
    return 0


def print_env(state: dict[str, Any]) -> None:
    print(f"""
local cluster: {state['server']} (one node, `localhost`; images {', '.join(state['images'].values())})

Point kubectl at it:
  export KUBECONFIG={state['kubeconfig']} PATH={state['bin_dir']}:$PATH
  kubectl get nodes,pods -A
Run tests against it instead of a fresh cluster: LOCALENV_REUSE=1 .venv/bin/pytest ...
""")


def down() -> int:
    state = load_state()
    if state is not None:
        Cluster.attach(state).stop()
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        print("stopped")
    if ACTIVE_FILE.exists() and not node_owner_alive(json.loads(ACTIVE_FILE.read_text())):
        for line in clean_up_after_crash():
            print(line)
    elif state is None:
        print("nothing is up")
    return 0


def demo() -> int:
    from localenv import demo as demo_module

    state = load_state()
    assert state is not None
    return demo_module.run(state)


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "up"
    if cmd == "up":
        return up()
    if cmd == "down":
        return down()
    if cmd == "hostcheck":  # hostcheck save FILE | hostcheck compare FILE
        from localenv.hoststate import differences, snapshot

        path = Path(argv[3])
        if argv[2] == "save":
            # The host without any node: a run that died without stopping its node is cleaned up first,
            # one still running is waited for (CELERY_OPERATOR_NODE_WAIT_SECONDS).
            try:
                cleaned = wait_for_no_node(float(os.environ.get(ENV_WAIT, "0")))
            except NodeBusy as busy:
                print(busy, file=sys.stderr)
                return 1
            for line in cleaned:
                print(line)
            path.write_text(json.dumps(snapshot(), indent=1))
            return 0
        diff = differences(json.loads(path.read_text()), snapshot())
        for line in diff:
            print(f"host changed and not restored: {line}")
        print("host as it was" if not diff else f"{len(diff)} difference(s)")
        return 1 if diff else 0
    if cmd == "images":
        from localenv.images import KEDA_IMAGES, Images

        images = Images()
        built = [n for n in images.names() if n not in KEDA_IMAGES]  # KEDA's: `keda install` builds them
        if "--without-go" in argv[2:]:  # `make test` builds these beside the Go binaries
            built = [n for n in built if n in images.without_go()]
        images.build(*built)
        for name in built:
            print(images.ref(name))
        return 0
    if cmd == "keda" and len(argv) > 2 and argv[2] in ("install", "uninstall"):
        from localenv import keda

        state = load_state()
        if state is None:
            print("nothing is up: `make up` first", file=sys.stderr)
            return 1
        cluster = Cluster.attach(state)
        if argv[2] == "install":
            print(f"KEDA v{keda.version()} installed in {keda.install(cluster):.0f}s")
        else:
            keda.uninstall(cluster)
        return 0
    if cmd == "rabbitmq" and len(argv) > 3 and argv[2] in ("up", "down"):
        # One loopback RabbitMQ for all of a run's pytest workers (tests/fixtures/brokers.py): `up` starts it
        # and writes its state to FILE, `down` stops it and removes its files.
        from localenv.brokers import RabbitMQ

        path = Path(argv[3])
        if argv[2] == "up":
            server = RabbitMQ(Path(tempfile.mkdtemp(prefix="celery-operator-rabbitmq-")))
            server.start()
            path.write_text(json.dumps(server.state()))
            print(f"RabbitMQ {server.nodename} on 127.0.0.1:{server.amqp_port} for every test worker")
        elif path.exists():
            RabbitMQ.attach(json.loads(path.read_text())).cleanup()
            path.unlink()
        return 0
    if cmd == "demo":
        if not STATE.exists():
            up()
        return demo()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main(sys.argv))

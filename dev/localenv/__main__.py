"""`python -m localenv up | down | demo` (what `make up`, `make down` and `make demo` run).

`up` starts the local cluster (control plane + one kubelet node, state in `.local/`) and leaves it
running; `down` stops it and gives the host back what the node changed (it also cleans up after a
test run that died without stopping its node); `demo` installs the operator with helm and runs the
sample topology and a producer on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from localenv.cluster import Cluster
from localenv.node import ACTIVE_FILE, clean_up_after_crash, node_owner_alive
from localenv.procs import REPO

STATE_DIR = REPO / ".local"
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
    import yaml
    from tests.fixtures.operator import sample_documents

    from localenv.podrunner import PodRunner

    state = json.loads(STATE.read_text())
    env = {**os.environ, "KUBECONFIG": state["kubeconfig"],
           "PATH": f"{state['bin_dir']}{os.pathsep}{os.environ['PATH']}"}

    def kubectl(*args: str, input: str | None = None) -> str:
        return subprocess.run(["kubectl", *args], env=env, input=input, text=True, check=True,
                              capture_output=True).stdout

    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "-f", str(REPO / "crds"))
    kubectl("apply", "-f", "-", input=yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": NAMESPACE}}))
    for name, data in (("broker", {"url": state["broker_url"], "managementUrl": state["management_url"]}),
                       ("backend", {"url": state["redis_url"]})):
        kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}))
    kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(sample_documents()))
    op = subprocess.Popen([sys.executable, "-m", "celery_operator", "run", "--namespace", NAMESPACE,
                           "--host", "127.0.0.1", "--port", "8080", "--no-leader-election"], env=env)
    try:
        for _ in range(60):
            out = kubectl("get", "celeryapp", "proj", "-n", NAMESPACE,
                          "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
            if out == "True":
                break
            time.sleep(1)
        print(kubectl("get", "celery", "-n", NAMESPACE))
        with PodRunner(state["kubeconfig"]) as runner:
            for dep in ("proj-default", "proj-high", "proj-beat"):
                runner.run_deployment(NAMESPACE, dep)
            runner.run_deployment(NAMESPACE, "proj-low", replicas=1)
            print("workers and beat are running as local processes; metrics on http://127.0.0.1:8080/metrics")
            print(f"try: KUBECONFIG={state['kubeconfig']} kubectl get celery -n {NAMESPACE}   (Ctrl-C stops)")
            op.wait()
    except KeyboardInterrupt:
        pass
    finally:
        op.terminate()
        op.wait(30)
    return 0


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "up"
    if cmd == "up":
        return up()
    if cmd == "down":
        return down()
    if cmd == "demo":
        if not STATE.exists():
            up()
        return demo()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main(sys.argv))

"""`python -m localenv up | down | demo` (what `make up`, `make down` and `make demo` run).

`up` starts the control plane, RabbitMQ and Redis on loopback with their state in `.local/`, and
leaves them running; `down` stops them; `demo` runs the operator (in the foreground) with the
sample topology pointed at the local RabbitMQ and Redis, and runs its workers with the pod runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from localenv.brokers import RabbitMQ, Redis
from localenv.controlplane import ControlPlane
from localenv.procs import REPO

STATE_DIR = REPO / ".local"
STATE = STATE_DIR / "state.json"
NAMESPACE = "demo"


def _pgids(*procs: subprocess.Popen[bytes] | None) -> list[int]:
    return [p.pid for p in procs if p is not None]


def up() -> int:
    if STATE.exists():
        print(f"already up (state in {STATE}); `make down` first to restart")
        print_env(json.loads(STATE.read_text()))
        return 0
    STATE_DIR.mkdir(exist_ok=True)
    cp = ControlPlane(workdir=STATE_DIR / "control-plane")
    rabbit = RabbitMQ(STATE_DIR / "rabbitmq")
    redis = Redis(STATE_DIR / "redis")
    try:
        cp.start()
        rabbit.start()
        redis.start()
    except BaseException:
        cp.stop()
        rabbit.stop(graceful=False)
        redis.stop(graceful=False)
        raise
    state = {
        "kubeconfig": str(cp.kubeconfig), "server": cp.server, "bin_dir": str(cp.bin_dir),
        "broker_url": rabbit.url("/"), "management_url": rabbit.management_url, "redis_url": redis.url(0),
        "epmd_port": rabbit.epmd_port,
        "pgids": _pgids(*cp._procs.values(), rabbit._proc, rabbit._epmd, redis._proc),
    }
    STATE.write_text(json.dumps(state, indent=2))
    print_env(state)
    return 0


def print_env(state: dict[str, object]) -> None:
    print(f"""
local control plane: {state['server']}
RabbitMQ (broker):   {state['broker_url']}  management: {state['management_url']}
Redis (results):     {state['redis_url']}

Point kubectl at it:
  export KUBECONFIG={state['kubeconfig']} PATH={state['bin_dir']}:$PATH
  kubectl get namespaces
""")


def down() -> int:
    if not STATE.exists():
        print("nothing is up")
        return 0
    state = json.loads(STATE.read_text())
    for pgid in state["pgids"]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pgid in state["pgids"]:
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if shutil.which("epmd"):
        subprocess.run(["epmd", "-port", str(state["epmd_port"]), "-kill"], capture_output=True, check=False)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    print("stopped")
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

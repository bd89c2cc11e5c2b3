"""The fault suite as one table: fault, trials, converged, tasks lost, duplicate objects, time to recover.

Runs the scenarios of tests/e2e/faults.py (the same code the e2e tests assert on) on the real node:
the running local cluster when there is one (`make up`; or LOCALENV_REUSE=<state.json>), else one it
starts and stops. Each scenario gets its own namespace and operator processes.

    python bench/faults.py [--only NAME ...] [--skip NAME ...] [--kills 20] [--tasks 1000] [--outage 60]

Restarting the API server disturbs whatever else uses the cluster for a few seconds: `--skip apiserver`
on a cluster others use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "operator"), str(REPO)]

from tests.e2e import faults  # noqa: E402
from tests.fixtures.brokers import E2E_BROKERS_NAMESPACE, E2E_RABBITMQ_NAMESPACE  # noqa: E402
from tests.fixtures.cluster_brokers import PodRabbitMQ, PodRedis  # noqa: E402
from tests.fixtures.servers import Images, install_crds, operator_identity  # noqa: E402

from localenv.cluster import running_or_own  # noqa: E402

HEADER = ["fault", "trials", "converged", "tasks lost", "duplicate objects", "time to recover (s)"]


def scenarios(args: argparse.Namespace) -> dict[str, Callable[[faults.Harness], list[faults.Outcome]]]:
    return {
        "sigkill": lambda h: [faults.sigkill_during_churn(h, kills=args.kills, apps=10)],
        "pause": lambda h: [faults.paused_leader(h, trials=args.trials)],
        "recreate": lambda h: [faults.recreate_at_once(h, trials=args.trials)],
        "rabbitmq-outage": lambda h: [faults.broker_outage(h, "rabbitmq", seconds=args.outage)],
        "redis-outage": lambda h: [faults.broker_outage(h, "redis", seconds=args.outage)],
        "apiserver": lambda h: [faults.apiserver_restart(h)],
        "scaling": lambda h: [faults.scaling_under_load(h, tasks=args.tasks)],
        "reconcile-error": lambda h: [faults.reconcile_error_labelled(h)],
        "broker-switch": lambda h: [faults.broker_kind_switch(h)],
    }


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in [HEADER, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    p.add_argument("--skip", nargs="*", default=[], help="scenario names to leave out")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--outage", type=float, default=60.0)
    p.add_argument("--trials", type=int, default=1, help="trials of the paused leader and the recreated app")
    p.add_argument("--keep", action="store_true", help="leave each scenario's namespace and logs (to look at)")
    args = p.parse_args()
    chosen = scenarios(args)
    unknown = (set(args.only or ()) | set(args.skip)) - set(chosen)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; there are {list(chosen)}")
    names = [n for n in args.only or list(chosen) if n not in args.skip]
    rows: list[list[str]] = []
    with contextlib.ExitStack() as stack:
        d = tempfile.mkdtemp(prefix="faults-") if args.keep else stack.enter_context(
            tempfile.TemporaryDirectory(prefix="faults-"))
        if args.keep:
            print(f"keeping logs in {d}", file=sys.stderr)
        c = stack.enter_context(running_or_own(Path(d) / "cluster"))
        cp = c.control_plane
        install_crds(cp)
        kubeconfig = operator_identity(cp, Path(d))
        images = Images(sample_tasks=c.image("sample-tasks"), sample_tasks_newer=c.image("sample-tasks-newer"),
                        operator=c.image("operator"),
                        rabbitmq=c.image("rabbitmq"), redis=c.image("redis"))
        rabbit = PodRabbitMQ(cp, E2E_RABBITMQ_NAMESPACE, "rabbitmq", images.rabbitmq)
        rabbit.deploy()
        redis = PodRedis(cp, E2E_BROKERS_NAMESPACE, "redis", images.redis)
        redis.deploy()
        for name in names:
            ns = faults.new_namespace(cp)
            tmp = Path(d) / name
            tmp.mkdir()
            h = faults.Harness(c, images, kubeconfig, tmp, ns, rabbit, redis)
            t0 = time.monotonic()
            try:
                outcomes = chosen[name](h)
            except Exception as e:  # noqa: BLE001 - a scenario that breaks is a row, not the end
                traceback.print_exc()
                outcomes = [faults.Outcome(name, 1, 0, facts={"error": repr(e)})]
            finally:
                h.close()
                if not args.keep:
                    cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            for o in outcomes:
                rows.append(o.row())
                print(f"{name}: {o.row()} in {time.monotonic() - t0:.0f}s; {json.dumps(o.facts, default=str)[:2000]}",
                      file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

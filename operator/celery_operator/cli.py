"""`celery-operator run | render | producer-patch | crds | quarantine`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="celery-operator", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig or in-cluster config")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; globs as kopf allows)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    run.add_argument("--host", default=os.environ.get("CELERY_OPERATOR_HOST", "0.0.0.0"),
                     help="address of the HTTP port (probes and metrics)")
    run.add_argument("--port", type=int, default=int(os.environ.get("CELERY_OPERATOR_PORT", "8080")),
                     help="HTTP port serving /healthz, /readyz and /metrics (0 = pick a free one)")
    run.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=True,
                     help="work only on the shards whose Lease this replica holds (off: one replica does all)")
    run.add_argument("--shards", type=int, default=int(os.environ.get("CELERY_OPERATOR_SHARDS", "1")),
                     help="number of shards the CeleryApps are split into across replicas (1: leader election)")
    run.add_argument("--resync-seconds", type=float, default=300.0,
                     help="how often every app is re-decided from the caches (drift safety net; no API reads)")
    run.add_argument("--lease-name", default="celery-operator")
    run.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    run.add_argument("--identity", default=os.environ.get("POD_NAME") or None,
                     help="this replica's name in the Lease (default: hostname + pid)")
    run.add_argument("-v", "--verbose", action="store_true")

    render = sub.add_parser("render", help="print every object the operator would create for CR files (offline)")
    render.add_argument("files", nargs="+", type=Path, help="YAML files (or folders) of celery-operator CRs")
    render.add_argument("-n", "--namespace", default="default", help="namespace of CRs that name none")
    render.add_argument("--pod-monitor", action="store_true",
                        help="include the PodMonitor the operator adds where Prometheus Operator is installed")

    producer = sub.add_parser(
        "producer-patch", help="print the strategic-merge patch that makes a Deployment's container send "
                               "tasks routed like the app's workers (offline)")
    producer.add_argument("files", nargs="+", type=Path, help="YAML files (or folders) holding the CeleryApp")
    producer.add_argument("--app", help="metadata.name of the CeleryApp (needed when the files hold several)")
    producer.add_argument("--container", required=True, help="name of the producer's container")
    producer.add_argument("-n", "--namespace", default="default", help="namespace of CRs that name none")

    from celery_operator import quarantine_cli

    quarantine_cli.add_parser(sub)
    crds = sub.add_parser("crds", help="write (or print) the CRDs generated from the schema")
    crds.add_argument("--out", type=Path, help="folder to write one YAML per kind into (default: print)")
    return p


def _without_client_libraries() -> None:
    """kopf imports the Kubernetes client libraries' models whenever they are installed, to recognise
    them as bodies (about 20 MiB for the official one); the operator never passes it any and does not
    depend on them (kube.login). The image does not install them; where they are installed (a dev
    environment: the tests use the official one) the operator keeps them out the same way, so what runs
    there is what runs in the image. Before kopf's first import, which is why it lives here."""
    if "kopf" in sys.modules:
        return  # too late to matter (the operator was imported in this process already, e.g. by a test)
    for name in ("kubernetes", "kubernetes_asyncio", "pykube"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # `import` of it raises ImportError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if not args.verbose:  # kopf logs every handled watch event at INFO: our handlers only route
            logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        _without_client_libraries()
        from celery_operator.runner import RunOptions, run

        return run(RunOptions(
            namespaces=list(args.namespace), host=args.host, port=args.port,
            leader_election=args.leader_election, lease_name=args.lease_name,
            lease_namespace=args.lease_namespace, identity=args.identity, shards=args.shards,
            resync_seconds=args.resync_seconds, verbose=args.verbose))
    if args.command == "render":
        from celery_operator.offline import render_files

        sys.stdout.write(render_files(args.files, args.namespace, args.pod_monitor))
        return 0
    if args.command == "producer-patch":
        from celery_operator.offline import producer_patch_files

        sys.stdout.write(producer_patch_files(args.files, args.container, args.app, args.namespace))
        return 0
    if args.command == "crds":
        from celery_operator import schema

        if args.out:
            schema.write_crds(args.out)
        else:
            import yaml

            sys.stdout.write(yaml.safe_dump_all(list(schema.all_crds().values()), sort_keys=False))
        return 0
    if args.command == "quarantine":
        _without_client_libraries()
        import asyncio

        from celery_operator import quarantine_cli

        return asyncio.run(quarantine_cli.run(args))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

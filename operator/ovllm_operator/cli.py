"""`ovllm operator`: run the operator. Imports kopf only when it runs, so `ovllm --help` needs none of it."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers, help_line: str) -> None:
    parser = subparsers.add_parser(
        "operator",
        help=help_line,
        description="Reconcile OVLLMDeployment resources into engine Deployments, Services, conversion Jobs "
        "and status. Several replicas may run: kopf peering keeps one active (the highest --priority).",
    )
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch only this namespace (repeat for more; default every namespace)")
    parser.add_argument("--liveness-port", type=int, default=8080,
                        help="serve GET /healthz on this port for the liveness probe (0: none)")
    parser.add_argument("--metrics-port", type=int, default=8081,
                        help="serve the operator's own Prometheus metrics on this port (0: none)")
    parser.add_argument("--peering", default="ovllm-operator",
                        help="peering object shared by the replicas (ClusterKopfPeering or KopfPeering)")
    parser.add_argument("--standalone", action="store_true", help="no peering: this replica always works")
    parser.add_argument("--priority", type=int, default=0, help="among peers, the highest priority works")
    parser.add_argument("--resync-seconds", type=float, default=10.0,
                        help="re-check every resource this often (finished Jobs, ready pods, drift)")
    parser.add_argument("--autoscale-seconds", type=float, default=15.0,
                        help="read the engines' load and decide replicas of autoscaled resources this often")
    parser.add_argument("--log-format", choices=["json", "plain", "full"], default="json",
                        help="json: one JSON object per line, for log collectors")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    os.environ["OVLLM_RESYNC_SECONDS"] = str(args.resync_seconds)  # read when handlers register
    os.environ["OVLLM_AUTOSCALE_SECONDS"] = str(args.autoscale_seconds)
    import kopf

    from ovllm_operator import handlers  # noqa: F401 (registers the handlers)

    root = logging.getLogger()
    for handler in list(root.handlers):  # `ovllm` set up plain logging; kopf's format replaces it
        root.removeHandler(handler)
    kopf.configure(
        log_format={"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}[
            args.log_format],
        verbose=logging.getLogger().level <= logging.DEBUG,
    )
    if not args.standalone:
        from ovllm_operator import peering

        peering.ensure_peering(handlers.custom_objects_api(), args.peering, args.namespace)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_resync)
    if args.metrics_port:
        import prometheus_client

        prometheus_client.start_http_server(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        priority=args.priority,
        peering_name=None if args.standalone else args.peering,
        liveness_endpoint=liveness,
    )
    return 0


def _quiet_resync(record) -> bool:
    """Drop kopf's line for every successful resync (one per resource every few seconds); changes
    are logged, and posted as Events, by the reconcile itself."""
    return not str(record.msg).startswith(("Timer 'resync' succeeded", "Timer 'autoscale' succeeded"))

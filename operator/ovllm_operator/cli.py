"""`ovllm operator`: run the operator. Imports kopf only when it runs, so `ovllm --help` needs none of it."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--resync-seconds", type=float, default=600.0,
                        help="safety resync: re-check every resource this often, besides reacting to every "
                             "change of it and its children (default 10 minutes)")
    parser.add_argument("--workers", type=int, default=4,
                        help="reconciles at once (each blocks on the Kubernetes API while it writes)")
    parser.add_argument("--autoscale-seconds", type=float, default=15.0,
                        help="read the engines' load and decide replicas of autoscaled resources this often")
    parser.add_argument("--log-format", choices=["json", "plain", "full"], default="json",
                        help="json: one JSON object per line, for log collectors")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    import kopf

    from ovllm_operator.controller import Config, Controller
    from ovllm_operator.kube import Kube

    root = logging.getLogger()
    for handler in list(root.handlers):  # `ovllm` set up plain logging; kopf's format replaces it
        root.removeHandler(handler)
    kopf.configure(
        log_format={"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}[
            args.log_format],
        verbose=logging.getLogger().level <= logging.DEBUG,
    )
    kube = Kube(_api_client(connections=args.workers + 4))  # the workers', the Events' and the autoscaler's
    registry = kopf.OperatorRegistry()
    Controller(Config(resync_seconds=args.resync_seconds, autoscale_seconds=args.autoscale_seconds,
                      workers=args.workers), kube).register(registry)
    if not args.standalone:
        from kubernetes.client import CustomObjectsApi

        from ovllm_operator import peering

        peering.ensure_peering(CustomObjectsApi(kube.api_client), args.peering, args.namespace)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_resync)
    if args.metrics_port:
        import prometheus_client

        prometheus_client.start_http_server(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        registry=registry,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        priority=args.priority,
        peering_name=None if args.standalone else args.peering,
        liveness_endpoint=liveness,
    )
    return 0


def _api_client(connections: int):
    """A client for the cluster the operator runs in, or the kubeconfig's outside one, keeping up
    to `connections` connections open (one per thread that calls the API at once)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


def _quiet_resync(record) -> bool:
    """Drop kopf's line for every successful timer or event handler (one per resource and event);
    changes are logged, and posted as Events, by the reconcile itself."""
    text = str(record.msg)
    return not (text.startswith(("Timer ", "Handler ", "Indexing handler ")) and " succeeded" in text)

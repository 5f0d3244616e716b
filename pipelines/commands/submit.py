"""``rtune submit --host URL [--config F] [--set k=v] [--experiment NAME] [--wait] [--timeout S]
[--namespace NS]``: run the pipeline on a Kubeflow Pipelines cluster.

Compiles the pipeline from the config, uploads it as a version of ``reflection-tuning``, starts a
run with the config's parameters and prints its URL in the Kubeflow UI. With ``--wait`` it follows
the run: exit 0 when it SUCCEEDED, 1 when it ended otherwise (the run's error is printed) or is
still going after ``--timeout``. Auth: ``$KF_PIPELINES_TOKEN``, else the projected token file
(``$KF_PIPELINES_SA_TOKEN_PATH``, default /var/run/secrets/kubeflow/pipelines/token, read again
for every request), else none. The token is never printed. Before writing anything it checks the
backend: Kubeflow Pipelines >= 2.5, and in multi-user mode a namespace (``--namespace``, else the
pod's own). The work is in ``pipelines/submit.py`` and ``pipelines/kfp_rest.py``.
"""

from __future__ import annotations

import argparse
import sys

from rtune.pipelines.commands.compile import add_image_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("submit", help="upload the pipeline to Kubeflow and start a run")
    parser.add_argument("--host", required=True, help="Kubeflow Pipelines UI/API address")
    parser.add_argument("--config", default=None, help="run config (default local.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--experiment", default="reflection-tuning", help="KFP experiment name")
    parser.add_argument(
        "--namespace",
        default="",
        help="profile namespace (multi-user Kubeflow; in a pod default: the pod's own)",
    )
    parser.add_argument("--run-name", default="", help="run display name (default: config + time)")
    parser.add_argument(
        "--service-account",
        default="",
        help="run's ServiceAccount ('' = the install's: pipeline-runner on standalone KFP, "
        "default-editor in a Kubeflow Profile; manifests/ binds rtune's Role to those)",
    )
    add_image_arguments(parser)
    parser.add_argument("--wait", action="store_true", help="follow the run; exit code = result")
    parser.add_argument("--timeout", type=float, default=86400.0, metavar="S", help="--wait limit")
    parser.add_argument(
        "--poll-interval", type=float, default=10.0, metavar="S", help=argparse.SUPPRESS
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtune.pipelines.config import load_run_config
    from rtune.pipelines.kfp_rest import KfpClient, KfpError, resolve_token
    from rtune.pipelines.packaging import Images
    from rtune.pipelines.submit import SubmitRequest, pod_namespace, submit, wait_for_run

    request = SubmitRequest(
        config=load_run_config(args.config, args.overrides),
        experiment=args.experiment,
        namespace=args.namespace,
        images=Images(registry=args.image_registry, tag=args.image_tag),
        run_name=args.run_name,
        service_account=args.service_account,
    )
    token = resolve_token()
    print(f"auth: bearer token from {token.source}" if token else "auth: none (no token found)")
    client = KfpClient(args.host, token=token)
    done = submit(client, request, in_pod_namespace=pod_namespace())
    print(done.backend.line())
    if args.namespace and not done.backend.multi_user:
        print(f"note: single-user Kubeflow Pipelines has no namespaces; ignored {args.namespace}")
    action = "uploaded" if done.version_uploaded else "reusing unchanged"
    print(f"{action} pipeline version {done.version.name} of {done.pipeline.name}")
    print(f"experiment {done.experiment.name}: run {done.run.id} started")
    print(f"run: {done.run_url}")
    if not args.wait:
        return 0
    try:
        final = wait_for_run(
            client,
            done.run.id,
            args.timeout,
            args.poll_interval,
            on_state=lambda r: print(f"run state: {r.state}", flush=True),
            on_retry=lambda err, delay: print(
                f"Kubeflow Pipelines API unavailable ({err.problem}); retrying in {delay:g}s",
                file=sys.stderr,
                flush=True,
            ),
        )
    except KfpError as err:  # the wait ends, the run does not
        fix = f"{err.fix}; the run goes on: {done.run_url}"
        raise type(err)(err.file, f"{err.problem} (while following the run)", fix) from None
    if final.state == "SUCCEEDED":
        return 0
    if not final.finished:
        print(f"run still {final.state} after {args.timeout:g}s: {done.run_url}", file=sys.stderr)
        return 1
    detail = f": {final.error}" if final.error else ""
    print(f"run {final.id} {final.state}{detail}", file=sys.stderr)
    if final.failed_tasks:
        print(f"failed tasks: {', '.join(final.failed_tasks)}", file=sys.stderr)
    print(f"details: {done.run_url}", file=sys.stderr)
    return 1

"""``rtune rehearse``: run the compiled pipeline on this machine under a cluster pod's rules.

    rtune rehearse                                   # pipelines/compiled/... with configs/rehearsal.yaml
    rtune rehearse --until select_rifd --work /tmp/r # stop after a task; keep the work folder
    rtune rehearse --overlay manifests/overlays/prod # as multi-user Kubeflow runs it (a Profile)
    rtune rehearse --config pipelines/configs/rehearsal-70b.yaml --compile
                                                     # the 70B path: TrainJob, KServe, evaluate

Needs root and Linux namespaces (it runs every task as UID 10001 in its own mount namespace, all of
it in a network namespace whose only interface is loopback). Exit 0 when every rehearsed task
passed, 1 otherwise; each task prints one line (status, seconds, what it read and wrote).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

NETNS_MARK = "RTUNE_REHEARSAL_NETNS"
DEFAULT_COMPILED = "pipelines/compiled/reflection_tuning.yaml"
DEFAULT_CONFIG = "pipelines/configs/rehearsal.yaml"
DEFAULT_OVERLAY = "manifests/overlays/standalone"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rehearse",
        help="run the compiled pipeline under pod rules on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--compiled", default=DEFAULT_COMPILED, help="compiled IR YAML to run")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the IR from --config first, as `rtune submit` does (instead of --compiled)",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="run config (run parameters)")
    parser.add_argument("--until", default="", help="stop after this task (e.g. quantize)")
    parser.add_argument("--work", default="", help="work folder (default: a new temp folder)")
    parser.add_argument(
        "--overlay",
        default=DEFAULT_OVERLAY,
        help="manifests overlay whose namespace, volumes, env and RBAC the run gets "
        "(standalone: pipeline-runner; dev/prod: a Kubeflow Profile, default-editor)",
    )
    parser.add_argument(
        "--service-account",
        default="",
        help="the run's service account (default: the one the overlay binds its Role to)",
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="run the pipeline N times (the later runs show caching)"
    )
    parser.add_argument(
        "--kill",
        action="append",
        default=[],
        metavar="TASK:GLOB",
        help="SIGKILL TASK's first attempt once GLOB (under the work folder) matches a path; "
        "its retry must resume (e.g. finetune:pvcs/*/checkpoints/finetune/*/checkpoints/checkpoint-*/trainer_state.json)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if os.environ.get(NETNS_MARK) != "1":
        return _reexec_in_namespaces()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from rtune.pipelines.rehearsal.session import rehearse

    work = Path(args.work or tempfile.mkdtemp(prefix="rtune-rehearsal-")).resolve()
    kill = {}
    for item in args.kill:
        task, _, pattern = item.partition(":")
        kill[task] = lambda pattern=pattern: any(work.glob(pattern))
    result = rehearse(
        None if args.compile else Path(args.compiled),
        Path(args.config),
        work,
        args.until,
        args.service_account,
        kill=kill,
        runs=args.runs,
        overlay=args.overlay,
    )
    print(f"work folder: {work}")
    return 0 if result.passed else 1


def _reexec_in_namespaces() -> int:
    if os.geteuid() != 0:
        print(
            "rtune rehearse: error: needs root (it runs each task as UID 10001 in its own mount "
            "and network namespace)\n  fix: run it as root, e.g. in CI or a dev container",
            file=sys.stderr,
        )
        return 2
    command = [
        "unshare", "--net", "--mount", "--propagation", "private", "--",
        sys.executable, "-m", "rtune.pipelines.cli", *sys.argv[1:],
    ]  # fmt: skip
    return subprocess.run(command, env={**os.environ, NETNS_MARK: "1"}).returncode

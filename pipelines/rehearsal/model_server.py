"""The rehearsal's stand-in for ``python3 -m vllm.entrypoints.openai.api_server`` in a predictor pod.

vLLM needs a GPU; the rehearsal runs the ServingRuntime's command line with this module in vLLM's
place, reading the same flags (the runtime's, then the InferenceService's ``args``; the last
``--served-model-name`` wins, as in vLLM) and the same ``VLLM_API_KEY``. It serves the folder the
storage initializer filled (``--model``) through rtune's local OpenAI-compatible server
(``transformers serve`` behind the front that checks the key and the served name), on the pod's
address (``POD_IP``, as the downward API gives it) and ``--port``, until SIGTERM.

    python -m rtune.pipelines.rehearsal.model_server --model=/mnt/models \\
        --served-model-name=rtune-student --port=8080
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm-stand-in", allow_abbrev=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", action="append", default=[])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--reasoning-parser", default="")
    parser.add_argument("--reasoning-parser-plugin", default="")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"vllm stand-in: ignoring flags it does not play: {unknown}", flush=True)
    return args


def main(argv: list[str] | None = None) -> int:
    from rtune.components.serve.local_server import LocalServer

    args = parse(sys.argv[1:] if argv is None else argv)
    name = args.served_model_name[-1] if args.served_model_name else args.model
    reasoning = "reflection" if args.reasoning_parser == "rtune-reflection" else "none"
    host = args.host or os.environ.get("POD_IP", "127.0.0.1")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalServer(
        args.model,
        server="transformers",
        host=host,
        port=args.port,
        reasoning_format=reasoning,
        served_model_name=name,
        api_key_env="VLLM_API_KEY" if os.environ.get("VLLM_API_KEY") else "",
    ) as server:
        print(f"serving {args.model} as {name!r} at {server.base_url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

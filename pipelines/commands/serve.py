"""``rtune serve``: serve a model folder on loopback with an OpenAI-compatible API, in the foreground.

    rtune serve --model out/model                                  # transformers serve on CPU
    rtune serve --model out/model --port 8000 --reasoning-format reflection
    rtune serve --model default --server vllm                      # vLLM, on a GPU machine

Prints the base URL and a curl example, then serves until Ctrl-C or SIGTERM, which stop the
model server too. With ``--reasoning-format reflection`` the replies carry the
``<thinking>``/``<reflection>`` part in ``reasoning_content`` and the ``<output>`` part in
``content``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model with an OpenAI-compatible API on loopback",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="HF model folder | s3:// prefix | default")
    parser.add_argument("--port", type=int, default=8000, help="0 = a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--server", default="auto", choices=["auto", "transformers", "vllm"])
    parser.add_argument("--reasoning-format", default="none", choices=["none", "reflection"])
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds")
    parser.set_defaults(func=run)


def curl_example(base_url: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64}
    return (
        f"curl {base_url}/chat/completions -H 'Content-Type: application/json' "
        f"-d '{json.dumps(body)}'"
    )


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.models import resolve_model
    from rtune.components.serve.local_server import LocalServer

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with LocalServer(
            resolve_model(args.model),
            server=args.server,
            host=args.host,
            port=args.port,
            reasoning_format=args.reasoning_format,
            startup_timeout_s=args.startup_timeout,
        ) as server:
            print(f"serving {server.model} with {server.server} at {server.base_url}", flush=True)
            print(curl_example(server.base_url, server.model), flush=True)
            print("Ctrl-C or SIGTERM stops it.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
        print("stopped", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0

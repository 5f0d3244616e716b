"""``rtune serve``: serve a model folder with an OpenAI-compatible API, in the foreground.

    rtune serve --model out/model                                  # transformers serve on CPU
    rtune serve --model out/model --port 8000 --reasoning-format reflection
    RTUNE_SERVE_API_KEY=… rtune serve --model out/model --host 0.0.0.0 \\
        --api-key-env RTUNE_SERVE_API_KEY --served-model-name student
    rtune serve --model default --server vllm                      # vLLM, on a GPU machine

Clients name the model by ``--served-model-name`` (``default`` works too) and find it in
``GET /v1/models``. With ``--api-key-env NAME`` every route but ``/health`` needs
``Authorization: Bearer <the value of NAME>``; binding anything but loopback without it prints
a warning. Prints the served name, the base URL and a curl example, then serves until Ctrl-C or
SIGTERM, which stop the model server too. With ``--reasoning-format reflection`` the replies
carry the ``<thinking>``/``<reflection>`` part in ``reasoning_content`` and the ``<output>``
part in ``content``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from typing import Any

from rtune.pipelines.commands.config_flags import add_config_options, load_command_config

ALIASES = {"--startup-timeout": "serve.startup_timeout_s"}  # flags of earlier releases


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model with an OpenAI-compatible API (loopback by default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="HF model folder | s3:// prefix | default")
    parser.add_argument("--port", type=int, default=8000, help="0 = a free port")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 = every interface")
    from rtune.components.serve.config import ServeConfig

    add_config_options(parser, {"serve": ServeConfig}, ALIASES)
    parser.set_defaults(func=run)


def curl_example(base_url: str, model: str, api_key_env: str = "") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64}
    auth = f'-H "Authorization: Bearer ${api_key_env}" ' if api_key_env else ""
    return (
        f"curl {base_url}/chat/completions {auth}-H 'Content-Type: application/json' "
        f"-d '{json.dumps(body)}'"
    )


def check_access_flags(config: Any) -> None:
    """Refuse a bad name or an unset key variable before any model is looked at."""
    from rtune.components.common.records import InputError
    from rtune.components.serve.access import MissingApiKey, api_key_from_env, check_served_name

    try:
        check_served_name("--served-model-name", config.served_name())
    except ValueError as error:
        raise InputError("rtune serve flags", str(error), "pick another name") from None
    try:
        api_key_from_env(config.api_key_env, "--api-key-env")
    except (MissingApiKey, ValueError) as error:
        raise InputError(
            "rtune serve flags",
            str(error),
            "export the variable first (e.g. export RTUNE_SERVE_API_KEY=…), then pass its name",
            field="--api-key-env",
        ) from None


def run(args: argparse.Namespace) -> int:
    from rtune.components.common.models import resolve_model
    from rtune.components.serve.access import exposure_warning
    from rtune.components.serve.local_server import LocalServer

    serve = load_command_config(args).section("serve")
    check_access_flags(serve)
    if warning := exposure_warning(args.host, serve.api_key_env):
        print(warning, file=sys.stderr, flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with LocalServer(
            resolve_model(args.model),
            server=serve.server,
            host=args.host,
            port=args.port,
            reasoning_format=serve.reasoning_format,
            startup_timeout_s=serve.startup_timeout_s,
            served_model_name=serve.served_name(),
            api_key_env=serve.api_key_env,
        ) as server:
            guard = f"key from ${serve.api_key_env}" if serve.api_key_env else "no API key"
            print(
                f"serving {server.model!r} ({server.model_path}) with {server.server} at "
                f"{server.base_url} ({guard})",
                flush=True,
            )
            print(curl_example(server.base_url, server.model, serve.api_key_env), flush=True)
            print("Ctrl-C or SIGTERM stops it.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
        print("stopped", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0

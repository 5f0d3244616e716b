"""The serve stage as a pipeline task: a model folder in, a served, smoke-tested endpoint out.

    model/ (or its MODEL_URI.txt) -> local: LocalServer (transformers serve | vLLM) on loopback
                                  -> kserve: InferenceService on rtune-vllm, wait for Ready
                                  -> one chat completion (the smoke test)
                                  -> endpoint.json (EndpointSpec), MLflow tag rtune.endpoint,
                                     metrics smoke_ok / smoke_latency_s, KFP metrics

A local server lives only as long as the stage (a task must not leave a process behind); the
endpoint file records how to start it again (``open_endpoint``). A KServe service stays up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rtune.components.common.config import from_dict
from rtune.components.common.records import InputError
from rtune.components.common.stage import StageContext
from rtune.components.serve.client import SmokeResult, smoke_test
from rtune.components.serve.config import ServeConfig
from rtune.components.serve.endpoint import EndpointSpec

MODEL_URI_FILE = "MODEL_URI.txt"


class SmokeTestFailed(RuntimeError):
    """The endpoint came up but did not answer a chat completion."""


def model_store_uri(model_dir: Path) -> str:
    """The ``s3://`` location a Model artifact points at (cluster stages leave the weights in
    the store and write its URI into MODEL_URI.txt), or ``""``."""
    marker = Path(model_dir) / MODEL_URI_FILE
    return marker.read_text(encoding="utf-8").strip() if marker.is_file() else ""


def local_model_path(model_dir: Path) -> Path:
    """A local folder with the weights: the artifact itself, or a cached download of its URI."""
    from rtune.components.common.models import resolve_model

    uri = model_store_uri(model_dir)
    return resolve_model(uri) if uri else resolve_model(str(model_dir))


def storage_uri_for(model_dir: Path, config: ServeConfig) -> str:
    """Where KServe fetches the model from: ``serve.storage_uri``, else the artifact's URI."""
    uri = config.storage_uri or model_store_uri(model_dir)
    if not uri:
        raise InputError(
            str(model_dir),
            f"backend kserve needs the model in object storage, and this model folder has no "
            f"{MODEL_URI_FILE}",
            "set serve.storage_uri to the model's s3:// prefix, or set quantize.model_store "
            "(or finetune.model_store) so that the stage before uploads the model",
            field="serve.storage_uri",
        )
    return uri


def require_api_key(config: ServeConfig) -> None:
    """A named key variable must hold a key before anything starts (never a server left open)."""
    from rtune.components.serve.access import MissingApiKey, api_key_from_env

    try:
        api_key_from_env(config.api_key_env, "serve.api_key_env")
    except MissingApiKey as error:
        raise InputError(
            "the serve stage's environment",
            f"serve.api_key_env names {config.api_key_env}, which is not set or empty",
            f"set {config.api_key_env} to the key clients will send (on a cluster: from a "
            "Secret), or leave serve.api_key_env empty to serve without a key",
            field="serve.api_key_env",
        ) from error


@dataclass
class ServeSummary:
    values: dict[str, Any]

    @property
    def base_url(self) -> str:
        return str(self.values["base_url"])

    def as_dict(self) -> dict[str, Any]:
        """The metrics view: the smoke test's verdict as a number (a bool is not a metric)."""
        return {**self.values, "smoke_ok": float(self.values["smoke_ok"])}

    def line(self) -> str:
        v = self.values
        where = "stopped after its stage" if v["kind"] == "local" else "running"
        reply = str(v.get("smoke_reply") or "")[:60]
        return (
            f"{v['server']} {v['kind']} {v['base_url']} model {v['model']!r} ({where}); smoke test "
            f"ok in {v['smoke_latency_s']:.1f} s: {reply!r}"
        )

    def artifact_metadata(self) -> dict[str, Any]:
        keys = ("kind", "base_url", "model", "server", "reasoning_format")
        return {k: self.values[k] for k in keys}


@dataclass
class ServeStage:
    """A model folder (or its ``MODEL_URI.txt``) in; a served, smoke-tested endpoint spec out."""

    config: ServeConfig
    model: Path
    endpoint: Path
    name: str = "serve"

    @classmethod
    def from_parameters(
        cls, serve: Mapping[str, Any] | None, model: Path, endpoint: Path
    ) -> ServeStage:
        return cls(from_dict(ServeConfig, serve, "serve"), model, endpoint)

    def run(self, context: StageContext) -> ServeSummary:
        config, run = self.config, context.run
        require_api_key(config)
        if config.backend == "kserve":
            spec, smoke, timings = serve_on_kserve(Path(self.model), config, context.run_id)
        else:
            spec, smoke, timings = serve_locally(Path(self.model), config)
        spec.save(self.endpoint)
        summary = stage_summary(spec, smoke, timings)
        run.log_metrics(
            {"smoke_ok": float(smoke.ok), "smoke_latency_s": smoke.latency_s, **timings},
            to_parent=True,
        )
        run.set_tags(
            {
                "rtune.endpoint": spec.base_url,
                "rtune.endpoint_kind": spec.kind,
                "rtune.smoke_reply": str(summary.get("smoke_reply") or "")[:250],
            },
            to_parent=True,
        )
        run.log_json(asdict(spec), "serve/endpoint.json")
        run.log_json(summary, "serve/smoke_test.json")
        if not smoke.ok:
            raise SmokeTestFailed(
                f"the {spec.kind} endpoint {spec.base_url} (model {spec.model!r}) did not answer "
                f"the smoke test: {smoke.error}"
            )
        return ServeSummary(summary)


def serve_locally(
    model_dir: Path, config: ServeConfig
) -> tuple[EndpointSpec, SmokeResult, dict[str, float]]:
    """Start the local server, smoke-test it, stop it."""
    from rtune.components.serve.local_server import LocalServer

    model_path = local_model_path(model_dir)
    with LocalServer(
        model_path,
        server=config.server,
        port=config.port,
        reasoning_format=config.reasoning_format,
        startup_timeout_s=config.startup_timeout_s,
        served_model_name=config.served_name(),
        api_key_env=config.api_key_env,
    ) as server:
        smoke = smoke_test(server.endpoint(), config.smoke_prompt, config.smoke_max_tokens)
        spec = EndpointSpec(
            kind="local",
            base_url=server.base_url,
            model=server.model,
            model_path=str(model_path),
            server=server.server,
            reasoning_format=config.reasoning_format,
            api_key_env=config.api_key_env,
        )
        timings = {"startup_s": server.startup_s, "warmup_s": server.warmup_s}
    return spec, smoke, timings


def serve_on_kserve(
    model_dir: Path, config: ServeConfig, kfp_run_id: str
) -> tuple[EndpointSpec, SmokeResult, dict[str, float]]:
    """Create or update the InferenceService, wait for Ready, smoke-test its URL."""
    from kubernetes import client

    from rtune.components.common.k8s_workload import load_api_client, pod_namespace
    from rtune.components.serve.client import ChatEndpoint
    from rtune.components.serve.kserve import build_inference_service, create_or_update, wait_ready

    namespace = config.namespace or pod_namespace()
    name = config.instance_name(kfp_run_id)
    obj = build_inference_service(
        name,
        namespace,
        storage_uri_for(model_dir, config),
        runtime=config.runtime,
        gpus=config.gpus,
        reasoning_format=config.reasoning_format,
        served_model_name=config.served_name(),
        extra_args=config.extra_args,
        service_account=config.service_account,
        cpu=config.cpu,
        memory=config.memory,
        min_replicas=config.min_replicas,
        max_replicas=config.max_replicas,
        kfp_run_id=kfp_run_id,
    )
    with load_api_client() as api:
        custom = client.CustomObjectsApi(api)
        create_or_update(custom, obj)
        ready = wait_ready(custom, namespace, name, config.timeout_s, config.poll_interval_s)
    spec = EndpointSpec(
        kind="kserve",
        base_url=ready.base_url,
        model=config.served_name(),
        reasoning_format=config.reasoning_format,
        name=name,
        namespace=namespace,
        api_key_env=config.api_key_env,
    )
    endpoint = ChatEndpoint(
        spec.base_url,
        spec.model,
        api_key_env=spec.api_key_env,
        reasoning_format=spec.reasoning_format,
    )
    smoke = smoke_test(endpoint, config.smoke_prompt, config.smoke_max_tokens)
    return spec, smoke, {"ready_s": ready.elapsed_s}


def stage_summary(
    spec: EndpointSpec, smoke: SmokeResult, timings: Mapping[str, float]
) -> dict[str, Any]:
    reply = smoke.reply
    return {
        "kind": spec.kind,
        "base_url": spec.base_url,
        "model": spec.model,
        "server": spec.server or "vllm",
        "reasoning_format": spec.reasoning_format,
        "smoke_ok": smoke.ok,
        "smoke_latency_s": smoke.latency_s,
        "smoke_reply": reply.content if reply else "",
        "smoke_reasoning": (reply.reasoning or "") if reply else "",
        "smoke_error": smoke.error,
        **timings,
    }

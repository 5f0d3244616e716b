"""The fine-tuned student in the MLflow Model Registry: a version with alias ``candidate``.

The model is logged as an ``mlflow.pyfunc`` model whose artifact is the merged HF folder, so
``mlflow.pyfunc.load_model("models:/rtune-student@candidate").predict(["..."])`` generates with
it anywhere the package is installed. (MLflow's ``transformers`` flavor cannot log a
transformers-5 checkpoint yet: its task metadata lookup fails; pyfunc keeps the real weights.)
When the model already lives in an ``s3://`` model store, the version points there instead of
copying gigabytes into the run's artifacts.

The version is linked to the data it was trained on three ways: the run's ``training`` dataset
input, the logged model's metrics recorded against that dataset (MLflow 3 lineage), and tags
``rtune.training_dataset.*`` on the version itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

CANDIDATE_ALIAS = "candidate"


def chat_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The ids the student reads for one user prompt: its chat template (the training format,
    start token included, so nothing more is added) or, without one, the text as it is."""
    if not getattr(tokenizer, "chat_template", None):
        return list(tokenizer.encode(prompt))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


class StudentChatModel(PythonModel):
    """Generates a reply per prompt with the merged student (chat template when it has one)."""

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = context.artifacts["hf_model"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").eval()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import torch

        prompts = _prompts(model_input)
        max_new_tokens = int((params or {}).get("max_new_tokens", 64))
        replies = []
        for prompt in prompts:
            input_ids = torch.tensor([chat_prompt_ids(self.tokenizer, prompt)])
            ids = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
            with torch.inference_mode():
                out = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            replies.append(
                self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            )
        return replies


def _prompts(model_input: Any) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "iloc"):
        return [str(v) for v in model_input.iloc[:, 0].tolist()]
    return [str(v) for v in model_input]


@dataclass(frozen=True)
class RegisteredStudent:
    name: str
    version: str
    model_uri: str
    source: str


def register_student(
    model_dir: Path | None,
    store_uri: str,
    name: str,
    dataset: Mapping[str, str],
    metrics: Mapping[str, float],
) -> RegisteredStudent:
    """Log (or point at) the merged model, register a version, alias it ``candidate``.

    ``dataset`` = {"name", "source", "digest"} of the training data. Needs an active MLflow run.
    """
    import mlflow

    client = mlflow.MlflowClient()
    run = mlflow.active_run()
    assert run is not None, "register_student needs the stage's active MLflow run"
    if store_uri:
        version = _register_store_copy(client, name, store_uri, run.info.run_id)
        model_uri = f"models:/{name}/{version.version}"
    else:
        assert model_dir is not None
        info = mlflow.pyfunc.log_model(
            name="student",
            python_model=StudentChatModel(),
            artifacts={"hf_model": str(model_dir)},
            pip_requirements=_requirements(),
            registered_model_name=name,
            metadata={"training_dataset": dict(dataset)},
            signature=_signature(),
        )
        _link_dataset(info.model_id, metrics)
        version = client.get_model_version(name, str(info.registered_model_version))
        client.set_model_version_tag(name, version.version, "rtune.logged_model_id", info.model_id)
        model_uri = info.model_uri
    for key, value in dataset.items():
        client.set_model_version_tag(name, version.version, f"rtune.training_dataset.{key}", value)
    client.set_model_version_tag(name, version.version, "rtune.training_run", run.info.run_id)
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
    return RegisteredStudent(name, str(version.version), model_uri, str(version.source))


def _register_store_copy(client: Any, name: str, store_uri: str, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # already registered: add a version
        client.create_registered_model(name)
    return client.create_model_version(name, source=store_uri, run_id=run_id)


def _link_dataset(model_id: str, metrics: Mapping[str, float]) -> None:
    """Record the final metrics on the logged model against the run's ``training`` dataset."""
    import mlflow

    dataset = _training_dataset()
    for key, value in metrics.items():
        mlflow.log_metric(key, float(value), model_id=model_id, dataset=dataset)


def _training_dataset() -> Any:
    import mlflow

    run = mlflow.active_run()
    assert run is not None
    inputs = mlflow.get_run(run.info.run_id).inputs
    for item in inputs.dataset_inputs if inputs else []:
        if any(tag.key == "mlflow.data.context" and tag.value == "training" for tag in item.tags):
            return item.dataset
    return None


def _signature() -> Any:
    """Prompts in, replies out; ``max_new_tokens`` is an inference-time parameter."""
    from mlflow.models import infer_signature

    return infer_signature(["a prompt"], ["a reply"], params={"max_new_tokens": 64})


def _requirements() -> list[str]:
    import importlib.metadata as md

    return [f"{p}=={md.version(p)}" for p in ("torch", "transformers", "safetensors", "mlflow")]

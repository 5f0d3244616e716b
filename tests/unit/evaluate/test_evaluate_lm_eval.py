"""lm-evaluation-harness in the cluster: the command line for a served endpoint, the metrics read
from a results file shaped like lm-eval 0.4's, the subprocess plumbing (through a stand-in
``lm_eval`` module that checks its flags like the real CLI), and the error when it is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rtune.components.evaluate import lm_eval
from rtune.components.evaluate.lm_eval import (
    latest_results_file,
    lm_eval_command,
    metric_name,
    parse_results,
    run_lm_eval,
)

# What lm-eval 0.4.x writes to <output_path>/<model name sanitized>/results_<timestamp>.json
# (keys "<metric>,<filter>", stderr twins, "alias"/"name"/"sample_len", groups with subtasks).
RESULTS: dict[str, Any] = {
    "results": {
        "gsm8k": {
            "name": "gsm8k",
            "alias": "gsm8k",
            "sample_len": 10,
            "exact_match,strict-match": 0.4,
            "exact_match_stderr,strict-match": 0.1633,
            "exact_match,flexible-extract": 0.5,
            "exact_match_stderr,flexible-extract": 0.1667,
        },
        "ifeval": {
            "name": "ifeval",
            "alias": "ifeval",
            "sample_len": 10,
            "prompt_level_strict_acc,none": 0.3,
            "prompt_level_strict_acc_stderr,none": 0.1528,
            "inst_level_strict_acc,none": 0.45,
            "inst_level_strict_acc_stderr,none": "N/A",
            "prompt_level_loose_acc,none": 0.35,
            "prompt_level_loose_acc_stderr,none": 0.159,
            "inst_level_loose_acc,none": 0.5,
            "inst_level_loose_acc_stderr,none": "N/A",
        },
        "mmlu": {"name": "mmlu", "alias": "mmlu", "acc,none": 0.27, "acc_stderr,none": 0.012},
        "mmlu_abstract_algebra": {
            "name": "mmlu_abstract_algebra",
            "alias": "  - abstract_algebra",
            "sample_len": 10,
            "acc,none": 0.2,
            "acc_stderr,none": 0.1333,
        },
    },
    "groups": {"mmlu": {"alias": "mmlu", "acc,none": 0.27, "acc_stderr,none": 0.012}},
    "group_subtasks": {"mmlu": ["mmlu_abstract_algebra"], "gsm8k": [], "ifeval": []},
    "configs": {"gsm8k": {"task": "gsm8k", "dataset_path": "openai/gsm8k", "num_fewshot": 5}},
    "versions": {"gsm8k": 3.0, "ifeval": 4.0, "mmlu": 2, "mmlu_abstract_algebra": 1.0},
    "n-shot": {"gsm8k": 5, "ifeval": 0, "mmlu_abstract_algebra": 0},
    "higher_is_better": {"gsm8k": {"exact_match": True}, "ifeval": {"inst_level_loose_acc": True}},
    "n-samples": {"gsm8k": {"original": 1319, "effective": 10}},
    "config": {"model": "local-chat-completions", "batch_size": 1, "limit": 10.0},
    "git_hash": None,
    "date": 1764050000.0,
    "task_hashes": {},
    "model_name": "rtune-student",
    "model_name_sanitized": "rtune-student",
    "total_evaluation_time_seconds": "41.7",
}


def test_chat_command_for_a_served_endpoint(tmp_path: Path) -> None:
    command = lm_eval_command(
        "http://rtune-student.ns.svc/v1/", "rtune-student", ["gsm8k", "ifeval"], tmp_path,
        limit=10, num_concurrent=4, cache=tmp_path / "cache" / "requests", python="python",
    )  # fmt: skip
    assert command[:3] == ["python", "-m", "lm_eval"]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags["--model"] == "local-chat-completions"
    assert flags["--model_args"] == (
        "base_url=http://rtune-student.ns.svc/v1/chat/completions,model=rtune-student,"
        "num_concurrent=4,tokenized_requests=False"
    )
    assert "--apply_chat_template" in command
    tail = command[command.index("--tasks") :]
    assert tail[:2] == ["--tasks", "gsm8k,ifeval"]
    assert tail[tail.index("--output_path") + 1] == str(tmp_path)
    assert tail[tail.index("--limit") + 1] == "10"
    assert tail[tail.index("--use_cache") + 1] == str(tmp_path / "cache" / "requests")


def test_loglikelihood_command_uses_completions_and_a_tokenizer(tmp_path: Path) -> None:
    command = lm_eval_command(
        "http://h/v1", "m", ["mmlu"], tmp_path, loglikelihood=True, tokenizer="org/tok"
    )
    args = command[command.index("--model_args") + 1]
    assert command[command.index("--model") + 1] == "local-completions"
    assert args.startswith("base_url=http://h/v1/completions,model=m,")
    assert "tokenizer_backend=huggingface" in args and "tokenizer=org/tok" in args
    assert "--limit" not in command and "--use_cache" not in command
    default = lm_eval_command("http://h/v1", "m", ["mmlu"], tmp_path, loglikelihood=True)
    assert "tokenizer=m" in default[default.index("--model_args") + 1]


def test_metric_names() -> None:
    assert (
        metric_name("gsm8k", "exact_match,strict-match") == "lm_eval/gsm8k/exact_match_strict-match"
    )
    assert metric_name("mmlu", "acc,none") == "lm_eval/mmlu/acc"
    assert metric_name("mmlu", "acc_stderr,none") is None
    assert metric_name("gsm8k", "alias") is None and metric_name("gsm8k", "sample_len") is None


def test_results_are_parsed_for_the_requested_tasks() -> None:
    metrics = parse_results(RESULTS, ["gsm8k", "ifeval", "mmlu"])
    assert metrics == {
        "lm_eval/gsm8k/exact_match_strict-match": 0.4,
        "lm_eval/gsm8k/exact_match_flexible-extract": 0.5,
        "lm_eval/ifeval/prompt_level_strict_acc": 0.3,
        "lm_eval/ifeval/inst_level_strict_acc": 0.45,
        "lm_eval/ifeval/prompt_level_loose_acc": 0.35,
        "lm_eval/ifeval/inst_level_loose_acc": 0.5,
        "lm_eval/mmlu/acc": 0.27,
    }  # subtasks, stderrs and bookkeeping keys are left out
    with pytest.raises(ValueError, match="no entry for task"):
        parse_results(RESULTS, ["gsm8k", "arc_easy"])
    with pytest.raises(ValueError, match="not an lm-eval results file"):
        parse_results({"accuracy": 1}, ["gsm8k"])


def test_latest_results_file_is_found_below_the_model_folder(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no results"):
        latest_results_file(tmp_path)
    older = tmp_path / "m" / "results_2025-01-01T00-00-00.json"
    newer = tmp_path / "m" / "results_2025-01-02T00-00-00.json"
    older.parent.mkdir()
    older.write_text("{}")
    newer.write_text("{}")
    assert latest_results_file(tmp_path) == newer


# A stand-in `lm_eval` package: parses the flags the real 0.4 CLI defines for these options,
# records argv and the environment it was given, and writes RESULTS where the real one would.
# Its settings sit in a file beside it: the harness runs with a scrubbed environment.
FAKE_MAIN = """
import argparse, json, os, re, sys
from pathlib import Path
settings = json.loads(Path(__file__).with_name("settings.json").read_text())
parser = argparse.ArgumentParser()
for flag in ("--model", "--model_args", "--tasks", "--output_path", "--limit", "--use_cache"):
    parser.add_argument(flag)
parser.add_argument("--apply_chat_template", nargs="?", const=True)
args = parser.parse_args()
model_args = dict(kv.split("=", 1) for kv in args.model_args.split(","))
Path(settings["log"]).write_text(json.dumps({"argv": sys.argv[1:], "env": dict(os.environ)}))
if settings.get("fail"):
    sys.exit(3)
folder = Path(args.output_path) / re.sub(r'[\\"<>:/|\\\\?*\\[\\]]+', "__", model_args["model"])
folder.mkdir(parents=True, exist_ok=True)
(folder / "results_2025-11-25T05-00-00.json").write_text(json.dumps(settings["results"]))
"""
TEACHER_KEY = "sk-teacher-secret"


def _fake_settings(package: Path, **values: Any) -> None:
    (package / "settings.json").write_text(json.dumps(values))


@pytest.fixture()
def fake_lm_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in on PYTHONPATH; the pod's environment holds the teacher's key under the
    name lm-eval reads, a cloud secret, and the served endpoint's own key."""
    package = tmp_path / "site" / "lm_eval"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_MAIN)
    _fake_settings(package, log=str(tmp_path / "call.json"), results=RESULTS)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    monkeypatch.setenv("OPENAI_API_KEY", TEACHER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("RTUNE_SERVED_KEY", "sk-served-secret")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "call.json"


def test_run_lm_eval_passes_the_key_by_env_and_reads_the_results(
    fake_lm_eval: Path, tmp_path: Path
) -> None:
    metrics = run_lm_eval(
        "http://127.0.0.1:9/v1", "org/model", ["gsm8k"], tmp_path / "out",
        api_key_env="RTUNE_SERVED_KEY", limit=5,
    )  # fmt: skip
    assert metrics == {
        "lm_eval/gsm8k/exact_match_strict-match": 0.4,
        "lm_eval/gsm8k/exact_match_flexible-extract": 0.5,
    }
    call = json.loads(fake_lm_eval.read_text())
    assert call["env"]["OPENAI_API_KEY"] == "sk-served-secret"
    assert "sk-served-secret" not in " ".join(call["argv"])  # never on the command line
    assert (tmp_path / "out" / "org__model").is_dir()


def test_the_harness_gets_only_its_endpoint_key_never_the_teachers(
    fake_lm_eval: Path, tmp_path: Path
) -> None:
    """lm-eval sends ``OPENAI_API_KEY`` as the Bearer token to the endpoint it evaluates: an
    endpoint without a key of its own gets a placeholder, never the teacher's key that the
    pod holds under that name; other secrets of the pod are not passed on at all."""
    run_lm_eval("http://127.0.0.1:9/v1", "m", ["gsm8k"], tmp_path / "out")
    env = json.loads(fake_lm_eval.read_text())["env"]
    assert env["OPENAI_API_KEY"] == "EMPTY"
    assert TEACHER_KEY not in json.dumps(env)
    assert "aws-secret" not in json.dumps(env) and "sk-served-secret" not in json.dumps(env)
    assert env["HF_HOME"] == str(tmp_path / "hf") and env["PATH"]  # what it needs stays


def test_a_failing_harness_is_an_error(
    fake_lm_eval: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_settings(fake_lm_eval.parent / "site" / "lm_eval", log=str(fake_lm_eval), fail=True)
    with pytest.raises(RuntimeError, match="lm_eval exited with code 3") as info:
        run_lm_eval("http://user:pw-123@127.0.0.1:9/v1", "m", ["gsm8k"], tmp_path / "out")
    assert "http://***@127.0.0.1:9/v1" in str(info.value) and "pw-123" not in str(info.value)


def test_missing_harness_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lm_eval, "lm_eval_installed", lambda: False)
    with pytest.raises(RuntimeError, match=r"install the eval extra .*rtune-base image"):
        run_lm_eval("http://h/v1", "m", ["gsm8k"], tmp_path)
    assert run_lm_eval("http://h/v1", "m", [], tmp_path) == {}  # nothing asked: nothing needed


TASK_YAML = """
task: rtune_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  do_sample: false
  max_gen_toks: 16
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "(-?[0-9]+)"
      - function: take_first
metadata:
  version: 1.0
"""


@pytest.mark.integration
def test_real_harness_against_a_loopback_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where lm-eval is installed (the eval extra, the base image): the real CLI runs our
    command against an OpenAI-compatible server on loopback, with a local task (no download);
    a second run is served from the harness's request cache."""
    pytest.importorskip("lm_eval")
    from tests.fakes.openai_server import FakeOpenAIServer, last_user_message

    data = tmp_path / "data.jsonl"
    rows = [("2 + 3", "5"), ("7 * 6", "42"), ("10 - 4", "6")]
    data.write_text(
        "".join(json.dumps({"question": f"What is {q}?", "answer": a}) + "\n" for q, a in rows)
    )
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "rtune_arith.yaml").write_text(TASK_YAML.format(data=data))
    command = lm_eval.lm_eval_command
    monkeypatch.setattr(
        lm_eval,
        "lm_eval_command",
        lambda *a, **k: [*command(*a, **k), "--include_path", str(tmp_path / "tasks")],
    )
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", TEACHER_KEY)
    answers = {"2 + 3": "5", "7 * 6": "41", "10 - 4": "6"}  # two of three right

    def reply(body: dict[str, Any]) -> str:
        question = last_user_message(body)
        return next((v for k, v in answers.items() if k in question), "0")

    with FakeOpenAIServer(reply=reply, model="rtune-student") as server:
        options = {"limit": 3, "num_concurrent": 2, "cache": tmp_path / "cache" / "requests"}
        first = run_lm_eval(
            server.url, "rtune-student", ["rtune_arith"], tmp_path / "out", **options
        )
        assert first == {"lm_eval/rtune_arith/exact_match_strict-match": pytest.approx(2 / 3)}
        assert len(server.completions) == 3
        assert server.completions[0].body["messages"][-1]["content"].startswith("Question:")
        assert set(server.authorizations) == {"Bearer EMPTY"}
        again = run_lm_eval(
            server.url, "rtune-student", ["rtune_arith"], tmp_path / "out2", **options
        )
        assert again == first and len(server.completions) == 3  # all from the cache


@pytest.mark.integration
def test_loglikelihood_tokenizer_is_the_students_own_fetched_without_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the served model's name (a hub id a cluster pod cannot reach): the student's tokenizer
    files, from its s3:// prefix, without the weights."""
    from rtune.components.evaluate.config import EvaluateConfig
    from rtune.components.evaluate.task import lm_eval_tokenizer
    from tests.servers import moto_s3, use_s3

    with moto_s3() as endpoint:
        s3 = use_s3(monkeypatch, endpoint, tmp_path / "cache", "models")
        for name, body in {
            "config.json": b'{"model_type": "llama"}',
            "tokenizer.json": b"{}",
            "tokenizer_config.json": b"{}",
            "model.safetensors": b"weights" * 1000,
        }.items():
            s3.put_object(Bucket="models", Key=f"student/{name}", Body=body)
        folder = lm_eval_tokenizer(EvaluateConfig(base_model="s3://models/student"))
        own = tmp_path / "own-tokenizer"
        own.mkdir()
        (own / "config.json").write_text("{}")
        chosen = lm_eval_tokenizer(
            EvaluateConfig(base_model="s3://models/student", lm_eval_tokenizer=str(own))
        )
    assert (folder / "tokenizer.json").is_file() and not (folder / "model.safetensors").exists()
    assert chosen == own  # a tokenizer set in the config wins


@pytest.mark.integration
def test_building_the_tasks_puts_their_data_where_the_image_keeps_it(tmp_path: Path) -> None:
    """What the base image runs at build time (the same command, in a process of its own: the
    harness sets up logging and ``datasets`` reads its cache folder once): the tasks are built,
    so their data lands in HF_DATASETS_CACHE, the folder the image keeps for its offline pods."""
    pytest.importorskip("lm_eval")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "rtune_arith.yaml").write_text(TASK_YAML.format(data=data))
    cache = tmp_path / "hf-datasets"
    command = [sys.executable, "-m", "rtune.components.evaluate.task_data", "rtune_arith"]
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [*command, "--include-path", str(tmp_path / "tasks")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"task data for 1 task(s) in {cache}: rtune_arith" in done.stdout
    assert any(cache.rglob("*.arrow"))

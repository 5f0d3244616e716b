"""Failures that are the user's to fix end in one message and exit code 2, never a traceback.

Each failure is real: ``--set`` values parsed as YAML, moto's S3 server on loopback (a missing
bucket, no credentials, a closed port), a write to ``/dev/full`` (ENOSPC) and into ``/sys``
(EACCES, even for root).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtune.components.common.ports import free_port
from rtune.components.common.records import InputError
from rtune.pipelines.cli import main
from rtune.pipelines.config import DEFAULT_CONFIG, load_run_config
from tests.servers import moto_s3, use_s3

SECRET = "s3cr3t-value-never-printed"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# ----------------------------------------------------------------------------- --set


@pytest.mark.parametrize(
    ("override", "where", "expected"),
    [
        ("prepare=5", "field 'prepare'", "section 'prepare' must be a mapping"),
        ("teacher=[1,2]", "field 'teacher'", "section 'teacher' must be a mapping"),
        ("cluster=gpu", "field 'cluster'", "section 'cluster' must be a mapping"),
        ("local=3", "field 'local'", "section 'local' must be a mapping"),
        ("cluster.images=ghcr.io/me", "cluster, field 'images'", "images must be a mapping"),
        ("cluster.scoring.gpus=abc", "cluster.scoring, field 'gpus'", "must be an integer"),
        ("cluster.quantize.gpus=-1", "cluster.quantize: gpus", "must be an integer >= 0"),
        ("cluster.default.memory=[8]", "cluster.default, field 'memory'", "must be a string"),
        ("finetune.learning_rate=abc", "finetune, field 'learning_rate'", "must be a number"),
        ("finetune.max_steps=abc", "finetune, field 'max_steps'", "must be an integer"),
        ("tracking.enabled=maybe", "tracking, field 'enabled'", "must be true or false"),
        ("scoring.num_shards=abc", "scoring, field 'num_shards'", "must be an integer"),
        ("student.max_length=1.5", "student, field 'max_length'", "must be an integer"),
        ("prepare.limit=[3]", "prepare, field 'limit'", "must be an integer or null"),
        ("seed_uri=5", "field 'seed_uri'", "seed_uri must be a string"),
        ("checkpoint_root=[1]", "field 'checkpoint_root'", "checkpoint_root must be a string"),
    ],
)
def test_a_set_of_the_wrong_shape_or_type_names_the_key_and_the_type(
    override: str, where: str, expected: str
) -> None:
    with pytest.raises(InputError) as raised:
        load_run_config(None, [override])
    message = str(raised.value)
    assert message.startswith(str(DEFAULT_CONFIG)) and where in message
    assert expected in raised.value.problem


def test_a_set_value_that_is_not_yaml_names_the_key_and_how_to_quote(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(InputError) as raised:
        load_run_config(None, ["prepare.limit=[1"])
    assert raised.value.field == "prepare.limit" and "not valid YAML" in raised.value.problem
    assert "quote" in raised.value.fix
    code, err = run_cli(
        ["compile", "-o", str(tmp_path / "p.yaml"), "--set", "teacher.model={a: [1"], capsys
    )
    assert code == 2 and "teacher.model" in err and err.count("error:") == 1


def test_wrong_types_in_a_config_file_are_caught_too(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("cluster:\n  scoring:\n    gpus: two\n", encoding="utf-8")
    with pytest.raises(InputError) as raised:
        load_run_config(config)
    assert str(raised.value).startswith(f"{config}: cluster.scoring, field 'gpus'")
    assert "must be an integer" in raised.value.problem


def test_valid_sets_still_apply() -> None:
    config = load_run_config(
        None,
        [
            "cluster.scoring.gpus=2",
            "finetune.learning_rate=1e-5",
            "prepare.limit=null",
            "seed_uri=s3://data/seed.jsonl",
            "checkpoint_root=/mnt/checkpoints",
        ],
    )
    assert config.cluster.scoring.gpus == 2 and config.section("finetune").learning_rate == 1e-5
    assert config.section("prepare").limit is None
    assert (config.seed_uri, config.checkpoint_root) == ("s3://data/seed.jsonl", "/mnt/checkpoints")


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("prepare=5", "prepare"),
        ("teacher=[1,2]", "teacher"),
        ("cluster.scoring.gpus=abc", "cluster.scoring, field 'gpus'"),
        ("prepare.limit=[1", "prepare.limit"),
    ],
)
def test_cli_set_errors_exit_2_with_one_message(
    override: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["compile", "-o", str(tmp_path / "p.yaml"), "--set", override], capsys)
    assert code == 2 and err.startswith("rtune compile: error:") and err.count("error:") == 1
    assert where in err


# ----------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    use_s3(monkeypatch, s3_server, tmp_path / "cache", "rtune-data")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return s3_server


@pytest.fixture()
def no_credentials(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS credentials anywhere boto3 looks (env, files, instance metadata)."""
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches credentials found earlier
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("RTUNE_CACHE", str(tmp_path / "cache"))


def prepare_to(output: str, input_uri: str = "builtin:seed") -> list[str]:
    return [
        "prepare",
        "--input",
        input_uri,
        "--output",
        output,
        "--tokenizer",
        "none",
        "--no-tracking",
    ]


@pytest.mark.integration
def test_an_s3_uri_without_a_bucket_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(prepare_to(str(tmp_path / "out.jsonl"), input_uri="s3://"), capsys)
    assert code == 2 and "s3://" in err and "--input" in err and "bucket" in err


@pytest.mark.integration
def test_upload_to_a_missing_bucket_names_the_uri_and_the_fix(
    s3_env: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    code, err = run_cli(prepare_to("s3://no-such-bucket/prepared/seed.jsonl"), capsys)
    assert code == 2 and err.count("error:") == 1
    assert "s3://no-such-bucket/prepared/seed.jsonl" in err and "NoSuchBucket" in err
    assert "create the bucket" in err
    assert SECRET not in err + caplog.text


@pytest.mark.integration
def test_missing_credentials_on_an_s3_output_is_one_message(
    no_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(prepare_to("s3://rtune-data/prepared/seed.jsonl"), capsys)
    assert code == 2 and "s3://rtune-data/prepared/seed.jsonl" in err
    assert "no S3 credentials" in err and "AWS_ACCESS_KEY_ID" in err


@pytest.mark.integration
def test_an_unreachable_s3_endpoint_names_the_endpoint(
    s3_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, err = run_cli(prepare_to("s3://rtune-data/seed.jsonl"), capsys)
    assert code == 2 and closed in err and "s3://rtune-data/seed.jsonl" in err
    assert "AWS_ENDPOINT_URL" in err and SECRET not in err


# ----------------------------------------------------------------------------- the local disk


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux /dev/full")
def test_disk_full_names_the_output_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "pipeline.yaml"
    output.symlink_to("/dev/full")  # every write there fails with ENOSPC
    code, err = run_cli(["compile", "-o", str(output)], capsys)
    assert code == 2 and str(output) in err and os.strerror(errno.ENOSPC) in err
    assert "free space" in err


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux sysfs")
def test_permission_denied_names_the_path_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(prepare_to("/sys/rtune-prepared.jsonl"), capsys)  # EACCES, even as root
    assert code == 2 and "/sys/" in err and os.strerror(errno.EACCES) in err
    assert "--output" in err

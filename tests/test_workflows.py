"""GitHub workflows (``.github/workflows/``): schema-valid, SHA-pinned, least privilege, and doing what
the README and the Makefile say (the same test command, every overlay rendered, every image built).

Offline: check-jsonschema validates against the GitHub workflow schema it vendors.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.yml"))
PINNED_USES = re.compile(
    r"^\s*(?:-\s+)?uses:\s+(?P<action>[\w.-]+/[\w./-]+)@(?P<sha>[0-9a-f]{40})\s+#\s*(?P<version>v\d+\.\d+\.\d+)\s*$"
)
# the only write scopes a job may hold: (workflow file, job) -> scopes
WRITE_ALLOWED = {("images.yml", "build"): {"packages"}}


def tool(name: str) -> str:
    """A console script of the dev extra, next to this interpreter (or on PATH)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    assert found, f"{name} not found: install the dev extra (`make setup`)"
    return found


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOW_DIR / name).read_text())


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the bare key `on` as the boolean True
    return workflow.get("on", workflow.get(True)) or {}


def steps(workflow: dict[str, Any], job: str | None = None) -> list[dict[str, Any]]:
    jobs = workflow["jobs"]
    return [step for name, spec in jobs.items() if job in (None, name) for step in spec["steps"]]


def run_scripts(workflow: dict[str, Any], job: str | None = None) -> list[str]:
    return [step["run"] for step in steps(workflow, job) if "run" in step]


def make_targets() -> set[str]:
    return set(re.findall(r"(?m)^([\w-]+):", (ROOT / "Makefile").read_text()))


def test_the_three_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "images.yml", "pipeline.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_github_workflow_schema(path: Path) -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  build:\n    steps: run make test\n")
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "steps" in result.stdout


def test_every_action_is_pinned_to_a_full_commit_sha_with_its_version() -> None:
    seen: dict[str, set[tuple[str, str]]] = {}
    for path in WORKFLOWS:
        parsed = [
            step["uses"] for step in steps(yaml.safe_load(path.read_text())) if "uses" in step
        ]
        lines = [
            line for line in path.read_text().splitlines() if re.match(r"^\s*(-\s+)?uses:", line)
        ]
        assert len(lines) == len(parsed), f"{path.name}: a `uses:` the line check cannot see"
        for line in lines:
            if re.search(r"uses:\s+(\./|docker://[^@]+@sha256:[0-9a-f]{64})", line):
                continue  # a local action, or a container pinned by digest
            match = PINNED_USES.match(line)
            assert match, (
                f"{path.name}: `{line.strip()}` is not `owner/repo@<40-hex sha>  # vX.Y.Z`"
            )
            seen.setdefault(match["action"], set()).add((match["sha"], match["version"]))
    assert "actions/checkout" in seen
    drift = {action: pins for action, pins in seen.items() if len(pins) > 1}
    assert not drift, f"one action pinned at several commits/versions: {drift}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_has_a_concurrency_group_and_least_permissions(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    assert workflow.get("concurrency", {}).get("group"), f"{path.name}: no concurrency group"
    assert workflow.get("permissions") == {"contents": "read"}, (
        f"{path.name}: top-level permissions must be exactly `contents: read`"
    )
    for name, job in workflow["jobs"].items():
        permissions = job.get("permissions", {})
        assert isinstance(permissions, dict), f"{path.name}/{name}: permissions: {permissions}"
        writes = {scope for scope, level in permissions.items() if level == "write"}
        assert writes <= WRITE_ALLOWED.get((path.name, name), set()), (
            f"{path.name}/{name} asks for write access to {writes}"
        )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_scripts_take_expressions_only_through_env(path: Path) -> None:
    # `${{ inputs.x }}` or `${{ github.event... }}` pasted into a script is a shell injection
    for script in run_scripts(yaml.safe_load(path.read_text())):
        assert "${{" not in script, f"{path.name}: pass it through `env:` instead:\n{script}"


def test_yaml_passes_yamllint_with_the_repository_config() -> None:
    result = subprocess.run(
        [
            tool("yamllint"),
            "--strict",
            "-c",
            ".yamllint.yaml",
            ".github",
            "manifests",
            "pipelines/configs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_config_rejects_duplicate_keys_and_yes_no_booleans(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: 1\nkey: 2\nflag: yes\n")
    result = subprocess.run(
        [tool("yamllint"), "-f", "parsable", "-c", str(ROOT / ".yamllint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "(key-duplicates)" in result.stdout and "(truthy)" in result.stdout


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = {line.split("#")[0].strip() for line in re.findall(r"(?m)^make test\b.*$", readme)}
    assert commands == {"make test"}, f"README's test command: {commands}"
    ci = load("ci.yml")
    assert "make test" in [script.strip() for script in run_scripts(ci, "test")]


def test_ci_lints_with_make_lint_which_runs_yamllint_and_hadolint() -> None:
    assert "make lint" in [script.strip() for script in run_scripts(load("ci.yml"), "lint")]
    recipe = re.search(r"(?ms)^lint:.*?\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text())
    assert recipe, "Makefile has no lint target"
    for linter in ("ruff check", "ruff format --check", "yamllint", "hadolint"):
        assert linter in recipe.group(1), f"make lint does not run {linter}"


def test_ci_fails_when_the_committed_compiled_pipeline_is_stale() -> None:
    scripts = run_scripts(load("ci.yml"), "compile")
    assert scripts[0].strip() == "make compiled"
    check = "\n".join(scripts[1:])
    assert "git diff --exit-code" in check and "pipelines/compiled" in check
    assert "--intent-to-add" in check, "a newly generated compiled file would go unnoticed"


def test_ci_renders_every_kustomize_overlay() -> None:
    script = "\n".join(run_scripts(load("ci.yml"), "manifests"))
    assert "kubectl kustomize" in script
    overlays = sorted(
        p.parent.name for p in (ROOT / "manifests" / "overlays").glob("*/kustomization.yaml")
    )
    assert {"dev", "prod"} <= set(overlays)
    for overlay in overlays:
        assert f"manifests/overlays/{overlay}" in script, (
            f"ci.yml does not render overlay {overlay}"
        )


def test_every_make_target_a_workflow_runs_exists() -> None:
    targets = make_targets()
    for path in WORKFLOWS:
        for script in run_scripts(yaml.safe_load(path.read_text())):
            for target in re.findall(r"\bmake ([\w-]+)", script):
                assert target in targets, (
                    f"{path.name} runs `make {target}`: no such Makefile target"
                )


def test_images_workflow_builds_every_image_on_version_tags() -> None:
    workflow = load("images.yml")
    assert triggers(workflow) == {"push": {"tags": ["v*"]}}
    job = workflow["jobs"]["build"]
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    dockerfiles = {p.parent.name for p in (ROOT / "images").glob("*/Dockerfile")}
    assert set(job["strategy"]["matrix"]["image"]) == dockerfiles
    by_action = {
        step["uses"].split("@")[0]: step.get("with", {}) for step in job["steps"] if "uses" in step
    }
    assert "docker/setup-buildx-action" in by_action
    assert by_action["docker/login-action"]["registry"] == "ghcr.io"
    assert "type=semver,pattern={{version}}" in by_action["docker/metadata-action"]["tags"]
    build = by_action["docker/build-push-action"]
    assert build["file"] == "images/${{ matrix.image }}/Dockerfile" and build["context"] == "."
    assert build["push"] is True and build["tags"] == "${{ steps.meta.outputs.tags }}"
    assert build["cache-from"].startswith("type=gha") and build["cache-to"].startswith("type=gha")
    # the pushed tag must be the package version: compiled pipelines name images by it
    assert any("pyproject.toml" in script for script in run_scripts(workflow, "build"))


def test_pipeline_workflow_submits_on_pipeline_changes_and_on_demand() -> None:
    workflow = load("pipeline.yml")
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert {"pipelines/**", "pipelines/configs/**", "components/**"} <= set(on["push"]["paths"])
    inputs = on["workflow_dispatch"]["inputs"]
    assert (ROOT / inputs["config"]["default"]).is_file(), inputs["config"]["default"]
    assert inputs["experiment"]["required"] is False
    env = workflow["jobs"]["submit"]["env"]
    assert env["KF_PIPELINES_TOKEN"] == "${{ secrets.KF_PIPELINES_TOKEN }}"
    assert env["KFP_HOST"] == "${{ vars.KFP_HOST }}"
    assert env["CONFIG"] == "${{ inputs.config || 'pipelines/configs/llama3-8b.yaml' }}"
    scripts = "\n".join(run_scripts(workflow, "submit"))
    assert re.search(r"--host \"\$KFP_HOST\" --config \"\$CONFIG\"", scripts)
    assert re.search(r"^\s*rtune submit\b", scripts, re.M), "pipeline.yml must run `rtune submit`"
    assert "-c constraints-cpu.txt torch==" in scripts, "install torch pinned, as the Makefile does"


def _run_submit_step(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run pipeline.yml's submit script under bash with a stand-in `rtune` that records its argv."""
    script = next(s for s in run_scripts(load("pipeline.yml"), "submit") if "rtune submit" in s)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "rtune"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGV_FILE"\necho "run: URL"\n')
    fake.chmod(0o755)
    base = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "ARGV_FILE": str(tmp_path / "argv"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "KFP_HOST": "https://kfp.example.org/pipeline",
        "CONFIG": "pipelines/configs/llama3-8b.yaml",
        "OWNER": "Reflect-Org",
    }
    # `defaults.run.shell: bash` runs scripts as `bash --noprofile --norc -eo pipefail`
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "run: URL" in (tmp_path / "summary.md").read_text(), "the run URL goes to the summary"
    return (tmp_path / "argv").read_text().splitlines()


def test_pipeline_submit_step_passes_settings_that_rtune_submit_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtune.pipelines.cli import make_parser

    monkeypatch.delenv("RTUNE_IMAGE_REGISTRY", raising=False)  # the flags' defaults
    monkeypatch.delenv("RTUNE_IMAGE_TAG", raising=False)

    unset = {"EXPERIMENT": "", "KFP_NAMESPACE": "", "KFP_SERVICE_ACCOUNT": "", "IMAGE_REGISTRY": ""}
    argv = _run_submit_step(tmp_path, {**unset, "IMAGE_TAG": ""})
    args = make_parser().parse_args(argv)
    assert (args.command, args.host, args.config) == (
        "submit",
        "https://kfp.example.org/pipeline",
        "pipelines/configs/llama3-8b.yaml",
    )
    assert args.image_registry == "ghcr.io/reflect-org", (
        "images.yml pushes to lowercase ghcr.io/<owner>"
    )
    # an empty tag: the config's cluster.images.tag, else the package version
    assert args.image_tag == "" and args.namespace == "" and args.service_account == ""

    settings = {
        "EXPERIMENT": "nightly",
        "KFP_NAMESPACE": "team-a",
        "KFP_SERVICE_ACCOUNT": "rtune-pipeline-runner",
        "IMAGE_REGISTRY": "registry.example.org/ml",
        "IMAGE_TAG": "0.2.0rc1",
    }
    args = make_parser().parse_args(_run_submit_step(tmp_path, settings))
    assert (args.experiment, args.namespace, args.service_account) == (
        "nightly",
        "team-a",
        "rtune-pipeline-runner",
    )
    assert (args.image_registry, args.image_tag) == ("registry.example.org/ml", "0.2.0rc1")

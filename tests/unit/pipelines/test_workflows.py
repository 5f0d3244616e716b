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

from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
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


# ---------------------------------------------------------------- GitOps: what was merged runs

SHA = "0123456789abcdef0123456789abcdef01234567"
RTUNE_IMAGE = re.compile(r"[\w./-]+/rtune-(?:base|train|quantize|serve):[\w.-]+")


def committed_images(path: str) -> set[str]:
    images = set(RTUNE_IMAGE.findall((ROOT / path).read_text()))
    assert images, f"{path} names no rtune image"
    return images


def step_named(workflow: dict[str, Any], job: str, prefix: str) -> dict[str, Any]:
    found = [s for s in steps(workflow, job) if s.get("name", "").startswith(prefix)]
    assert len(found) == 1, f"{job}: no single step named {prefix!r}"
    return found[0]


def run_steps(
    tmp_path: Path, scripts: list[str], env: dict[str, str], fakes: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run ``scripts`` as consecutive steps do under Actions (``bash -eo pipefail``; what a step
    appends to $GITHUB_ENV is in the environment of the next), with stand-in commands ``fakes``
    (name -> bash body) first on PATH. Returns the last result and the final environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    github_env = tmp_path / "github_env"
    github_env.write_text("")
    current = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_ENV": str(github_env),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "GITHUB_SHA": SHA,
        **env,
    }
    result = subprocess.CompletedProcess[str]([], 0, "", "")
    for script in scripts:
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            env=current,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            break
        for line in github_env.read_text().splitlines():
            key, _, value = line.partition("=")
            current[key] = value
    return result, current


def registry_for(tmp_path: Path, workflow: str, job: str, owner: str) -> str:
    step = step_named(load(workflow), job, "Registry name")
    result, env = run_steps(tmp_path, [step["run"]], {"OWNER": owner}, {})
    assert result.returncode == 0, result.stderr
    return env["REGISTRY"]


def test_images_are_built_on_every_push_to_main_and_on_version_tags() -> None:
    workflow = load("images.yml")
    assert triggers(workflow) == {"push": {"branches": ["main"], "tags": ["v*"]}}
    # one build per commit: a newer push must not cancel or skip the build of an older commit
    assert "github.sha" in workflow["concurrency"]["group"]
    assert workflow["concurrency"]["cancel-in-progress"] is False
    job = workflow["jobs"]["build"]
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    dockerfiles = {p.parent.name for p in (ROOT / "images").glob("*/Dockerfile")}
    assert set(job["strategy"]["matrix"]["image"]) == dockerfiles
    by_action = {
        step["uses"].split("@")[0]: step.get("with", {}) for step in job["steps"] if "uses" in step
    }
    assert "docker/setup-buildx-action" in by_action
    assert by_action["docker/login-action"]["registry"] == "ghcr.io"
    tags = [line.strip() for line in by_action["docker/metadata-action"]["tags"].splitlines()]
    # every build: sha-<full commit sha>; a release tag also gets its version
    assert "type=sha,format=long" in tags
    assert {"type=semver,pattern={{version}}", "type=semver,pattern={{major}}.{{minor}}"} <= set(
        tags
    )
    assert not [t for t in tags if t.startswith(("type=ref", "type=raw", "type=edge"))], (
        "no moving tags (main, latest): a run names the exact commit"
    )
    assert by_action["docker/metadata-action"]["flavor"] == "latest=false"
    build = by_action["docker/build-push-action"]
    assert build["file"] == "images/${{ matrix.image }}/Dockerfile" and build["context"] == "."
    assert build["push"] is True and build["tags"] == "${{ steps.meta.outputs.tags }}"
    assert build["cache-from"].startswith("type=gha") and build["cache-to"].startswith("type=gha")
    # a release tag must be the package version: the committed pipeline names images by it
    check = step_named(workflow, "build", "Check that the tag is the package version")
    assert "pyproject.toml" in check["run"]
    assert check["if"] == "startsWith(github.ref, 'refs/tags/v')"


def test_pipeline_runs_are_gated_never_started_by_a_push() -> None:
    workflow = load("pipeline.yml")
    on = triggers(workflow)
    assert set(on) == {"workflow_dispatch"}, f"pipeline.yml starts GPU runs on {sorted(on)}"
    inputs = on["workflow_dispatch"]["inputs"]
    assert (ROOT / inputs["config"]["default"]).is_file(), inputs["config"]["default"]
    assert inputs["experiment"]["required"] is False
    job = workflow["jobs"]["submit"]
    # the environment holds the KFP secret; protect it (required reviewers, main only)
    assert job["environment"] == "kubeflow"
    assert job["permissions"] == {"contents": "read", "packages": "read"}
    env = job["env"]
    assert env["KF_PIPELINES_TOKEN"] == "${{ secrets.KF_PIPELINES_TOKEN }}"
    assert env["KFP_HOST"] == "${{ vars.KFP_HOST }}"
    assert env["CONFIG"] == "${{ inputs.config || 'pipelines/configs/llama3-8b.yaml' }}"
    assert not [v for v in env.values() if "RTUNE_IMAGE" in str(v)], (
        "no repository variable may point a run at other images than this commit's"
    )
    scripts = "\n".join(run_scripts(workflow, "submit"))
    assert re.search(r"^\s*rtune submit\b", scripts, re.M), "pipeline.yml must run `rtune submit`"
    assert "-c constraints-cpu.txt torch==" in scripts, "install torch pinned, as the Makefile does"


def test_images_and_runs_name_one_registry(tmp_path: Path) -> None:
    from rtune.components.common.images import DEFAULT_REGISTRY

    for owner in ("Reflect-Org", "rtune"):
        pushed = registry_for(tmp_path, "images.yml", "build", owner)
        pulled = registry_for(tmp_path, "pipeline.yml", "submit", owner)
        assert pushed == pulled == f"ghcr.io/{owner.lower()}"
    # the committed pipeline and the Argo CD apps name the upstream repository's registry
    repo_url = yaml.safe_load((ROOT / "manifests/argocd/rtune-pipeline.yaml").read_text())
    owner = repo_url["spec"]["source"]["repoURL"].split("github.com/")[1].split("/")[0]
    assert registry_for(tmp_path, "images.yml", "build", owner) == DEFAULT_REGISTRY
    for path in ("reflection_tuning.yaml", "kubernetes/reflection_tuning.yaml"):
        images = committed_images(f"pipelines/compiled/{path}")
        assert all(i.startswith(f"{DEFAULT_REGISTRY}/rtune-") for i in images), images


def test_argocd_registers_the_release_whose_images_the_committed_pipeline_names() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    app = yaml.safe_load((ROOT / "manifests/argocd/rtune-pipeline.yaml").read_text())
    # main's committed pipeline names the release images (ghcr.io/rtune/...:<version>), which
    # are built from the tag v<version>: tracking main would pair newer code with older images
    assert app["spec"]["source"]["targetRevision"] == f"v{version}"
    images = committed_images("pipelines/compiled/kubernetes/reflection_tuning.yaml")
    assert {image.rsplit(":", 1)[1] for image in images} == {version}


def _submit_steps(workflow: dict[str, Any]) -> list[str]:
    return [
        step_named(workflow, "submit", name)["run"]
        for name in ("Registry name", "Check that this commit's images exist", "Submit a run")
    ]


FAKE_RTUNE = 'printf "%s\\n" "$@" > "$ARGV_FILE"; echo "run: URL"'


def test_pipeline_submits_the_images_built_from_this_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtune.components.common.images import IMAGE_NAMES
    from rtune.pipelines.cli import make_parser

    monkeypatch.delenv("RTUNE_IMAGE_REGISTRY", raising=False)  # the flags' defaults
    monkeypatch.delenv("RTUNE_IMAGE_TAG", raising=False)
    base = {
        "ARGV_FILE": str(tmp_path / "argv"),
        "KFP_HOST": "https://kfp.example.org/pipeline",
        "CONFIG": "pipelines/configs/llama3-8b.yaml",
        "OWNER": "Reflect-Org",
        "INSPECTED": str(tmp_path / "inspected"),
    }
    docker = 'echo "$3" >> "$INSPECTED"'  # docker manifest inspect <ref>: found
    unset = {"EXPERIMENT": "", "KFP_NAMESPACE": "", "KFP_SERVICE_ACCOUNT": ""}
    result, _ = run_steps(
        tmp_path,
        _submit_steps(load("pipeline.yml")),
        {**base, **unset},
        {"rtune": FAKE_RTUNE, "docker": docker},
    )
    assert result.returncode == 0, result.stderr
    assert "run: URL" in (tmp_path / "summary.md").read_text(), "the run URL goes to the summary"
    args = make_parser().parse_args((tmp_path / "argv").read_text().splitlines())
    assert (args.command, args.host, args.config) == (
        "submit",
        "https://kfp.example.org/pipeline",
        "pipelines/configs/llama3-8b.yaml",
    )
    assert (args.image_registry, args.image_tag) == ("ghcr.io/reflect-org", f"sha-{SHA}")
    assert args.namespace == "" and args.service_account == ""
    inspected = set((tmp_path / "inspected").read_text().split())
    assert inspected == {f"ghcr.io/reflect-org/rtune-{n}:sha-{SHA}" for n in IMAGE_NAMES}

    settings = {
        "EXPERIMENT": "nightly",
        "KFP_NAMESPACE": "team-a",
        "KFP_SERVICE_ACCOUNT": "rtune-pipeline-runner",
    }
    result, _ = run_steps(
        tmp_path,
        _submit_steps(load("pipeline.yml")),
        {**base, **settings},
        {"rtune": FAKE_RTUNE, "docker": docker},
    )
    assert result.returncode == 0, result.stderr
    args = make_parser().parse_args((tmp_path / "argv").read_text().splitlines())
    assert (args.experiment, args.namespace, args.service_account) == (
        "nightly",
        "team-a",
        "rtune-pipeline-runner",
    )


def test_pipeline_refuses_to_submit_before_this_commits_images_exist(tmp_path: Path) -> None:
    docker = '[[ "$3" != *rtune-train* ]] || { echo "manifest unknown" >&2; exit 1; }'
    env = {
        "ARGV_FILE": str(tmp_path / "argv"),
        "KFP_HOST": "https://kfp.example.org/pipeline",
        "CONFIG": "pipelines/configs/llama3-8b.yaml",
        "OWNER": "Reflect-Org",
        **{"EXPERIMENT": "", "KFP_NAMESPACE": "", "KFP_SERVICE_ACCOUNT": ""},
    }
    result, _ = run_steps(
        tmp_path,
        _submit_steps(load("pipeline.yml")),
        env,
        {"rtune": FAKE_RTUNE, "docker": docker},
    )
    assert result.returncode != 0
    assert f"rtune-train:sha-{SHA}" in result.stdout and "images" in result.stdout
    assert "::error::" in result.stdout
    assert not (tmp_path / "argv").exists(), "rtune submit must not run"

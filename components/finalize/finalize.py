"""Close the pipeline's MLflow parent run: FINISHED, or FAILED naming the stages that failed.

It runs as the DAG's exit handler, whatever happened inside: a stage that raised has its nested run
FAILED; a stage whose pod was killed left its run RUNNING, which is marked FAILED here too. The
stages' summary lines (tag ``rtune.summary``) become the run summary, in the order they started:
a Markdown page on the parent run (``summary.md``) and in the Kubeflow UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rtune.components.common.stage import SUMMARY_TAG
from rtune.components.common.tracking import (
    PIPELINE_TAG,
    ROLE_TAG,
    STAGE_TAG,
    TrackingConfig,
    resolve_tracking_uri,
)

SUCCEEDED_STATES = ("SUCCEEDED", "COMPLETE")  # kfp.local's and the KFP backend's words
FAILED_STAGES_TAG = "rtune.failed_stages"


@dataclass
class RunOutcome:
    run_id: str
    status: str  # FINISHED | FAILED
    failed_stages: list[str] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)  # (stage, summary line)
    tracked: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"failed": float(self.status == "FAILED"), "stages": float(len(self.lines))}

    def line(self) -> str:
        if self.status == "FINISHED":
            return f"pipeline run {self.run_id} FINISHED ({len(self.lines)} stages)"
        failed = ", ".join(self.failed_stages) or "a stage before any was tracked"
        return f"pipeline run {self.run_id} FAILED in {failed}"

    def markdown(self) -> str:
        head = f"# reflection-tuning run `{self.run_id}`: {self.status}\n\n"
        if self.failed_stages:
            head += f"Failed: **{', '.join(self.failed_stages)}**\n\n"
        if not self.tracked:
            return head + "MLflow tracking was off: each stage's log holds its summary line.\n"
        rows = "".join(f"| {stage} | {line} |\n" for stage, line in self.lines)
        return head + "| stage | summary |\n|---|---|\n" + rows


def finalize_run(pipeline_state: str, run_id: str, tracking: TrackingConfig) -> RunOutcome:
    """Mark unfinished stage runs FAILED, then close the parent run with the pipeline's outcome."""
    pipeline_failed = pipeline_state.upper() not in SUCCEEDED_STATES
    if not tracking.enabled:
        return RunOutcome(run_id, "FAILED" if pipeline_failed else "FINISHED", tracked=False)
    import mlflow

    client = mlflow.MlflowClient(resolve_tracking_uri(tracking))
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        return RunOutcome(run_id, "FAILED" if pipeline_failed else "FINISHED", tracked=False)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "pipeline"]
    stages = [r for r in runs if r.data.tags.get(ROLE_TAG) == "stage"]
    failed = []
    for stage in stages:
        if stage.info.status in ("FAILED", "KILLED", "RUNNING", "SCHEDULED"):
            failed.append(stage.data.tags.get(STAGE_TAG, stage.info.run_name))
            if stage.info.status != "FAILED":
                client.set_terminated(stage.info.run_id, "FAILED")
    status = "FAILED" if pipeline_failed or failed else "FINISHED"
    lines = [
        (s.data.tags.get(STAGE_TAG, ""), s.data.tags[SUMMARY_TAG])
        for s in stages
        if SUMMARY_TAG in s.data.tags
    ]
    outcome = RunOutcome(run_id, status, failed, lines)
    for parent in parents:
        client.set_tag(parent.info.run_id, FAILED_STAGES_TAG, ",".join(failed))
        client.log_text(parent.info.run_id, outcome.markdown(), "summary.md")
        client.set_terminated(parent.info.run_id, status)
    return outcome

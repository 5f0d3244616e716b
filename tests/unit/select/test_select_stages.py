"""Scoring and selection stages end to end on small files (tiny model), and their CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.records import InputError, read_jsonl, write_jsonl
from rtune.components.scoring.config import ScoringConfig
from rtune.components.scoring.formulas import SCORE_FIELDS
from rtune.components.scoring.scorer import StudentScorer
from rtune.components.scoring.stage import score_candidates, score_file, shard_records
from rtune.components.select_ifd.stage import select_ifd
from rtune.components.select_rifd.rules import SelectionConfig
from rtune.components.select_rifd.stage import select_rifd
from rtune.pipelines.cli import main
from tests.cli_lines import summary_line

SEED = [
    ("r1", "Name a colour.", "", "Blue."),
    ("r2", "Add the numbers.", "2 and 3", "2 + 3 = 5."),
    (
        "r3",
        "Write a haiku about rain.",
        "",
        "Soft rain on the roof\nthe garden drinks slowly\nnight",
    ),
    ("r4", "Say something.", "", ""),
    ("r5", "Translate to German.", "Thank you", "Danke."),
]


def reflected_record(rid: str, instruction: str, input_text: str, output: str) -> dict[str, Any]:
    """A record as ``reflect_instruction`` writes it; r5's teacher fell back (Q copies ori)."""
    ori = {"instruction": instruction, "input": input_text, "output": output}
    fallback = rid == "r5"
    q = (
        dict(ori)
        if fallback
        else {
            "instruction": f"{instruction} Answer in one short sentence.",
            "input": "",
            "output": f"{output} That is the answer." if output else "No answer.",
        }
    )
    status = "fallback_parse" if fallback else "ok"
    return {
        "id": rid,
        **ori,
        "flags": [],
        "candidates": {"ori": ori, "Q": q},
        "teacher": {"instruction": {"parse_status": status}},
    }


def with_reflected_response(record: dict[str, Any]) -> dict[str, Any]:
    """A record as ``reflect_response`` writes it: the winner's instruction, a new answer."""
    winner = record["phase1"]["winner"]
    base = record["candidates"][winner]
    new = {**base, "output": base["output"] + " (revised)"}
    name = {"ori": "A", "Q": "QA"}[winner]
    teacher = {**record["teacher"], "response": {"parse_status": "ok"}}
    return {**record, "candidates": {**record["candidates"], name: new}, "teacher": teacher}


@pytest.fixture()
def tiny_config(tiny_model_dir: Path) -> ScoringConfig:
    return ScoringConfig(model=str(tiny_model_dir), template="vicuna", max_length=256)


@pytest.fixture()
def reflected(tmp_path: Path) -> Path:
    path = tmp_path / "reflected.jsonl"
    write_jsonl(path, [reflected_record(*seed) for seed in SEED])
    return path


def test_shards_partition_the_records_round_robin() -> None:
    records = [{"id": str(i)} for i in range(7)]
    shards = [shard_records(records, index, 3) for index in range(3)]
    assert [[r["id"] for r in shard] for shard in shards] == [
        ["0", "3", "6"],
        ["1", "4"],
        ["2", "5"],
    ]
    with pytest.raises(ValueError, match="shard_index"):
        shard_records(records, 3, 3)


def test_pipeline_of_score_and_select_stages(
    tmp_path: Path, reflected: Path, tiny_config: ScoringConfig
) -> None:
    shard_paths = [tmp_path / f"scores-{i}.jsonl" for i in range(2)]
    summaries = [
        score_candidates(reflected, path, tiny_config, "ifd", i, 2, progress=False)
        for i, path in enumerate(shard_paths)
    ]
    rows = [row for path in shard_paths for row in read_jsonl(path)]
    assert sorted((r["id"], r["candidate"]) for r in rows) == sorted(
        (rid, name) for rid, *_ in SEED for name in ("ori", "Q")
    )
    ifd_fields = {"ifd", "ifd_loss", "loss_output", "loss_output_given_instruction", "reason"}
    for row in rows:  # phase 1 reads IFD only; both scores where IFD is missing (its reason)
        both = row["scores"]["ifd"] is None
        assert set(row["scores"]) == ({*SCORE_FIELDS, "reason"} if both else ifd_fields)
    by_key = {(r["id"], r["candidate"]): r["scores"] for r in rows}
    assert (
        by_key[("r4", "ori")]["reason"] == "empty_output" and by_key[("r4", "ori")]["ifd"] is None
    )
    assert by_key[("r5", "Q")] == by_key[("r5", "ori")]  # a teacher fallback scores like ori
    assert sum(s.records for s in summaries) == len(SEED)
    assert summaries[0].as_dict()["unique_passes"] < summaries[0].as_dict()["passes"]  # r5

    phase1_path = tmp_path / "phase1.jsonl"
    phase1 = select_ifd(reflected, shard_paths, phase1_path)
    records = read_jsonl(phase1_path)
    assert phase1.records == len(SEED) and sum(phase1.winners.values()) == len(SEED)
    phase1_of = {r["id"]: (r["phase1"]["winner"], r["phase1"]["reason"]) for r in records}
    for record in records:
        for name in ("ori", "Q"):
            assert record["candidates"][name]["scores"] == by_key[(record["id"], name)]
    assert phase1_of["r4"] == ("Q", "ori unscorable (empty_output)")  # only Q has an output
    assert phase1_of["r5"] == ("ori", "teacher fallback (fallback_parse)")
    for rid in ("r1", "r2", "r3"):  # the rule itself: test_select_ifd_decisions_on_known_scores
        assert phase1_of[rid] in {("Q", "Q has higher IFD"), ("ori", "ori has higher or equal IFD")}

    responses = tmp_path / "responses.jsonl"
    write_jsonl(responses, [with_reflected_response(r) for r in records])
    new_scores = tmp_path / "new-scores.jsonl"
    score_candidates(responses, new_scores, tiny_config, "rifd", progress=False)
    phase2_rows = read_jsonl(new_scores)  # the new answer, and the winner's r-IFD completed
    assert sorted((r["id"], r["candidate"]) for r in phase2_rows) == sorted(
        (r["id"], name)
        for r in records
        for name in (r["phase1"]["winner"], {"ori": "A", "Q": "QA"}[r["phase1"]["winner"]])
    )
    assert all(set(r["scores"]) == {*SCORE_FIELDS, "reason"} for r in phase2_rows)

    for policy in ("reference", "keep_phase1_winner"):
        decided_path, selected_path = tmp_path / f"{policy}.jsonl", tmp_path / f"{policy}-sel.jsonl"
        config = SelectionConfig(policy=policy)
        summary = select_rifd(responses, [new_scores], decided_path, selected_path, config)
        decided, selected = read_jsonl(decided_path), read_jsonl(selected_path)
        assert [r["id"] for r in decided] == [rid for rid, *_ in SEED]
        for record in decided:  # the rule itself: test_select_rifd_decisions_cut_and_...
            winner = record["phase1"]["winner"]
            new = "A" if winner == "ori" else "QA"
            assert "scores" in record["candidates"][new]
            assert record["phase2"] == {"decision": record["decision"], "reason": record["reason"]}
            if record["decision"] == new:
                assert record["reason"] == "reflected response kept"
            elif policy == "reference":
                assert record["decision"] == "dropped" and record["reason"].startswith("dropped: ")
            else:
                assert record["decision"] == winner
                assert record["reason"].startswith("phase-1 winner kept: ")
        kept = [r for r in decided if r["decision"] != "dropped"]
        assert [s["id"] for s in selected] == [r["id"] for r in kept]
        assert all(
            set(s) == {"id", "instruction", "input", "output", "candidate", "ifd", "rifd"}
            for s in selected
        )
        assert summary.as_dict()["kept_rate"] == len(kept) / len(SEED)
        if policy == "keep_phase1_winner":
            assert len(kept) == len(SEED)  # nothing is dropped without a cut


def scores_of(ifd: float | None, reason: str | None = None) -> dict[str, Any]:
    return {"ifd": ifd, "rifd": None if ifd is None else 0.5, "reason": reason}


PHASE1_PLAN = {  # id: (ori scores, Q scores, the teacher's parse status) -> expected below
    "q-higher": (scores_of(0.5), scores_of(0.7), "ok"),
    "tie": (scores_of(0.6), scores_of(0.6), "ok"),
    "ori-higher": (scores_of(0.8), scores_of(0.3), "ok"),
    "q-null": (scores_of(0.8), scores_of(None, "truncated"), "ok"),
    "ori-null": (scores_of(None, "empty_output"), scores_of(0.4), "ok"),
    "both-null": (scores_of(None, "truncated"), scores_of(None, "truncated"), "ok"),
    "fallback": (scores_of(0.1), scores_of(0.9), "fallback_parse"),
}
PHASE1_EXPECTED = {
    "q-higher": ("Q", "Q has higher IFD"),
    "tie": ("ori", "ori has higher or equal IFD"),
    "ori-higher": ("ori", "ori has higher or equal IFD"),
    "q-null": ("ori", "Q unscorable (truncated)"),
    "ori-null": ("Q", "ori unscorable (empty_output)"),
    "both-null": ("ori", "both unscorable"),
    "fallback": ("ori", "teacher fallback (fallback_parse)"),
}


def scored_phase1_files(tmp_path: Path, extra_rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    records, rows = [], list(extra_rows)
    for rid, (ori, q, status) in PHASE1_PLAN.items():
        text = {"instruction": f"Do {rid}.", "input": "", "output": f"Done {rid}."}
        records.append(
            {
                "id": rid,
                "candidates": {"ori": text, "Q": {**text, "instruction": f"Do {rid} well."}},
                "teacher": {"instruction": {"parse_status": status}},
            }
        )
        rows += [
            {"id": rid, "candidate": "ori", "scores": ori},
            {"id": rid, "candidate": "Q", "scores": q},
        ]
    records_path, scores_path = tmp_path / "reflected.jsonl", tmp_path / "scores.jsonl"
    write_jsonl(records_path, records)
    write_jsonl(scores_path, rows)
    return records_path, scores_path


def test_select_ifd_decisions_on_known_scores(tmp_path: Path) -> None:
    records_path, scores_path = scored_phase1_files(tmp_path, [])
    summary = select_ifd(records_path, [scores_path], tmp_path / "phase1.jsonl")
    decided = {
        r["id"]: (r["phase1"]["winner"], r["phase1"]["reason"])
        for r in read_jsonl(tmp_path / "phase1.jsonl")
    }
    assert decided == PHASE1_EXPECTED
    assert (summary.winners["Q"], summary.winners["ori"]) == (2, 5)
    assert summary.as_dict()["unused_score_rows"] == 0


GHOST_ROWS = [
    {"id": "ghost-1", "candidate": "ori", "scores": scores_of(0.5)},
    {"id": "ghost-1", "candidate": "Q", "scores": scores_of(0.6)},
    {"id": "ghost-2", "candidate": "ori", "scores": scores_of(0.7)},
]


def test_select_ifd_warns_about_score_rows_of_unknown_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records_path, scores_path = scored_phase1_files(tmp_path, GHOST_ROWS)
    with caplog.at_level("WARNING"):
        summary = select_ifd(records_path, [scores_path], tmp_path / "phase1.jsonl")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "3 score rows" in warning and "ids not in the records: 2" in warning
    assert "'ghost-1'" in warning
    assert str(records_path) in warning
    assert summary.as_dict()["unused_score_rows"] == 3
    assert len(read_jsonl(tmp_path / "phase1.jsonl")) == len(PHASE1_PLAN)


def test_select_rifd_warns_about_score_rows_no_record_uses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records_path, scores_path = scored_phase2_files(tmp_path)
    extra = tmp_path / "extra.jsonl"
    write_jsonl(
        extra,
        [
            {"id": "ghost", "candidate": "A", "scores": scores_of(0.5)},
            {"id": "keep", "candidate": "A", "scores": scores_of(0.5)},  # keep's winner is Q
        ],
    )
    with caplog.at_level("WARNING"):
        summary = select_rifd(
            records_path,
            [scores_path, extra],
            tmp_path / "out.jsonl",
            tmp_path / "sel.jsonl",
            SelectionConfig(),
        )
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "2 score rows" in warning and "ids not in the records: 1" in warning
    assert summary.as_dict()["unused_score_rows"] == 2


def scored_phase2_files(tmp_path: Path) -> tuple[Path, Path]:
    """Hand-made records + scores whose phase-2 outcome is known in advance."""

    def s(ifd: float | None, rifd: float | None, reason: str | None = None) -> dict[str, Any]:
        return {"ifd": ifd, "rifd": rifd, "reason": reason}

    plan = {  # id: (winner, old scores, new scores)
        "keep": ("Q", s(0.9, 0.8), s(0.6, 0.5)),
        "worse": ("ori", s(0.8, 0.4), s(0.7, 0.6)),
        "hard": ("ori", s(0.8, 0.9), s(0.95, 0.3)),
        "null": ("Q", s(0.9, 0.8), s(None, None, "truncated")),
    }
    records, score_rows = [], []
    for rid, (winner, old, new) in plan.items():
        name = {"ori": "A", "Q": "QA"}[winner]
        text = {"instruction": f"Do {rid}.", "input": "", "output": f"Done {rid}."}
        records.append(
            {
                "id": rid,
                "candidates": {
                    "ori": {**text},
                    "Q": {**text},
                    winner: {**text, "scores": old},
                    name: text,
                },
                "phase1": {"winner": winner, "reason": "Q has higher IFD"},
                "teacher": {"response": {"parse_status": "ok"}},
            }
        )
        score_rows.append({"id": rid, "candidate": name, "scores": new})
    records_path, scores_path = tmp_path / "phase2.jsonl", tmp_path / "new.jsonl"
    write_jsonl(records_path, records)
    write_jsonl(scores_path, score_rows)
    return records_path, scores_path


def test_select_rifd_decisions_cut_and_training_rows(tmp_path: Path) -> None:
    records_path, scores_path = scored_phase2_files(tmp_path)
    out, sel = tmp_path / "decided.jsonl", tmp_path / "selected.jsonl"
    summary = select_rifd(records_path, [scores_path], out, sel, SelectionConfig())
    decisions = {r["id"]: (r["decision"], r["reason"]) for r in read_jsonl(out)}
    assert decisions == {
        "keep": ("QA", "reflected response kept"),
        "worse": ("dropped", "dropped: new r-IFD not below old r-IFD"),
        "hard": ("A", "reflected response kept"),
        "null": ("dropped", "dropped: new response unscorable (truncated)"),
    }
    assert read_jsonl(sel)[0] == {
        "id": "keep",
        "instruction": "Do keep.",
        "input": "",
        "output": "Done keep.",
        "candidate": "QA",
        "ifd": 0.6,
        "rifd": 0.5,
    }
    values = summary.as_dict()
    assert (values["decision_QA"], values["decision_A"], values["decision_dropped"]) == (1, 1, 2)
    assert values["phase2_response_rate"] == 0.5 and values["phase1_q_rate"] == 0.5

    cut = select_rifd(
        records_path,
        [scores_path],
        out,
        sel,
        SelectionConfig(policy="keep_phase1_winner", keep_top=0.5),
    )
    final = {r["id"]: r for r in read_jsonl(out)}
    # keep_phase1_winner keeps all four (QA 0.6, ori 0.8, A 0.95, Q 0.9); the cut keeps the top half by IFD
    assert {rid: r["decision"] for rid, r in final.items()} == {
        "keep": "dropped",
        "worse": "dropped",
        "hard": "A",
        "null": "Q",
    }
    assert final["keep"]["reason"] == "cut: outside top 0.5 by IFD"
    assert final["worse"]["phase2"]["decision"] == "ori"  # the rule's decision stays for review
    assert cut.response_kept == 2 and cut.as_dict()["kept_rate"] == 0.5


def test_selection_errors_name_the_record_and_the_fix(tmp_path: Path, reflected: Path) -> None:
    partial = tmp_path / "partial.jsonl"
    write_jsonl(partial, [{"id": "r1", "candidate": "ori", "scores": {"ifd": 0.5, "rifd": 0.5}}])
    with pytest.raises(InputError, match="no score for candidate 'Q'") as err:
        select_ifd(reflected, [partial], tmp_path / "out.jsonl")
    assert err.value.record == "r1" and "rtune score --candidates" in err.value.fix

    conflicting = tmp_path / "conflict.jsonl"
    write_jsonl(conflicting, [{"id": "r1", "candidate": "ori", "scores": {"ifd": 0.9}}])
    with pytest.raises(InputError, match="scored twice with different results"):
        select_ifd(reflected, [partial, conflicting], tmp_path / "out.jsonl")

    scores = tmp_path / "s.jsonl"
    write_jsonl(scores, [])
    with pytest.raises(InputError, match=r"phase1.winner is None"):
        select_rifd(
            reflected, [scores], tmp_path / "o.jsonl", tmp_path / "s2.jsonl", SelectionConfig()
        )


def test_score_candidates_resumes_after_a_crash(
    tmp_path: Path, reflected: Path, tiny_config: ScoringConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = tmp_path / "clean.jsonl"
    score_candidates(reflected, clean, tiny_config, "ifd", progress=False)
    real_score = StudentScorer.score

    def crash_after_three(
        self: StudentScorer, candidates: Any, on_scored: Any = None, progress: bool = True
    ) -> Any:
        done: list[str] = []

        def record_then_crash(key: str, scores: Any) -> None:
            on_scored(key, scores)
            done.append(key)
            if len(done) == 3:
                raise RuntimeError("killed")

        return real_score(self, candidates, record_then_crash, progress)

    monkeypatch.setattr(StudentScorer, "score", crash_after_three)
    output, checkpoint = tmp_path / "scores.jsonl", tmp_path / "ckpt.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        score_candidates(
            reflected, output, tiny_config, "ifd", checkpoint_path=checkpoint, progress=False
        )
    assert checkpoint.exists() and not output.exists()
    monkeypatch.setattr(StudentScorer, "score", real_score)
    summary = score_candidates(
        reflected, output, tiny_config, "ifd", checkpoint_path=checkpoint, progress=False
    )
    assert summary.resumed == 3 and summary.candidates == 2 * len(SEED)
    assert read_jsonl(output) == read_jsonl(clean)
    assert not checkpoint.exists()  # removed once the output is written


def checkpoint_keys(path: Path) -> list[str]:
    """The result keys of a checkpoint file, one per line written (the header excluded)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [line["key"] for line in lines if "key" in line]


def test_a_resumed_shard_scores_only_what_is_left_and_writes_each_result_once(
    tmp_path: Path, reflected: Path, tiny_config: ScoringConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two kills, then a full run: each run hands the scorer only the candidates no earlier run
    finished, and the checkpoint holds one line per candidate (none re-scored or repeated)."""
    real_score = StudentScorer.score
    handed: list[list[str]] = []  # the candidate keys each scorer call received

    def score_then_kill_after(limit: int | None) -> Any:
        def score(
            self: StudentScorer, candidates: Any, on_scored: Any = None, progress: bool = True
        ) -> Any:
            handed.append([c.key for c in candidates])
            finished: list[str] = []

            def record(key: str, scores: Any) -> None:
                on_scored(key, scores)
                finished.append(key)
                if len(finished) == limit:
                    raise RuntimeError("killed")

            return real_score(self, candidates, record, progress)

        return score

    output, checkpoint = tmp_path / "scores.jsonl", tmp_path / "ckpt.jsonl"
    all_keys = {json.dumps([rid, name]) for rid, *_ in SEED for name in ("ori", "Q")}
    for limit in (3, 4):
        monkeypatch.setattr(StudentScorer, "score", score_then_kill_after(limit))
        with pytest.raises(RuntimeError, match="killed"):
            score_candidates(
                reflected, output, tiny_config, "ifd", checkpoint_path=checkpoint, progress=False
            )
    first, second = handed
    assert set(first) == all_keys
    written = checkpoint_keys(checkpoint)
    assert len(written) == len(set(written)) == 3 + 4  # each finished candidate once
    assert set(second) == all_keys - set(written[:3])  # the 3 finished ones were not re-scored

    monkeypatch.setattr(StudentScorer, "score", score_then_kill_after(None))
    summary = score_candidates(
        reflected, output, tiny_config, "ifd", checkpoint_path=checkpoint, progress=False
    )
    assert set(handed[2]) == all_keys - set(written)
    assert summary.resumed == 7 and summary.candidates == len(all_keys) == 10
    assert sorted(json.dumps([r["id"], r["candidate"]]) for r in read_jsonl(output)) == sorted(
        all_keys
    )


def test_score_file_adds_scores_to_flat_records(tmp_path: Path, tiny_config: ScoringConfig) -> None:
    source = tmp_path / "alpaca.json"  # a JSON array, as Alpaca ships
    source.write_text(
        json.dumps(
            [{"instruction": i, "input": x, "output": y, "extra": 1} for _, i, x, y in SEED]
        ),
        encoding="utf-8",
    )
    out = tmp_path / "scored.jsonl"
    summary = score_file(source, out, tiny_config, progress=False)
    records = read_jsonl(out)
    assert len(records) == len(SEED) and all(r["extra"] == 1 for r in records)
    assert all(isinstance(r["ifd"], float) and r["reason"] is None for r in records if r["output"])
    assert records[3]["ifd"] is None and records[3]["reason"] == "empty_output"
    assert (summary.scored, summary.unscorable, summary.records) == (4, 1, len(SEED))
    assert summary.as_dict()["tokens_per_s"] > 0


def test_score_file_rejects_a_record_without_output(
    tmp_path: Path, tiny_config: ScoringConfig
) -> None:
    source = tmp_path / "bad.jsonl"
    write_jsonl(
        source, [{"id": "a", "instruction": "x", "output": "y"}, {"id": "b", "instruction": "x"}]
    )
    with pytest.raises(InputError, match="missing field 'output'") as err:
        score_file(source, tmp_path / "out.jsonl", tiny_config)
    assert err.value.record == "b" and err.value.field == "output"


@pytest.mark.parametrize(
    ("content", "candidates"),
    [
        ("", []),
        ("\n\n", []),
        ("[]", []),
        ("", ["--candidates", "ifd"]),
        ("\n", ["--candidates", "rifd"]),
    ],
    ids=["flat-empty", "flat-blank", "flat-array", "dag-empty", "dag-blank"],
)
def test_score_on_an_empty_input_is_bad_input(
    tmp_path: Path, content: str, candidates: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text(content, encoding="utf-8")
    output = tmp_path / "out.jsonl"
    argv = ["score", "--input", str(empty), "--output", str(output), "--no-tracking"]
    code = main([*argv, *candidates])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert str(empty) in err and "no records" in err and "fix:" in err
    assert not output.exists()


def test_an_empty_shard_of_records_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = tmp_path / "one.jsonl"
    write_jsonl(records, [reflected_record(*SEED[0])])
    output = tmp_path / "scores-1.jsonl"
    with caplog.at_level("WARNING"):
        summary = score_candidates(records, output, ScoringConfig(), "ifd", 1, 2, progress=False)
    assert (summary.records, summary.candidates) == (0, 0)
    assert output.exists() and read_jsonl(output) == []
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "shard 1 of 2" in warning and "no records" in warning


def test_cli_scores_and_selects(
    tmp_path: Path, reflected: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = tmp_path / "scores.jsonl"
    code = main(
        [
            "score",
            "--input",
            str(reflected),
            "--output",
            str(scores),
            "--model",
            str(tiny_model_dir),
            "--template",
            "none",
            "--max-length",
            "128",
            "--candidates",
            "ifd",
            "--no-progress",
            "--no-tracking",
        ]
    )
    captured = capsys.readouterr()  # the runner's line on stderr, the command's on stdout
    runner, own = summary_line(captured.err), captured.out.strip()
    assert code == 0 and runner.startswith("rtune-summary score_ifd-shard-0: 5 records, 10 cand")
    assert own.startswith("score: 5 records, 10 candidates") and own.endswith(f"-> {scores}")
    out = tmp_path / "phase1.jsonl"
    code = main(
        [
            "select",
            "--phase",
            "ifd",
            "--records",
            str(reflected),
            "--scores",
            str(scores),
            "--output",
            str(out),
            "--no-tracking",
        ]
    )
    captured = capsys.readouterr()  # the runner's line on stderr, the command's on stdout
    runner, own = summary_line(captured.err), captured.out.strip()
    assert code == 0 and runner.startswith("rtune-summary select_ifd: 5 records; Q won")
    assert own.startswith("select ifd: 5 records; Q won") and own.endswith(f"-> {out}")
    assert all("phase1" in r for r in read_jsonl(out))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["score", "--template", "llama"],
            "template must be one of ['alpaca', 'chat', 'none', 'vicuna', 'wizardlm']",
        ),
        (["score", "--candidates", "both"], "unknown --candidates 'both'"),
        (
            ["score", "--candidates", "ifd", "--shard-index", "2", "--num-shards", "2"],
            "does not exist",
        ),
        (["score", "--reverse-prompt", "no placeholder"], "must contain {output}"),
        (["score"], "missing field 'output'"),
        (["select", "--phase", "both", "--scores", "s"], "unknown --phase 'both'"),
        (
            ["select", "--phase", "ifd", "--scores", "s", "--policy", "keep_phase1_winner"],
            "--policy only applies to --phase rifd",
        ),
        (
            ["select", "--phase", "rifd", "--scores", "s", "--keep-top", "2"],
            "keep_top must be a fraction",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_message(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"id": "x", "instruction": "Say hi."}])
    flag = "--input" if argv[0] == "score" else "--records"
    code = main([*argv, flag, str(bad), "--output", str(tmp_path / "out.jsonl"), "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err

"""The typed record schema: round trips, every accessor on records the stages really write, and
one clear InputError (file, record id, field, fix) for each kind of malformed record."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common import record_schema as schema
from rtune.components.common.record_schema import Candidate, Decision, Phase1, SeedRecord
from rtune.components.common.records import InputError, read_jsonl, write_jsonl
from rtune.components.scoring.formulas import SCORE_FIELDS
from rtune.components.select_ifd import rules as ifd_rules
from rtune.components.select_ifd.stage import select_ifd
from rtune.components.select_rifd import rules as rifd_rules
from rtune.components.select_rifd.rules import SelectionConfig
from rtune.components.select_rifd.stage import select_rifd
from tests.unit.select.test_select_stages import (
    SEED,
    reflected_record,
    scored_phase1_files,
    scored_phase2_files,
)

SOURCE = "records.jsonl"
FULL_SCORES = {**dict.fromkeys(SCORE_FIELDS, 0.75), "rifd": None, "reason": "rifd: truncated"}


def phase1_records(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Records as ``select_ifd`` writes them (scored ori and Q, phase1)."""
    records_path, scores_path = scored_phase1_files(tmp_path, [])
    select_ifd(records_path, [scores_path], tmp_path / "phase1.jsonl")
    return {r["id"]: r for r in read_jsonl(tmp_path / "phase1.jsonl")}


def decided_records(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Records as ``select_rifd`` writes them (new candidate scored, phase2, decision)."""
    records_path, scores_path = scored_phase2_files(tmp_path)
    out, sel = tmp_path / "decided.jsonl", tmp_path / "selected.jsonl"
    select_rifd(records_path, [scores_path], out, sel, SelectionConfig())
    return {r["id"]: r for r in read_jsonl(out)}


def test_typed_values_survive_the_trip_through_their_dict_form() -> None:
    seed = SeedRecord(id="r1", instruction="Add.", input="2 and 3", output="5")
    bare = Candidate(instruction="Add.", input="", output="5")
    scored = Candidate(instruction="Add.", input="2 and 3", output="5", scores=FULL_SCORES)
    assert SeedRecord.from_dict(seed.to_dict(), SOURCE) == seed
    for candidate in (bare, scored):
        assert Candidate.from_dict(candidate.to_dict(), SOURCE, "r1", "Q") == candidate
    assert "scores" not in bare.to_dict() and scored.to_dict()["scores"] == FULL_SCORES
    assert Phase1.from_dict(Phase1("Q", "Q has higher IFD").to_dict(), SOURCE, "r1") == Phase1(
        "Q", "Q has higher IFD"
    )
    decision = Decision("dropped", "dropped: new IFD not below 1")
    assert Decision.from_dict(decision.to_dict(), SOURCE, "r1", "phase2") == decision
    assert schema.parse_scores(FULL_SCORES, SOURCE, "r1", "candidates.Q.scores") == FULL_SCORES


def test_the_names_are_the_ones_the_rules_use() -> None:
    assert (schema.ORI, schema.Q) == (ifd_rules.ORI, ifd_rules.Q)
    assert schema.NEW_CANDIDATE == rifd_rules.NEW_CANDIDATE
    assert schema.DROPPED == rifd_rules.DROPPED


def test_accessors_read_a_reflected_record() -> None:
    record = reflected_record(*SEED[1])
    assert schema.seed_of(record, SOURCE) == SeedRecord(
        "r2", "Add the numbers.", "2 and 3", "2 + 3 = 5."
    )
    assert schema.candidate_names(record, SOURCE) == ["ori", "Q"]
    assert schema.candidate(record, "ori", SOURCE) == Candidate(
        "Add the numbers.", "2 and 3", "2 + 3 = 5."
    )
    assert schema.candidate(record, "Q", SOURCE).instruction.endswith("one short sentence.")
    assert schema.candidate_scores(record, "ori", SOURCE) is None  # not scored yet
    assert schema.candidate_scores(record, "QA", SOURCE) is None  # no such candidate yet
    assert schema.teacher_status(record, "instruction") == "ok"
    assert schema.teacher_status(record, "response") is None
    assert schema.teacher_status(reflected_record(*SEED[4]), "instruction") == "fallback_parse"
    assert schema.latest_decision(record) == (None, None)


def test_accessors_read_what_select_ifd_wrote(tmp_path: Path) -> None:
    records = phase1_records(tmp_path)
    higher, null = records["q-higher"], records["q-null"]
    assert schema.phase1_of(higher, SOURCE) == Phase1("Q", "Q has higher IFD")
    assert schema.phase1_winner(higher, SOURCE) == "Q"
    assert schema.candidate_scores(higher, "Q", SOURCE) == {"ifd": 0.7, "rifd": 0.5, "reason": None}
    assert schema.candidate(higher, "ori", SOURCE).scores == {
        "ifd": 0.5,
        "rifd": 0.5,
        "reason": None,
    }
    assert schema.candidate_scores(null, "Q", SOURCE) == {
        "ifd": None,
        "rifd": None,
        "reason": "truncated",
    }
    assert schema.latest_decision(null) == ("ori", "Q unscorable (truncated)")


def test_accessors_read_what_select_rifd_wrote(tmp_path: Path) -> None:
    records = decided_records(tmp_path)
    keep, worse = records["keep"], records["worse"]
    assert schema.decision_of(keep, SOURCE) == Decision("QA", "reflected response kept")
    assert schema.phase2_of(keep, SOURCE) == Decision("QA", "reflected response kept")
    assert schema.decision_of(worse, SOURCE).decision == "dropped"
    assert schema.phase1_winner(worse, SOURCE) == "ori"
    assert schema.candidate_scores(keep, "QA", SOURCE) == {"ifd": 0.6, "rifd": 0.5, "reason": None}
    assert schema.teacher_status(keep, "response") == "ok"
    assert schema.latest_decision(worse) == ("dropped", "dropped: new r-IFD not below old r-IFD")


def test_constructors_write_the_on_disk_shape_and_leave_the_input_alone(tmp_path: Path) -> None:
    record = reflected_record(*SEED[0])
    before = copy.deepcopy(record)
    scored = schema.with_scores(record, "Q", FULL_SCORES)
    assert scored["candidates"]["Q"] == {**record["candidates"]["Q"], "scores": FULL_SCORES}
    assert scored["candidates"]["ori"] == record["candidates"]["ori"]
    phased = schema.with_phase1(scored, Phase1("Q", "Q has higher IFD"))
    assert phased["phase1"] == {"winner": "Q", "reason": "Q has higher IFD"}
    new = Candidate("Name a colour in one word.", "", "Blue, the sky's colour.")
    grown = schema.with_candidate(phased, "QA", new)
    assert grown["candidates"]["QA"] == {
        "instruction": "Name a colour in one word.",
        "input": "",
        "output": "Blue, the sky's colour.",
    }
    meta = {"parse_status": "ok", "attempts": 1}
    answered = schema.with_teacher_meta(grown, "response", meta)
    assert answered["teacher"] == {"instruction": {"parse_status": "ok"}, "response": meta}
    kept = Decision("QA", "reflected response kept")
    decided = schema.with_decision(answered, kept, phase2=kept)
    assert (decided["decision"], decided["reason"]) == ("QA", "reflected response kept")
    assert decided["phase2"] == {"decision": "QA", "reason": "reflected response kept"}
    cut = schema.with_decision(decided, Decision("dropped", "cut: IFD unscorable"))
    assert cut["phase2"] == decided["phase2"] and cut["decision"] == "dropped"
    assert record == before and decided["decision"] == "QA"
    # what select_ifd writes is exactly what the constructors build
    written = phase1_records(tmp_path)["q-higher"]
    rebuilt = {**written, "candidates": {n: dict(c) for n, c in written["candidates"].items()}}
    for name in ("ori", "Q"):
        rebuilt["candidates"][name].pop("scores")
        rebuilt = schema.with_scores(rebuilt, name, written["candidates"][name]["scores"])
    rebuilt = schema.with_phase1(
        {k: v for k, v in rebuilt.items() if k != "phase1"}, Phase1("Q", "Q has higher IFD")
    )
    assert rebuilt == written and list(rebuilt) == list(written)


def _drop(path: str) -> Any:
    def change(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = record
        for key in parents:
            target = target[key]
        del target[last]

    return change


def _set(path: str, value: Any) -> Any:
    def change(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = record
        for key in parents:
            target = target[key]
        target[last] = value

    return change


MALFORMED = [  # (change to a decided record, the accessor that reads it, the field named)
    (_drop("candidates"), lambda r: schema.candidate(r, "ori", SOURCE), "candidates"),
    (_set("candidates", ["ori"]), lambda r: schema.candidate_names(r, SOURCE), "candidates"),
    (_drop("candidates.QA"), lambda r: schema.candidate(r, "QA", SOURCE), "candidates.QA"),
    (
        _set("candidates.QA.output", 7),
        lambda r: schema.candidate(r, "QA", SOURCE),
        "candidates.QA.output",
    ),
    (
        _set("candidates.QA.scores", [0.6, 0.5]),
        lambda r: schema.candidate_scores(r, "QA", SOURCE),
        "candidates.QA.scores",
    ),
    (
        _set("candidates.QA.scores.ifd", "low"),
        lambda r: schema.candidate_scores(r, "QA", SOURCE),
        "candidates.QA.scores.ifd",
    ),
    (
        _set("candidates.QA.scores.reason", 3),
        lambda r: schema.candidate(r, "QA", SOURCE),
        "candidates.QA.scores.reason",
    ),
    (_set("phase1.winner", "A"), lambda r: schema.phase1_winner(r, SOURCE), "phase1.winner"),
    (_drop("phase1"), lambda r: schema.phase1_of(r, SOURCE), "phase1.winner"),
    (_set("phase1.reason", None), lambda r: schema.phase1_of(r, SOURCE), "phase1.reason"),
    (_set("decision", "B"), lambda r: schema.decision_of(r, SOURCE), "decision"),
    (_drop("reason"), lambda r: schema.decision_of(r, SOURCE), "reason"),
    (_set("phase2", "kept"), lambda r: schema.phase2_of(r, SOURCE), "phase2"),
    (_drop("instruction"), lambda r: schema.seed_of(r, SOURCE), "instruction"),
]


@pytest.mark.parametrize(("change", "read", "field"), MALFORMED)
def test_a_malformed_record_is_one_input_error_naming_record_and_field(
    tmp_path: Path, change: Any, read: Any, field: str
) -> None:
    record = {**decided_records(tmp_path)["keep"], "instruction": "Do keep.", "output": "Done."}
    read(record)  # the well-formed record reads
    change(record)
    with pytest.raises(InputError) as raised:
        read(record)
    error = raised.value
    assert (error.file, error.record, error.field) == (SOURCE, "keep", field)
    assert error.fix and f"field {field!r}" in str(error) and "record 'keep'" in str(error)


def test_selection_refuses_a_score_of_the_wrong_type_instead_of_reading_it_as_missing(
    tmp_path: Path,
) -> None:
    records_path, scores_path = scored_phase2_files(tmp_path)
    records = read_jsonl(records_path)
    records[1]["candidates"]["ori"]["scores"]["rifd"] = "0.4"  # "worse": ori won phase 1
    write_jsonl(records_path, records)
    with pytest.raises(InputError) as raised:
        select_rifd(
            records_path,
            [scores_path],
            tmp_path / "o.jsonl",
            tmp_path / "s.jsonl",
            SelectionConfig(),
        )
    error = raised.value
    assert (error.record, error.field) == ("worse", "candidates.ori.scores.rifd")
    assert error.file == str(records_path) and "number or null" in error.problem


def test_teacher_critique_and_reasons_read_new_and_older_records() -> None:
    meta = {"parse_status": "partial", "critique": "Too easy.", "reasons": ["repaired: x"]}
    record = schema.with_teacher_meta({"id": "r1"}, "instruction", meta)
    assert schema.teacher_critique(record, "instruction") == "Too easy."
    assert schema.teacher_reasons(record, "instruction") == ["repaired: x"]
    older = reflected_record(*SEED[1])  # written before the teacher kept its critique
    assert schema.teacher_critique(older, "instruction") is None
    assert schema.teacher_reasons(older, "instruction") == []
    assert schema.teacher_meta(older, "response") == {}

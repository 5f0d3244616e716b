"""Reading imported reflections: the reference's four aligned files or one JSONL, and one clear
error (file, record, field, fix) for each way they can be out of line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rtune.components.common.record_schema import teacher_status
from rtune.components.common.records import InputError, read_jsonl
from rtune.components.importer.join import attach_responses, import_phase1
from rtune.components.importer.sources import read_reflections
from rtune.components.importer.task import ImportConfig
from rtune.components.select_rifd.rules import decide_phase2
from tests.paths import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "import"
NAMES = ("ori", "Q", "A", "QA")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A copy of the example's four files, to spoil one way per test."""
    return Path(shutil.copytree(EXAMPLE / "reference", tmp_path / "reference"))


def rows(folder: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))


def rewrite(folder: Path, name: str, data: list[dict[str, Any]]) -> None:
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def seed_records() -> list[dict[str, Any]]:
    """The example seed as `prepare` would give it (ids by position are enough here)."""
    return [
        {"id": f"s{i}", "flags": [], **r} for i, r in enumerate(read_jsonl(EXAMPLE / "seed.jsonl"))
    ]


def test_four_files_and_one_jsonl_give_the_same_aligned_candidates(folder: Path) -> None:
    four = read_reflections(str(folder))
    one = read_reflections(str(EXAMPLE / "candidates.jsonl"))
    assert len(four.samples) == len(one.samples) == 4
    for sample, combined in zip(four.samples, one.samples, strict=True):
        assert sample.candidates == combined.candidates
    for name in NAMES:
        expected = rows(folder, name)
        got = [s.candidates[name] for s in four.samples]
        assert [c.instruction for c in got] == [r["instruction"] for r in expected]
        assert [c.output for c in got] == [r["output"] for r in expected]
    assert [f.name for f in four.files] == [str(folder / f"{n}.json") for n in NAMES]
    assert all(len(f.sha256) == 64 for f in four.files)


def test_a_file_with_fewer_records_is_one_error_naming_it(folder: Path) -> None:
    rewrite(folder, "A", rows(folder, "A")[:3])
    with pytest.raises(InputError) as err:
        read_reflections(str(folder))
    assert err.value.file == str(folder / "A.json")
    assert "3 records" in err.value.problem and "4" in err.value.problem
    assert "aligned" in err.value.fix


def test_an_id_missing_from_ori_is_one_error_naming_file_record_and_field(folder: Path) -> None:
    for name in NAMES:
        rewrite(folder, name, [{"id": f"x{i}", **r} for i, r in enumerate(rows(folder, name))])
    spoiled = rows(folder, "QA")
    spoiled[2]["id"] = "x9"
    rewrite(folder, "QA", spoiled)
    with pytest.raises(InputError) as err:
        read_reflections(str(folder))
    assert (err.value.file, err.value.record, err.value.field) == (str(folder / "QA.json"), 2, "id")
    assert "'x9'" in err.value.problem and "ori.json" in err.value.problem


def test_ids_align_records_given_in_another_order(folder: Path) -> None:
    for name in NAMES:
        with_ids = [{"id": f"x{i}", **r} for i, r in enumerate(rows(folder, name))]
        rewrite(folder, name, with_ids[::-1] if name == "QA" else with_ids)
    samples = read_reflections(str(folder)).samples
    assert [s.id for s in samples] == ["x0", "x1", "x2", "x3"]
    assert samples[0].candidates["QA"].instruction == samples[0].candidates["Q"].instruction


def test_a_missing_field_is_one_error_naming_file_record_and_field(folder: Path) -> None:
    spoiled = rows(folder, "Q")
    del spoiled[1]["output"]
    rewrite(folder, "Q", spoiled)
    with pytest.raises(InputError) as err:
        read_reflections(str(folder))
    assert (err.value.file, err.value.record, err.value.field) == (
        str(folder / "Q.json"),
        1,
        "output",
    )
    assert "output" in err.value.fix


def test_swapped_a_and_qa_files_are_caught_by_their_instructions(folder: Path) -> None:
    a, qa = rows(folder, "A"), rows(folder, "QA")
    rewrite(folder, "A", qa)
    rewrite(folder, "QA", a)
    with pytest.raises(InputError) as err:
        read_reflections(str(folder))
    assert (err.value.file, err.value.record, err.value.field) == (
        str(folder / "A.json"),
        0,
        "instruction",
    )
    assert "swapped" in err.value.fix


def test_a_missing_file_names_the_four_expected_names(folder: Path) -> None:
    (folder / "QA.json").unlink()
    with pytest.raises(InputError) as err:
        read_reflections(str(folder))
    assert "QA" in err.value.problem and "QA.json" in err.value.fix


def test_a_jsonl_line_without_a_candidate_names_line_and_field(tmp_path: Path) -> None:
    lines = read_jsonl(EXAMPLE / "candidates.jsonl")
    del lines[1]["candidates"]["QA"]
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_reflections(str(path))
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 2, "candidates.QA")


def test_ori_instructions_must_be_the_seeds(folder: Path) -> None:
    seed = seed_records()
    seed[3]["instruction"] = "Summarise the paragraph."
    with pytest.raises(InputError) as err:
        import_phase1(seed, read_reflections(str(folder)), "seed.jsonl")
    assert (err.value.file, err.value.record, err.value.field) == (
        str(folder / "ori.json"),
        3,
        "instruction",
    )
    assert "'s3'" in err.value.problem  # the seed record it was compared with


def test_phase1_records_carry_ori_and_q_and_the_responses_wait_for_phase2(folder: Path) -> None:
    seed = seed_records()
    result = import_phase1(seed, read_reflections(str(folder)), "seed.jsonl")
    q = rows(folder, "Q")
    assert [r["id"] for r in result.records] == ["s0", "s1", "s2", "s3"]
    for record, source, reflected in zip(result.records, seed, q, strict=True):
        assert record["candidates"]["ori"] == {
            k: source[k] for k in ("instruction", "input", "output")
        }
        assert record["candidates"]["Q"]["instruction"] == reflected["instruction"]
        assert record["flags"] == []
    statuses = [r["teacher"]["instruction"]["parse_status"] for r in result.records]
    assert statuses == ["ok", "ok", "unchanged", "ok"]  # Q.json[2] copies ori (reference fallback)
    assert {r["id"]: set(r) for r in result.responses}["s0"] == {"id", "A", "QA"}
    assert result.summary.as_dict()["records"] == 4


def phase2_inputs(folder: Path, winner: str = "ori") -> tuple[list[dict[str, Any]], list]:
    """Phase-1 records with ``winner`` chosen, and the responses phase 1 left for phase 2."""
    result = import_phase1(seed_records(), read_reflections(str(folder)), "seed.jsonl")
    chosen = [{**r, "phase1": {"winner": winner, "reason": "test"}} for r in result.records]
    return chosen, result.responses


TAGGED = "<thinking>\nAdd the parts.\n</thinking>\n<output>\nThe answer.\n</output>"


def test_reflection_format_imported_answers_without_tags_fall_back_with_a_reason(
    folder: Path,
) -> None:
    a = rows(folder, "A")
    a[0]["output"] = TAGGED
    a[1]["output"] = "<thinking>\nno output block\n</thinking>"  # stays plain-looking
    rewrite(folder, "A", a)
    records, responses = phase2_inputs(folder)
    out, summary = attach_responses(
        records, responses, "p1.jsonl", "r.jsonl", response_format="reflection"
    )
    by_id = {r["id"]: r for r in out}
    assert by_id["s0"]["candidates"]["A"]["output"] == TAGGED
    assert by_id["s0"]["teacher"]["response"]["parse_status"] == "ok"
    broken = by_id["s1"]
    assert broken["candidates"]["A"]["output"] == broken["candidates"]["ori"]["output"]
    meta = broken["teacher"]["response"]
    assert meta["parse_status"] == "fallback_parse"
    (reason,) = meta["reasons"]
    assert "A.output of record 's1' in r.jsonl" in reason
    assert "no <output>…</output> block after </thinking>" in reason
    # s2 and s3's A answers are the example's plain texts: not in the format either
    assert summary.not_in_format == 3
    assert "3 not in the reflection format" in summary.line()
    assert summary.as_dict()["not_in_format"] == 3.0


def test_plain_format_imports_answers_as_they_are(folder: Path) -> None:
    a = rows(folder, "A")
    a[1]["output"] = "<thinking>\nno output block\n</thinking>"
    rewrite(folder, "A", a)
    records, responses = phase2_inputs(folder)
    out, summary = attach_responses(records, responses, "p1.jsonl", "r.jsonl")
    assert out[1]["candidates"]["A"]["output"] == a[1]["output"]
    assert summary.not_in_format == 0
    assert {r["teacher"]["response"]["parse_status"] for r in out} <= {"ok", "unchanged"}


def test_the_selection_never_keeps_an_imported_answer_that_fell_back(folder: Path) -> None:
    records, responses = phase2_inputs(folder)
    out, _ = attach_responses(records, responses, "p", "r", response_format="reflection")
    good = {"ifd": 0.5, "rifd": 0.5}
    decision, reason = decide_phase2(
        "ori", {"ifd": 0.9, "rifd": 0.9}, good, "reference", teacher_status(out[1], "response")
    )
    assert decision == "dropped"
    assert "teacher fallback (fallback_parse)" in reason


def test_the_import_stages_follow_the_teachers_response_format() -> None:
    teacher = {"backend": "imported", "import_uri": "examples/import/reference"}
    assert ImportConfig.from_teacher(teacher).response_format == "plain"
    reflection = ImportConfig.from_teacher({**teacher, "response_format": "reflection"})
    assert reflection.response_format == "reflection"

"""Selected records -> calibration texts for llm-compressor and held-out texts for perplexity.

Split. Records are ranked by ``sha256(id)``: the first ``heldout`` are held out (perplexity
only), the next ``calibration`` calibrate the recipe. The split depends only on the ids, not on
file order, and the two sets never share a record. Too few records to hold out ``heldout`` and
still calibrate on at least one is an error naming both numbers; fewer calibration records than
asked is allowed and reported (``CalibrationSplit.short_by``).

Texts. Both sets use the fine-tuning text ``start + P(x) + y`` (same template, same
tokenization, same start token when the tokenizer adds no BOS, the template's response prefix
before ``y``, the response format's system turn and trained answer - ``training_texts``; cut at
``max_seq_length``), so calibration sees what the model was fine-tuned on
and is served with, and perplexity is measured on the response tokens ``y`` only. A held-out record whose response is cut away entirely is skipped
and counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtune.components.common.records import InputError, require_text_fields
from rtune.components.scoring.chat_templates import training_texts
from rtune.components.scoring.passes import PassBuilder, TokenPass, resolve_start_ids


@dataclass(frozen=True)
class CalibrationSplit:
    calibration: list[Mapping[str, Any]]
    heldout: list[Mapping[str, Any]]
    short_by: int = 0  # calibration records asked for but not available

    @property
    def calibration_ids(self) -> list[str]:
        return [str(r["id"]) for r in self.calibration]

    @property
    def heldout_ids(self) -> list[str]:
        return [str(r["id"]) for r in self.heldout]


def id_rank(record_id: str) -> str:
    """The record's place in the split order: a hash, so it does not depend on file order."""
    return hashlib.sha256(record_id.encode("utf-8")).hexdigest()


def split_records(
    records: Sequence[Mapping[str, Any]], calibration: int, heldout: int, source: str
) -> CalibrationSplit:
    """Held-out and calibration records, disjoint, chosen by the hash of their id."""
    _check_records(records, source)
    if len(records) <= heldout:
        raise InputError(
            source,
            f"{len(records)} selected record(s): too few to hold out {heldout} for the perplexity "
            "check and calibrate on the rest (a record is never used for both)",
            f"select more records, or lower quantize.heldout_records below {len(records)}",
        )
    ranked = sorted(records, key=lambda r: id_rank(str(r["id"])))
    rest = ranked[heldout:]
    return CalibrationSplit(
        calibration=list(rest[:calibration]),
        heldout=list(ranked[:heldout]),
        short_by=max(calibration - len(rest), 0),
    )


def _check_records(records: Sequence[Mapping[str, Any]], source: str) -> None:
    seen: set[str] = set()
    for number, record in enumerate(records, start=1):
        require_text_fields(
            record,
            ("id", "instruction", "output"),
            source,
            number,
            "quantize needs selected records with id, instruction and output",
        )
        if record["id"] in seen:
            raise InputError(
                source,
                f"duplicate id {record['id']!r}",
                "give every record a unique id (the calibration/held-out split uses it)",
                line=number,
                record=str(record["id"]),
                field="id",
            )
        seen.add(str(record["id"]))


@dataclass
class ResponseTexts:
    """Token passes (``ids``, first response position ``start``) keyed by record id."""

    passes: dict[str, TokenPass] = field(default_factory=dict)
    cut_away: list[str] = field(default_factory=list)  # response truncated to nothing
    truncated: int = 0


def response_passes(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    template_name: str,
    max_length: int,
    response_format: str = "plain",
) -> ResponseTexts:
    """The fine-tuning ``start + P(x) + y`` token ids of each record, cut at ``max_length``."""
    builder = PassBuilder(tokenizer, resolve_start_ids(tokenizer, "auto"), max_length)
    texts = ResponseTexts()
    for record in records:
        prompt, response = training_texts(template_name, record, tokenizer, response_format)
        token_pass, truncated = builder.conditioned(prompt, response)
        texts.truncated += int(truncated)
        if token_pass is None:
            texts.cut_away.append(str(record["id"]))
        else:
            texts.passes[str(record["id"])] = token_pass
    return texts


def save_calibration(texts: ResponseTexts, path: Path) -> Path:
    """One ``{"id", "input_ids"}`` line per calibration text (what the worker reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record_id, token_pass in texts.passes.items():
            handle.write(json.dumps({"id": record_id, "input_ids": list(token_pass.ids)}) + "\n")
    return path


def texts_digest(texts: ResponseTexts) -> str:
    """Content hash of the token ids (part of the work folder's fingerprint)."""
    digest = hashlib.sha256()
    for record_id, token_pass in texts.passes.items():
        digest.update(json.dumps([record_id, token_pass.ids, token_pass.start]).encode())
    return digest.hexdigest()[:16]

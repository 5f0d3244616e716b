"""Selected records -> supervised training examples -> padding-free packed rows.

An example is the scorer's conditioned text ``P(x) + y`` (same template, same tokenization: the
text is tokenized whole and the response starts at the token count of the prompt) followed by the
end-of-sequence token, so the student also learns to stop. The one difference: a template's
``response_prefix`` goes before ``y`` (vicuna: FastChat's ``ASSISTANT: answer``, the format the
reference trained with, while its scoring joins ``ASSISTANT:answer`` bare). The fine-tuned
model's chat template renders this same text (``scoring/chat_templates.py``). Labels are the token ids on the
response (and EOS) and ``IGNORE`` on the prompt: the loss is on response tokens only. Under
``teacher.response_format: reflection`` the prompt carries the reflection system prompt and the
response is the whole tagged answer (``chat_templates.training_texts``).

``max_length`` truncation keeps the prompt and cuts the response; a record whose response is cut
to nothing is not trained on and is counted (``dropped_truncated``), never silently kept as a
prompt-only example.

Packing (``pack_examples``) concatenates whole examples into rows of at most ``row_tokens``
tokens, first-fit over the examples sorted by length (length-grouped, so rows fill evenly). Each
row carries ``position_ids`` that restart at 0 for every example: transformers turns restarting
position ids into a block-diagonal causal mask (sdpa/eager) or varlen kernels (flash-attention),
so no example attends to another. Labels are stored already shifted (``shift_labels[i]`` is the
token predicted at position ``i``), so the last token of one example never predicts the first of
the next.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtune.components.common.records import require_text_fields
from rtune.components.scoring.chat_templates import training_texts
from rtune.components.scoring.passes import resolve_start_ids

IGNORE = -100


@dataclass(frozen=True)
class TrainingExample:
    """One record's tokens; ``labels`` is ``IGNORE`` on the prompt (same length as ``input_ids``)."""

    id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def n_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class ExampleStats:
    records: int = 0
    examples: int = 0
    dropped_truncated: int = 0
    truncated: int = 0
    tokens: int = 0
    target_tokens: int = 0
    dropped_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "records": self.records,
            "examples": self.examples,
            "dropped_truncated": self.dropped_truncated,
            "truncated": self.truncated,
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
        }


def tokenize_record(
    record: Mapping[str, Any],
    tokenizer: Any,
    template_name: str,
    max_length: int,
    start_ids: Sequence[int] = (),
    response_format: str = "plain",
) -> tuple[TrainingExample | None, bool]:
    """``(example, truncated)``; the example is None when truncation left no response token."""
    prompt, response = training_texts(template_name, record, tokenizer, response_format)
    prefix_ids = list(start_ids) + list(tokenizer.encode(prompt))
    whole = list(start_ids) + list(tokenizer.encode(prompt + response))
    whole.append(tokenizer.eos_token_id)
    start = max(len(prefix_ids), 1)
    truncated = len(whole) > max_length
    ids = whole[:max_length]
    if start >= len(ids):
        return None, truncated
    labels = [IGNORE] * start + ids[start:]
    return TrainingExample(str(record["id"]), tuple(ids), tuple(labels)), truncated


def build_examples(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    template_name: str,
    max_length: int,
    source: str = "selected",
    response_format: str = "plain",
) -> tuple[list[TrainingExample], ExampleStats]:
    """Tokenize every selected record; bad records raise one clear error naming id and field."""
    start_ids = resolve_start_ids(tokenizer, "auto")
    stats = ExampleStats(records=len(records))
    examples: list[TrainingExample] = []
    for number, record in enumerate(records, start=1):
        _check_record(record, source, number)
        example, truncated = tokenize_record(
            record, tokenizer, template_name, max_length, start_ids, response_format
        )
        stats.truncated += int(truncated)
        if example is None:
            stats.dropped_truncated += 1
            stats.dropped_ids.append(str(record["id"]))
            continue
        examples.append(example)
        stats.tokens += len(example.input_ids)
        stats.target_tokens += example.n_targets
    stats.examples = len(examples)
    return examples, stats


def _check_record(record: Mapping[str, Any], source: str, number: int) -> None:
    require_text_fields(
        record,
        ("id", "instruction", "output"),
        source,
        number,
        "training records need id, instruction and output (run select_rifd first)",
    )


@dataclass(frozen=True)
class PackedRow:
    """Whole examples back to back; ``shift_labels[i]`` is the target predicted at position ``i``."""

    input_ids: tuple[int, ...]
    position_ids: tuple[int, ...]
    shift_labels: tuple[int, ...]
    example_ids: tuple[str, ...]

    @property
    def n_targets(self) -> int:
        return sum(1 for label in self.shift_labels if label != IGNORE)


def shifted(labels: Sequence[int]) -> list[int]:
    """Causal-LM targets aligned with positions: label of token ``i+1`` at ``i``, last ignored."""
    return [*labels[1:], IGNORE]


def pack_examples(examples: Sequence[TrainingExample], row_tokens: int) -> list[PackedRow]:
    """First-fit-decreasing packing of whole examples into rows of at most ``row_tokens`` tokens.

    An example longer than ``row_tokens`` gets a row of its own (never split). Without a
    varlen attention kernel (CPU, sdpa) a row of T tokens pays T² attention however it is
    split, so a budget below ``max_length`` trades a few more steps for less masked-out work.
    """
    order = sorted(examples, key=lambda e: (-len(e.input_ids), e.id))
    bins: list[list[TrainingExample]] = []
    room: list[int] = []
    for example in order:
        size = len(example.input_ids)
        slot = next((i for i, free in enumerate(room) if free >= size), None)
        if slot is None:
            bins.append([example])
            room.append(max(row_tokens - size, 0))
        else:
            bins[slot].append(example)
            room[slot] -= size
    return [_row(members) for members in bins]


def _row(members: Sequence[TrainingExample]) -> PackedRow:
    input_ids: list[int] = []
    positions: list[int] = []
    labels: list[int] = []
    for example in members:
        input_ids.extend(example.input_ids)
        positions.extend(range(len(example.input_ids)))
        labels.extend(shifted(example.labels))
    return PackedRow(
        tuple(input_ids), tuple(positions), tuple(labels), tuple(e.id for e in members)
    )


def single_rows(examples: Sequence[TrainingExample]) -> list[PackedRow]:
    """One example per row (``packing: false``): the padded-batch layout."""
    return [_row([example]) for example in examples]


def save_rows(rows: Sequence[PackedRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.__dict__) + "\n")


def load_rows(path: Path) -> list[PackedRow]:
    with path.open(encoding="utf-8") as handle:
        return [
            PackedRow(**{k: tuple(v) for k, v in json.loads(line).items()})
            for line in handle
            if line.strip()
        ]


def rows_digest(rows: Sequence[PackedRow]) -> str:
    """Content hash of the training rows (part of the checkpoint fingerprint)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row.__dict__).encode())
    return digest.hexdigest()[:16]

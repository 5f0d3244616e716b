"""The teacher's instructions for the two reflection phases, in our own words.

Each phase is one ``PhaseSpec``: the criteria the teacher judges, the task, the fields it must
return (each with a marker such as ``[New Instruction]`` and a JSON key such as
``new_instruction``) and two worked examples. One user template serves both phases; the reply
format (markers, with or without a leading ``[Feedback]``, or JSON) is generated from the fields,
so there is a single source of wording per phase and no copied variants.

* Instruction reflection (phase 1) judges the instruction's topic complexity, required detail,
  required knowledge, ambiguity and the reasoning it calls for, then writes a NEW SELF-CONTAINED
  instruction (any input folded in) and its answer.
* Response reflection (phase 2) judges the answer's helpfulness, relevance, accuracy and level of
  detail, then writes a better answer to the same instruction.

A backend that can prefill (local models) gets the assistant turn started with the first output
marker; then the examples skip ``[Feedback]`` too, so the model sees one consistent format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.common.checkpoint import fingerprint
from components.teacher.protocol import Message, TeacherRequest

SYSTEM = (
    "You are an expert teacher who improves instruction-tuning data for language models. "
    "You judge a sample honestly, then rewrite it so a student model learns more from it."
)
USER_TEMPLATE = """Here is a sample from an instruction-tuning dataset.

{sample}

Judge the {target} on these criteria:
{criteria}

{task}

{reply_format}"""
FEEDBACK_MARKER = "Feedback"


@dataclass(frozen=True)
class OutputField:
    """One thing the teacher must write: its marker, JSON key, meaning, and what it may not copy.

    ``not_same_as`` names sample fields (``instruction``/``input``/``output``) or other output keys
    whose text this field must differ from; a copy counts as a placeholder, not a reflection.
    """

    key: str
    marker: str
    meaning: str
    not_same_as: tuple[str, ...] = ()


@dataclass(frozen=True)
class Example:
    """A worked example: a sample, the teacher's feedback on it, and the fields it wrote."""

    sample: Mapping[str, str]
    feedback: str
    outputs: Mapping[str, str]


@dataclass(frozen=True)
class PhaseSpec:
    """Everything that defines one reflection phase's prompt and reply."""

    name: str
    target: str
    criteria: tuple[str, ...]
    task: str
    outputs: tuple[OutputField, ...]
    examples: tuple[Example, ...]

    @property
    def prefill(self) -> str:
        """The start of the assistant turn for prefilling backends: the first output marker."""
        return f"[{self.outputs[0].marker}]\n"

    def json_schema(self) -> dict[str, Any]:
        props = {f.key: {"type": "string", "description": f.meaning} for f in self.outputs}
        return {"type": "object", "properties": props, "required": [f.key for f in self.outputs],
                "additionalProperties": False}

    def version(self) -> str:
        """A hash of the wording: a checkpoint made with other prompts is not resumed."""
        return fingerprint(SYSTEM, USER_TEMPLATE, repr(self))


INSTRUCTION_PHASE = PhaseSpec(
    name="instruction",
    target="instruction",
    criteria=(
        "Topic complexity: is the topic rich enough to teach something, or trivial?",
        "Level of detail: does it say how detailed, long or structured the answer must be?",
        "Required knowledge: what expertise does a good answer need, and is it stated?",
        "Ambiguity: could it be read in more than one way, or is context missing?",
        "Reasoning: does it call for logical reasoning or problem-solving, not just recall?",
    ),
    task=(
        "Then write a new instruction that does better on these criteria while keeping the "
        "original intent. The new instruction must be self-contained: put any input text inside "
        "it, because it will be shown without a separate input. Then write a complete, correct "
        "answer to the new instruction."
    ),
    outputs=(
        OutputField("new_instruction", "New Instruction", "the new self-contained instruction",
                    not_same_as=("instruction",)),
        OutputField("new_answer", "New Answer", "the answer to the new instruction",
                    not_same_as=("instruction", "new_instruction")),
    ),
    examples=(
        Example(
            sample={"instruction": "Give three tips for staying healthy.", "input": "",
                    "output": "Eat well, exercise and sleep."},
            feedback="A broad, easy topic; no audience, no detail asked, no reasoning needed. "
                     "The answer is a bare list.",
            outputs={
                "new_instruction": "Give three habits that help an office worker who sits all "
                                   "day stay healthy. For each, explain in one sentence why it "
                                   "works and give one way to start this week.",
                "new_answer": "1. Stand up and walk for five minutes every hour: long sitting "
                              "slows blood flow and metabolism. Set a timer on your phone.\n"
                              "2. Eat vegetables at lunch: fibre keeps energy steady through "
                              "the afternoon. Pack a salad twice this week.\n"
                              "3. Sleep seven to eight hours: sleep restores focus and mood. "
                              "Fix a bedtime and keep screens out of the bedroom.",
            },
        ),
        Example(
            sample={"instruction": "Classify the sentiment.",
                    "input": "The battery died after two days, but support replaced it fast.",
                    "output": "Negative"},
            feedback="The input is needed to understand the task; the label set is not given; "
                     "mixed sentiment makes a one-word answer ambiguous.",
            outputs={
                "new_instruction": "Classify the sentiment of this review as positive, negative "
                                   "or mixed, and justify the label in one sentence: \"The "
                                   "battery died after two days, but support replaced it fast.\"",
                "new_answer": "Mixed. The product failed quickly (negative), but the customer "
                              "praises the fast replacement by support (positive).",
            },
        ),
    ),
)

RESPONSE_PHASE = PhaseSpec(
    name="response",
    target="answer",
    criteria=(
        "Helpfulness: does it solve the user's actual problem?",
        "Relevance: does it stick to what was asked?",
        "Accuracy: is every statement correct?",
        "Level of detail: is it as detailed and well structured as the instruction calls for?",
    ),
    task="Then write a better answer to the same instruction that does better on these criteria.",
    outputs=(
        OutputField("better_answer", "Better Answer", "the improved answer",
                    not_same_as=("instruction", "output")),
    ),
    examples=(
        Example(
            sample={"instruction": "What causes the seasons on Earth?", "input": "",
                    "output": "The Earth is closer to the Sun in summer."},
            feedback="Inaccurate: distance is not the cause. Too short to be helpful.",
            outputs={
                "better_answer": "The seasons come from the tilt of Earth's axis (about 23.5 "
                                 "degrees). As Earth orbits the Sun, each hemisphere is tilted "
                                 "towards the Sun for part of the year, so sunlight hits it more "
                                 "directly and days are longer: that is summer. Half a year "
                                 "later it is tilted away: winter. Distance matters little; "
                                 "Earth is in fact closest to the Sun in January.",
            },
        ),
        Example(
            sample={"instruction": "Convert the temperature to Fahrenheit.", "input": "25 C",
                    "output": "77"},
            feedback="Correct but bare: no unit and no working shown.",
            outputs={
                "better_answer": "25 °C is 77 °F. Use F = C × 9/5 + 32: 25 × 9/5 = 45, and "
                                 "45 + 32 = 77.",
            },
        ),
    ),
)

PHASES = {phase.name: phase for phase in (INSTRUCTION_PHASE, RESPONSE_PHASE)}


def render_sample(sample: Mapping[str, str]) -> str:
    """The sample under judgement; the input section is left out when there is none."""
    parts = [f"[Instruction]\n{sample['instruction'].strip()}"]
    if sample.get("input", "").strip():
        parts.append(f"[Input]\n{sample['input'].strip()}")
    parts.append(f"[Answer]\n{sample['output'].strip()}")
    return "\n\n".join(parts)


def reply_format(phase: PhaseSpec, *, structured: bool, feedback: bool) -> str:
    """How to reply, generated from the phase's output fields."""
    if structured:
        keys = ", ".join(f'"{f.key}" ({f.meaning})' for f in phase.outputs)
        return f"Reply with only a JSON object with the keys {keys}."
    sections = [(f.marker, f.meaning) for f in phase.outputs]
    if feedback:
        sections.insert(0, (FEEDBACK_MARKER, f"your short judgement of the {phase.target}"))
    layout = "\n".join(f"[{marker}]\n<{meaning}>" for marker, meaning in sections)
    return f"Reply in exactly this format, each marker on its own line:\n{layout}"


def render_reply(phase: PhaseSpec, example: Example, *, structured: bool, feedback: bool) -> str:
    """An example's ideal reply in the same format the model is asked for."""
    if structured:
        return json.dumps({f.key: example.outputs[f.key] for f in phase.outputs})
    sections = [(f.marker, example.outputs[f.key]) for f in phase.outputs]
    if feedback:
        sections.insert(0, (FEEDBACK_MARKER, example.feedback))
    return "\n".join(f"[{marker}]\n{text}" for marker, text in sections)


def render_user(phase: PhaseSpec, sample: Mapping[str, str], *, structured: bool,
                feedback: bool) -> str:
    criteria = "\n".join(f"{number}. {text}" for number, text in enumerate(phase.criteria, 1))
    return USER_TEMPLATE.format(
        sample=render_sample(sample), target=phase.target, criteria=criteria, task=phase.task,
        reply_format=reply_format(phase, structured=structured, feedback=feedback),
    )


def build_request(phase: PhaseSpec, sample: Mapping[str, str], *, few_shot: bool,
                  structured: bool, prefill: bool) -> TeacherRequest:
    """The chat request for one sample.

    Structured output wins over prefill (a JSON reply has no marker to start with). Feedback is
    asked for only when the reply is free-form markers without a prefill: it lets a capable
    teacher reason before rewriting, while a prefilled reply already starts at the first field.
    """
    prefill = prefill and not structured
    feedback = not structured and not prefill
    messages: list[Message] = [{"role": "system", "content": SYSTEM}]
    for example in phase.examples if few_shot else ():
        messages.append({"role": "user", "content": render_user(
            phase, example.sample, structured=structured, feedback=feedback)})
        messages.append({"role": "assistant", "content": render_reply(
            phase, example, structured=structured, feedback=feedback)})
    messages.append({"role": "user", "content": render_user(
        phase, sample, structured=structured, feedback=feedback)})
    return TeacherRequest(
        messages=tuple(messages),
        prefill=phase.prefill if prefill else "",
        json_schema=phase.json_schema() if structured else None,
        schema_name=f"{phase.name}_reflection",
    )

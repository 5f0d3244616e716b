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

from rtune.components.common.checkpoint import fingerprint
from rtune.components.teacher.protocol import Message, TeacherRequest

SYSTEM = (
    "You are an expert teacher who improves instruction-tuning data for language models. "
    "You judge a sample honestly, then rewrite it so a student model learns more from it."
)
INTRO = "Here is a sample from an instruction-tuning dataset."
JUDGE = "Judge the {target} on these criteria:"
MARKERS_LEAD = "Reply in exactly this format, each marker on its own line:"
JSON_LEAD = "Reply with only a JSON object with the keys"
USER_TEMPLATE = f"""{INTRO}

{{sample}}

{JUDGE}
{{criteria}}

{{task}}

{{reply_format}}"""
FEEDBACK_MARKER = "Feedback"
SAMPLE_TAGS = ("instruction", "input", "answer")


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
        return {
            "type": "object",
            "properties": props,
            "required": [f.key for f in self.outputs],
            "additionalProperties": False,
        }

    def version(self) -> str:
        """A hash of the prompts this phase renders, in every style: a checkpoint made with
        other wording (or other rendering code) is not resumed."""
        probe = {"instruction": "probe", "input": "probe input", "output": "probe answer"}
        styles = [(False, False), (False, True), (True, False)]
        return fingerprint(
            [
                build_request(self, probe, few_shot=True, structured=structured, prefill=prefill)
                for structured, prefill in styles
            ]
        )


INSTRUCTION_PHASE = PhaseSpec(
    name="instruction",
    target="instruction",
    criteria=(
        "Topic complexity: is the topic rich enough to learn from?",
        "Level of detail: does it ask for enough detail and structure?",
        "Required knowledge: does it draw on real expertise?",
        "Ambiguity: is it clear, with all the context it needs?",
        "Reasoning: does it call for logical reasoning or problem-solving?",
    ),
    task=(
        "Then write a new instruction that is better on these criteria and keeps the original "
        "intent. Make it self-contained: include any input text in it. Then answer the new "
        "instruction completely and correctly."
    ),
    outputs=(
        OutputField(
            "new_instruction",
            "New Instruction",
            "the new self-contained instruction",
            not_same_as=("instruction",),
        ),
        OutputField(
            "new_answer",
            "New Answer",
            "the answer to the new instruction",
            not_same_as=("instruction", "new_instruction"),
        ),
    ),
    examples=(
        Example(
            sample={
                "instruction": "Classify the sentiment.",
                "input": "The battery died after two days, but support replaced it fast.",
                "output": "Negative",
            },
            feedback="Not self-contained, labels not given, and the review is mixed.",
            outputs={
                "new_instruction": (
                    "Is this review positive, negative or mixed? Justify the "
                    'label in one sentence. Review: "The battery died after two '
                    'days, but support replaced it fast."'
                ),
                "new_answer": (
                    "Mixed: the battery failed quickly (negative), but support fixed "
                    "it fast (positive)."
                ),
            },
        ),
        Example(
            sample={
                "instruction": "Give three tips for staying healthy.",
                "input": "",
                "output": "Eat well, exercise and sleep.",
            },
            feedback="Easy topic, no detail asked, no reasoning needed.",
            outputs={
                "new_instruction": (
                    "Give three habits that keep an office worker healthy, and "
                    "explain in one sentence why each one works."
                ),
                "new_answer": (
                    "1. Walk for five minutes every hour: long sitting slows blood "
                    "flow.\n2. Eat vegetables at lunch: fibre keeps energy steady.\n"
                    "3. Sleep seven to eight hours: sleep restores focus and mood."
                ),
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
        "Level of detail: is it as detailed and structured as the instruction needs?",
    ),
    task="Then write a better answer to the same instruction that does better on these criteria.",
    outputs=(
        OutputField(
            "better_answer",
            "Better Answer",
            "the improved answer",
            not_same_as=("instruction", "output"),
        ),
    ),
    examples=(
        Example(
            sample={
                "instruction": "What causes the seasons on Earth?",
                "input": "",
                "output": "The Earth is closer to the Sun in summer.",
            },
            feedback="Inaccurate: distance is not the cause. Too short to help.",
            outputs={
                "better_answer": (
                    "The tilt of Earth's axis (about 23.5 degrees). The hemisphere "
                    "tilted towards the Sun gets more direct light and longer days: "
                    "summer. Half a year later it is tilted away: winter. Distance "
                    "matters little; Earth is closest to the Sun in January."
                ),
            },
        ),
        Example(
            sample={
                "instruction": "Convert the temperature to Fahrenheit.",
                "input": "25 C",
                "output": "77",
            },
            feedback="Correct but bare: no unit and no working shown.",
            outputs={
                "better_answer": (
                    "25 °C is 77 °F. Use F = C × 9/5 + 32: 25 × 9/5 = 45, and 45 + 32 = 77."
                ),
            },
        ),
    ),
)

PHASES = {phase.name: phase for phase in (INSTRUCTION_PHASE, RESPONSE_PHASE)}


def prompt_echo_lines() -> tuple[str, ...]:
    """Fixed sentences of the prompt: a small model that starts echoing one has left its answer."""
    judges = tuple(JUDGE.format(target=phase.target) for phase in PHASES.values())
    return (INTRO, *judges, MARKERS_LEAD, JSON_LEAD)


def render_sample(sample: Mapping[str, str]) -> str:
    """The sample under judgement, in tags; the input is left out when there is none.

    Tags, not ``[Instruction]``-style markers: a small model that saw the sample in the same
    bracket style as its reply markers tended to recite the sample instead of writing the reply
    (0 of 10 seed samples parsed with brackets, 3 of 10 with tags, embedded model).
    """
    parts = [f"<{SAMPLE_TAGS[0]}>\n{sample['instruction'].strip()}\n</{SAMPLE_TAGS[0]}>"]
    if sample.get("input", "").strip():
        parts.append(f"<{SAMPLE_TAGS[1]}>\n{sample['input'].strip()}\n</{SAMPLE_TAGS[1]}>")
    parts.append(f"<{SAMPLE_TAGS[2]}>\n{sample['output'].strip()}\n</{SAMPLE_TAGS[2]}>")
    return "\n".join(parts)


def reply_format(phase: PhaseSpec, *, structured: bool, feedback: bool) -> str:
    """How to reply, generated from the phase's output fields."""
    if structured:
        keys = ", ".join(f'"{f.key}" ({f.meaning})' for f in phase.outputs)
        return f"{JSON_LEAD} {keys}."
    sections = [(f.marker, f.meaning) for f in phase.outputs]
    if feedback:
        sections.insert(0, (FEEDBACK_MARKER, f"your short judgement of the {phase.target}"))
    layout = "\n".join(f"[{marker}]\n<{meaning}>" for marker, meaning in sections)
    return f"{MARKERS_LEAD}\n{layout}"


def render_reply(phase: PhaseSpec, example: Example, *, structured: bool, feedback: bool) -> str:
    """An example's ideal reply in the same format the model is asked for."""
    if structured:
        return json.dumps({f.key: example.outputs[f.key] for f in phase.outputs})
    sections = [(f.marker, example.outputs[f.key]) for f in phase.outputs]
    if feedback:
        sections.insert(0, (FEEDBACK_MARKER, example.feedback))
    return "\n".join(f"[{marker}]\n{text}" for marker, text in sections)


def render_user(
    phase: PhaseSpec, sample: Mapping[str, str], *, structured: bool, feedback: bool
) -> str:
    criteria = "\n".join(f"{number}. {text}" for number, text in enumerate(phase.criteria, 1))
    return USER_TEMPLATE.format(
        sample=render_sample(sample),
        target=phase.target,
        criteria=criteria,
        task=phase.task,
        reply_format=reply_format(phase, structured=structured, feedback=feedback),
    )


def continuation_prefill(phase: PhaseSpec, written: Mapping[str, str]) -> str:
    """The assistant turn of a follow-up request for a reply that ended its turn early: the
    leading fields it wrote (``written``), in the reply format, then the marker of the first field
    it left out - so the model's next words can only be that field.

    For the instruction phase this is the prefill + the new instruction + ``[New Answer]``.
    """
    done = [spec for spec in phase.outputs if spec.key in written]
    if not done or len(done) == len(phase.outputs) or done != list(phase.outputs[: len(done)]):
        raise ValueError(
            f"a continuation needs a leading part of {[f.key for f in phase.outputs]}, "
            f"got {sorted(written)}"
        )
    sections = "\n".join(f"[{spec.marker}]\n{written[spec.key].strip()}" for spec in done)
    return f"{sections}\n[{phase.outputs[len(done)].marker}]\n"


def build_request(
    phase: PhaseSpec, sample: Mapping[str, str], *, few_shot: bool, structured: bool, prefill: bool
) -> TeacherRequest:
    """The chat request for one sample.

    Structured output wins over prefill (a JSON reply has no marker to start with). Feedback is
    asked for only when the reply is free-form markers without a prefill: it lets a capable
    teacher reason before rewriting, while a prefilled reply already starts at the first field.
    """
    prefill = prefill and not structured
    feedback = not structured and not prefill
    messages: list[Message] = [{"role": "system", "content": SYSTEM}]
    for example in phase.examples if few_shot else ():
        messages.append(
            {
                "role": "user",
                "content": render_user(
                    phase, example.sample, structured=structured, feedback=feedback
                ),
            }
        )
        messages.append(
            {
                "role": "assistant",
                "content": render_reply(phase, example, structured=structured, feedback=feedback),
            }
        )
    messages.append(
        {
            "role": "user",
            "content": render_user(phase, sample, structured=structured, feedback=feedback),
        }
    )
    return TeacherRequest(
        messages=tuple(messages),
        prefill=phase.prefill if prefill else "",
        json_schema=phase.json_schema() if structured else None,
        schema_name=f"{phase.name}_reflection",
        stop=prompt_echo_lines(),
    )

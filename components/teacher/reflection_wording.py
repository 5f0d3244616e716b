"""Phase 2 in the Reflection format (``teacher.response_format: reflection``).

The critique comes first as in the plain phase; the better answer is then asked for as
``<thinking>`` (step-by-step reasoning that checks itself), an optional ``<reflection>`` (a
mistake found and corrected) and ``<output>`` (the final answer alone). The worked examples show
the same answers as the plain wording, with their reasoning written out, so a small model sees
the format it must follow; ``common/response_format.py`` says which replies are usable.
"""

from __future__ import annotations

from dataclasses import replace

from rtune.components.common.response_format import REFLECTION
from rtune.components.teacher.phase_spec import Example, OutputField, PhaseSpec

REFLECTION_TASK = (
    "Write the better answer in the reflection format: reason step by step inside "
    "<thinking>…</thinking> and check each step; if you find a mistake, correct it inside "
    "<reflection>…</reflection> (leave it out when there is none); then write the final answer "
    "alone inside <output>…</output>."
)
REFLECTION_LAYOUT = (
    "<thinking>\n<your step-by-step reasoning; check each step>\n</thinking>\n"
    "<reflection>\n<optional: a mistake you found and its correction>\n</reflection>\n"
    "<output>\n<the final answer>\n</output>"
)
TAGGED_MEANING = (
    "the improved answer as <thinking>step-by-step reasoning</thinking>, an optional "
    "<reflection>correction</reflection>, then <output>the final answer</output>"
)
# The worked examples' better answers in the format, by the example's instruction.
TAGGED_ANSWERS = {
    "What causes the seasons on Earth?": (
        "<thinking>\nSeasons follow how directly sunlight hits each hemisphere. Earth's axis is "
        "tilted about 23.5 degrees, so for half the year one hemisphere leans towards the Sun: "
        "steeper light and longer days. Check: if distance were the cause, both hemispheres "
        "would have summer at the same time, but their seasons are opposite.\n<reflection>\n"
        "The old answer blamed distance; Earth is in fact closest to the Sun in early January, "
        "during northern winter.\n</reflection>\n</thinking>\n<output>\nThe tilt of Earth's "
        "axis, about 23.5 degrees. The hemisphere tilted towards the Sun gets steeper sunlight "
        "and longer days, so it warms: summer. Six months later it is tilted away: winter. "
        "Distance matters little; Earth is closest to the Sun in early January, during northern "
        "winter.\n</output>"
    ),
    "Convert the temperature to Fahrenheit.": (
        "<thinking>\nUse F = C × 9/5 + 32. 25 × 9/5 = 45, and 45 + 32 = 77. Check backwards: "
        "77 − 32 = 45 and 45 × 5/9 = 25.\n</thinking>\n<output>\n25 °C is 77 °F: multiply by "
        "9/5 and add 32 (25 × 9/5 = 45, 45 + 32 = 77).\n</output>"
    ),
}


def tagged(field: OutputField) -> OutputField:
    """``field`` asked for in the Reflection format."""
    return replace(field, meaning=TAGGED_MEANING, tagged=True, layout=REFLECTION_LAYOUT)


def reflection_phase(phase: PhaseSpec) -> PhaseSpec:
    """``phase`` (the response phase of either style) with its answer in the Reflection format."""
    examples = tuple(
        Example(
            example.sample,
            example.feedback,
            {key: TAGGED_ANSWERS[example.sample["instruction"]] for key in example.outputs},
        )
        for example in phase.examples
    )
    return replace(
        phase,
        task=f"{phase.task} {REFLECTION_TASK}",
        outputs=tuple(tagged(field) for field in phase.outputs),
        examples=examples,
        response_format=REFLECTION,
    )

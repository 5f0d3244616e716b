"""The teacher's words for the two reflection phases, in two named styles (``teacher.prompt_style``).

* ``faithful`` (the default) carries the substance of the reference implementation (Li et al.,
  2024) in our own words. Phase 1 judges the instruction (topic complexity, required detail,
  required knowledge, ambiguity, reasoning) *and* its answer (helpfulness, relevance, accuracy,
  level of detail) and says why this instruction led to this answer; then it writes a new
  instruction that is more complex and harder to answer directly - related to the original but
  self-contained - and answers it as fully as it can. Phase 2 judges the answer on the four answer
  criteria, then writes a better one. The critique comes first in every reply style. It is the
  default because selection only pays off when the teacher makes instructions *harder* (IFD rises)
  and answers *better*; a rewrite that merely "keeps the original intent" mostly paraphrases.
* ``concise`` is the wording of earlier releases: the instruction alone is judged, the new
  instruction "keeps the original intent", and only a free-form marker reply starts with a short
  ``[Feedback]``. Kept so earlier runs can be reproduced and compared.

One wording per phase and style lives here; ``prompts`` renders every reply format from it.
"""

from __future__ import annotations

from rtune.components.teacher.phase_spec import CRITIQUE_KEY, Example, OutputField, PhaseSpec

SYSTEM = (
    "You are an expert teacher who improves instruction-tuning data for language models. "
    "You judge a sample honestly, then rewrite it so a student model learns more from it."
)
FAITHFUL_SYSTEM = (
    "You are a demanding, exact reviewer of instruction-tuning data for language models. You find "
    "what is weak in a sample before you rewrite it, and every rewrite builds on what you found."
)
INSTRUCTION_CRITERIA = (
    "Topic complexity: is the topic rich enough to learn from?",
    "Level of detail: does it ask for enough detail and structure?",
    "Required knowledge: does it draw on real expertise?",
    "Ambiguity: is it clear, with all the context it needs?",
    "Reasoning: does it call for logical reasoning or problem-solving?",
)
ANSWER_CRITERIA = (
    "Helpfulness: does it solve the user's actual problem?",
    "Relevance: does it stick to what was asked?",
    "Accuracy: is every statement correct?",
    "Level of detail: is it as detailed and structured as the instruction needs?",
)

NEW_INSTRUCTION = OutputField(
    "new_instruction",
    "New Instruction",
    "the new self-contained instruction",
    not_same_as=("instruction",),
)
NEW_ANSWER = OutputField(
    "new_answer",
    "New Answer",
    "the answer to the new instruction",
    not_same_as=("instruction", "new_instruction"),
)
BETTER_ANSWER = OutputField(
    "better_answer", "Better Answer", "the improved answer", not_same_as=("instruction", "output")
)

CONCISE_INSTRUCTION = PhaseSpec(
    name="instruction",
    system=SYSTEM,
    critique=OutputField(CRITIQUE_KEY, "Feedback", "your short judgement of the instruction"),
    target="instruction",
    criteria=INSTRUCTION_CRITERIA,
    task=(
        "Then write a new instruction that is better on these criteria and keeps the original "
        "intent. Make it self-contained: include any input text in it. Then answer the new "
        "instruction completely and correctly."
    ),
    outputs=(NEW_INSTRUCTION, NEW_ANSWER),
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

CONCISE_RESPONSE = PhaseSpec(
    name="response",
    system=SYSTEM,
    critique=OutputField(CRITIQUE_KEY, "Feedback", "your short judgement of the answer"),
    target="answer",
    criteria=ANSWER_CRITERIA,
    task="Then write a better answer to the same instruction that does better on these criteria.",
    outputs=(BETTER_ANSWER,),
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

FAITHFUL_INSTRUCTION = PhaseSpec(
    name="instruction",
    style="faithful",
    system=FAITHFUL_SYSTEM,
    critique_first=True,
    critique=OutputField(
        CRITIQUE_KEY,
        "Critique",
        "your critique: the instruction and the answer on each criterion, and why this "
        "instruction led to this answer",
    ),
    target="instruction and its answer",
    criteria=(
        *(f"Instruction - {text}" for text in INSTRUCTION_CRITERIA),
        *(f"Answer - {text}" for text in ANSWER_CRITERIA),
        "Cause: how did the weaknesses of the instruction lead to the weaknesses of the answer?",
    ),
    task=(
        "Then, building on your critique, write a new instruction that is more complex and asks "
        "for more depth, so that it cannot be answered directly in a line or two. Keep it relevant "
        "to the original topic but make it self-contained: someone who never saw the original "
        "must be able to answer it (put any input text it needs inside it). Then answer the new "
        "instruction as thoroughly and correctly as you can."
    ),
    outputs=(NEW_INSTRUCTION, NEW_ANSWER),
    examples=(
        Example(
            sample={
                "instruction": "Classify the sentiment.",
                "input": "The battery died after two days, but support replaced it fast.",
                "output": "Negative",
            },
            feedback=(
                "Instruction: no labels given, no reasoning asked. Answer: a bare label that "
                "misses the praise. The vague task invited a one-word answer."
            ),
            outputs={
                "new_instruction": (
                    "Label this review as positive, negative or mixed, name the phrase behind "
                    "each sentiment, and say which one a product team should act on first and "
                    'why. Review: "The battery died after two days, but support replaced it fast."'
                ),
                "new_answer": (
                    "Mixed. Negative: 'the battery died after two days' (a product defect). "
                    "Positive: 'support replaced it fast' (good service). Act on the battery "
                    "first: fast support repairs one customer, a defect hits every customer."
                ),
            },
        ),
        Example(
            sample={
                "instruction": "Give three tips for staying healthy.",
                "input": "",
                "output": "Eat well, exercise and sleep.",
            },
            feedback=(
                "Instruction: an easy, broad topic with no detail asked. Answer: correct but "
                "generic. The broad task invited a generic list."
            ),
            outputs={
                "new_instruction": (
                    "An office worker sits nine hours a day and sleeps six. Propose three "
                    "habits that fit a working day, explain how each one helps the body, "
                    "and order them by impact."
                ),
                "new_answer": (
                    "1. Sleep seven to eight hours: too little sleep raises appetite and lowers "
                    "focus, so it undermines everything else.\n2. Stand and walk five minutes "
                    "every hour: long sitting slows blood flow and stiffens the back.\n3. Eat "
                    "vegetables and protein at lunch: fibre and protein keep energy steady "
                    "through the afternoon."
                ),
            },
        ),
    ),
)

FAITHFUL_RESPONSE = PhaseSpec(
    name="response",
    style="faithful",
    system=FAITHFUL_SYSTEM,
    critique_first=True,
    critique=OutputField(CRITIQUE_KEY, "Critique", "your critique of the answer on each criterion"),
    target="answer",
    criteria=ANSWER_CRITERIA,
    task=(
        "Then, building on your critique, write a better answer to the same instruction: new and "
        "complete, correct, and as detailed as the instruction deserves."
    ),
    outputs=(BETTER_ANSWER,),
    examples=(
        Example(
            sample={
                "instruction": "What causes the seasons on Earth?",
                "input": "",
                "output": "The Earth is closer to the Sun in summer.",
            },
            feedback=(
                "Helpful: barely. Relevant: yes. Accurate: no, distance is not the cause. "
                "Detail: one line for a question that needs an explanation."
            ),
            outputs={
                "better_answer": (
                    "The tilt of Earth's axis, about 23.5 degrees. The hemisphere tilted "
                    "towards the Sun gets steeper sunlight and longer days, so it warms: summer. "
                    "Six months later it is tilted away: winter. Distance matters little; Earth "
                    "is in fact closest to the Sun in early January, during northern winter."
                ),
            },
        ),
        Example(
            sample={
                "instruction": "Convert the temperature to Fahrenheit.",
                "input": "25 C",
                "output": "77",
            },
            feedback=(
                "Helpful and accurate, but no unit and no working: the user cannot check it "
                "or convert the next value."
            ),
            outputs={
                "better_answer": (
                    "25 °C is 77 °F. Multiply by 9/5 and add 32: 25 × 9/5 = 45, 45 + 32 = 77."
                ),
            },
        ),
    ),
)

PROMPT_STYLES: dict[str, dict[str, PhaseSpec]] = {
    "faithful": {"instruction": FAITHFUL_INSTRUCTION, "response": FAITHFUL_RESPONSE},
    "concise": {"instruction": CONCISE_INSTRUCTION, "response": CONCISE_RESPONSE},
}
ALL_PHASES: tuple[PhaseSpec, ...] = tuple(p for s in PROMPT_STYLES.values() for p in s.values())


def phase_for(style: str, name: str, response_format: str = "plain") -> PhaseSpec:
    """The wording of phase ``name`` (instruction | response) in ``style``; with
    ``response_format`` reflection the response phase asks for a Reflection-format answer
    (``reflection_wording``). The instruction phase is the same in both formats."""
    phase = PROMPT_STYLES[style][name]
    if response_format == "reflection" and name == "response":
        from rtune.components.teacher.reflection_wording import reflection_phase

        return reflection_phase(phase)
    return phase

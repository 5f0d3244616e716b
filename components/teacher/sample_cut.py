"""Cut an over-long sample to the teacher's budget before it is sent, as the reference does.

The reference counts the tokens of instruction + input + answer (joined with nothing between)
and, when they exceed its budget (2048), shortens the *answer* by the overflow; the instruction is
never cut, since the teacher must see what it rewrites. It removes as many characters as there
were surplus tokens; we remove the surplus *tokens* (the longest prefix of the answer that fits),
which is what the budget means. The record itself keeps its whole answer: only the teacher's view
is cut, and the record says by how many tokens.

Tokens are counted by the backend's own tokenizer when it has one (``count_tokens``); an
OpenAI-compatible server exposes none, so there a token is taken as four characters (the usual
rule of thumb for English text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

TokenCounter = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """About four characters a token, rounded up."""
    return -(-len(text) // 4)


def token_counter(teacher: object) -> TokenCounter:
    """The backend's ``count_tokens`` if it has one, else ``approx_tokens``."""
    count = getattr(teacher, "count_tokens", None)
    return count if callable(count) else approx_tokens


def cut_to_budget(
    sample: Mapping[str, str], budget: int, count: TokenCounter
) -> tuple[dict[str, str], int]:
    """``(sample the teacher sees, answer tokens removed)``: the answer shortened to the longest
    prefix with which instruction + input + answer fit ``budget`` tokens (empty if even the
    instruction alone is over it)."""
    whole = dict(sample)
    head = whole["instruction"] + whole.get("input", "")
    answer = whole["output"]
    if count(head + answer) <= budget:
        return whole, 0
    low, high = 0, len(answer)  # the longest fitting prefix length is in [low, high)
    while low < high:
        middle = (low + high + 1) // 2
        if count(head + answer[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    kept = answer[:low].rstrip()
    return {**whole, "output": kept}, max(0, count(answer) - count(kept))

"""The context of an assistant turn: what the model has read when it writes it, and the turns that cannot be trained.

A conversation may open with an assistant turn (ShareGPT/Vicuna rows starting with a `gpt` greeting). Its context
is what the template writes before it: the empty conversation rendered with the generation prompt, or, for templates
that cannot render an empty conversation (Qwen2.5's and Llama 3.1's read `messages[0]`), the rendered turn up to the
first generation prompt in it, which holds the template's preamble (Qwen2.5's default system block, Llama 3.1's date
block). A candidate is accepted only when the turn written after it is what the template trains for the same turn
after a user message; otherwise the row is an error with its fixes. An empty context ("") trained the preamble and
the header as the answer.

A trained assistant turn with nothing in it (no text, tool calls or reasoning) is an error: it would teach only the
end of turn.
"""

from __future__ import annotations

from collections.abc import Callable

from tunekit.data.templates import shown
from tunekit.data.turns import PROBE, _memo, _probe, split_reasoning, turn_example
from tunekit.errors import UserError

Render = Callable[..., str]


def _label(render: Render) -> str:
    return getattr(render, "template_name", "the chat template")


def _ordinal(messages: list[dict], i: int) -> str:
    """Assistant turn i named for a user: its place among the assistant turns, and the question it answers."""
    n = sum(m["role"] == "assistant" for m in messages[: i + 1])
    asked = next((m["content"] for m in reversed(messages[:i]) if m["role"] == "user"
                  and isinstance(m.get("content"), str)), None)
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n if n < 20 else n % 10, "th")
    return f"the {n}{suffix} assistant turn" + (f" (the answer to `{asked.strip()[:40]}`)" if asked else
                                               " (it opens the conversation)" if n == 1 and
                                               all(m["role"] == "system" for m in messages[:i]) else "")


def check_not_empty(messages: list[dict], turns: list[int], where: str) -> None:
    """A trained assistant turn must have something to train: text, tool calls or reasoning. An empty one would
    teach only the end-of-turn token (stop at once), counted nowhere; untrained (context) empty turns are fine."""
    for i in turns:
        m = messages[i]
        if not m.get("tool_calls") and not any(part.strip() for part in split_reasoning(m)):
            raise UserError(
                f"{where}: {_ordinal(messages, i)} is empty (no text: an empty `content`, alpaca `output` or "
                "ShareGPT `value`; no tool calls or reasoning), so training it would teach the model only to end its "
                "turn at once. Remove the row (or that turn), fill in the answer, or mark the turn `train: false` (it "
                "is then context).")


def context(render: Render, messages: list[dict], i: int, tools: list | None, where: str) -> str:
    """What the model has read when it writes assistant turn i: messages[:i] rendered with the generation prompt;
    for a conversation opening with the assistant, what the template writes before it (`opening_context`)."""
    if i:
        before = render(messages[:i], add_generation_prompt=True, tools=tools)
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        if isinstance(system, str) and not shown(system.strip(), before):
            raise UserError(
                f"{where}: {_label(render)} does not render the system message before {_ordinal(messages, i)}: it "
                "puts the system text into the first user turn, and this conversation has none before the "
                "assistant's, so the system text would be trained as part of the answer or lost. Remove the "
                "opening assistant turn, mark it `train: false` (it is then context), or choose a template with a "
                "system turn (data.chat_template).")
        return before
    opening = opening_context(render, messages, tools)
    if opening is None:
        raise UserError(
            f"{where}: the conversation opens with an assistant turn, and {_label(render)} writes nothing before it "
            "that matches what it writes before an answer to a user message (its header and preamble, e.g. a default "
            "system prompt), so those would be trained as the answer. Remove the opening assistant turn (a ShareGPT "
            "greeting), or mark it `train: false` (it is then context for the turns after it).")
    return opening


def _generation_prompt(render: Render) -> str:
    """What the template writes after a user turn to open the assistant's (its generation prompt), from a probe
    conversation; "" when that is not a plain suffix."""

    def compute() -> str:
        user = [{"role": "user", "content": PROBE}]
        plain, prompt = _probe(render, user), _probe(render, user, add_generation_prompt=True)
        return prompt[len(plain):] if plain and prompt.startswith(plain) else ""

    return _memo(render, "generation_prompt", compute)  # type: ignore[return-value]


def _opening_candidates(render: Render, tools: list | None, upto: str) -> list[str]:
    """Contexts for an assistant turn that opens the conversation: the empty conversation rendered with the
    generation prompt; the rendered turn up to (and with) the first generation prompt in it (Qwen2.5's and Llama
    3.1's templates cannot render an empty conversation, and write their default system block before any turn)."""
    out = []
    try:
        out.append(render([], add_generation_prompt=True, tools=tools))
    except UserError:  # the template reads messages[0]
        pass
    prompt = _generation_prompt(render)
    if prompt and prompt in upto:
        out.append(upto[: upto.index(prompt) + len(prompt)])
    return [c for c in dict.fromkeys(out) if c]


def opening_context(render: Render, messages: list[dict], tools: list | None) -> str | None:
    """The context of assistant turn 0 (a conversation opening with the assistant: ShareGPT's `gpt` greetings):
    what the template writes before it, so that the header and any preamble (Qwen2.5's default system block,
    Llama 3.1's date block) are context, not trained. A candidate (`_opening_candidates`) is accepted when the turn
    written after it is what the template trains for the same turn after a user message, or its end (Qwen3 writes
    its empty think block only after a user's question); None when none is."""
    upto = render(messages[:1], tools=tools)
    try:
        after_user = turn_example(render, [{"role": "user", "content": PROBE}, messages[0]], 1, tools)
    except UserError:  # the template refuses a user turn before this one
        return None
    if after_user is None:
        return None
    reference = after_user[0][after_user[1]:]
    for before in _opening_candidates(render, tools, upto):
        example = turn_example(render, messages, 0, tools, before)
        trained = example[0][example[1]:] if example is not None and example[1] == len(before) else None
        if trained is not None and (trained == reference or (reference.endswith(trained)
                                                             and _holds_turn(trained, messages[0]))):
            return before
    return None


def _holds_turn(text: str, m: dict) -> bool:
    """`text` has assistant turn `m`'s answer and the names of the functions it calls."""
    answer = split_reasoning(m)[1].strip()
    return answer in text and all(c["function"]["name"] in text for c in m.get("tool_calls") or ())

"""`tunekit chat TARGET`: talk to a trained run, a model directory or a hub model, with the chat template it
trained with (a run's final/ tokenizer) and streamed output.

Interactive: each line is a user turn; `/reset` clears the conversation, `/system TEXT` sets the system prompt
(and resets), `/exit` (or end of input) quits. `--prompt TEXT` answers once and exits, for scripts. The reply
goes to stdout; the banner and prompts to stderr, so `tunekit chat RUN --prompt ... > answer.txt` holds the reply.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from tunekit.data.formats import read_tools
from tunekit.data.templates import tokenizer_renderer
from tunekit.errors import UserError
from tunekit.targets import load_tokenizer_for, load_tuned, resolve_target
from tunekit.ui import console

HELP = "commands: /reset (new conversation), /system TEXT (set the system prompt), /exit"


@dataclass
class Generation:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int = 0


@dataclass
class Session:
    model: Any
    tokenizer: Any
    settings: Generation
    system: str | None = None
    history: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None  # tool schemas rendered by the chat template (`--tools`, or the run's data)

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def reply(self, text: str, out: TextIO) -> str:
        """Add a user turn, stream the answer to `out`, keep it in the history."""
        import torch
        from transformers import TextStreamer

        self.history.append({"role": "user", "content": text})
        try:
            prompt = tokenizer_renderer(self.tokenizer)(self.messages(), add_generation_prompt=True, tools=self.tools)
        except UserError as e:  # e.g. a base tokenizer without a chat template, or the template refused
            self.history.pop()
            raise UserError(f"chat: {e}") from None
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = _Streamer(self.tokenizer, out) if out is not sys.stdout else TextStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        s = self.settings
        sample = s.temperature > 0
        torch.manual_seed(s.seed)
        with torch.no_grad():
            ids = self.model.generate(**enc, streamer=streamer, max_new_tokens=s.max_new_tokens, do_sample=sample,
                                      temperature=s.temperature if sample else None,
                                      top_p=s.top_p if sample else None, repetition_penalty=s.repetition_penalty,
                                      pad_token_id=self.tokenizer.pad_token_id)
        answer = self.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer


def _Streamer(tokenizer: Any, out: TextIO) -> Any:  # noqa: N802 - a TextStreamer writing to `out`
    from transformers import TextStreamer

    class ToStream(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return ToStream(tokenizer, skip_prompt=True, skip_special_tokens=True)


def load_session(target: str, settings: Generation, system: str | None, tools: str | None = None) -> Session:
    """`tools`: a JSON/YAML file of tool schemas; without it, a run whose training data had a `tools:` file chats
    with those tools (the prompt the model trained with)."""
    t = resolve_target(target)
    tokenizer = load_tokenizer_for(t)
    console.print(f"chat: {t.label} ({t.kind}{', base ' + t.model_cfg.path if t.kind == 'adapter' else ''})")
    if t.note:
        console.print(f"weights: {t.weights} ({t.note})")
    trained_with = next((s.tools for s in t.recipe.data.train if s.tools), None) if t.recipe is not None else None
    source = tools or trained_with
    try:
        schemas = read_tools(source) if source else None
    except UserError as e:  # read_tools names a dataset's `tools:` file; here the file came from --tools
        raise UserError(str(e).replace("data: tools file", "--tools: file", 1) if tools else str(e)) from None
    if schemas:
        probe = [{"role": "user", "content": "hi"}]
        if tokenizer.apply_chat_template(probe, tools=schemas, tokenize=False) == \
                tokenizer.apply_chat_template(probe, tokenize=False):
            raise UserError(f"--tools: the chat template of {t.label} ignores tool schemas, so the model would "
                            "never see them; chat with a run trained with a tool-capable template (e.g. "
                            "data.chat_template: qwen2.5)")
        names = ", ".join(s["function"]["name"] for s in schemas)
        console.print(f"tools: {names} (from {source}{'' if tools else ', the run’s training data'})")
    return Session(load_tuned(t).eval(), tokenizer, settings, system, tools=schemas)


def run(session: Session, prompt: str | None, lines: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    """One answer for `prompt`, or the interactive loop reading `lines` (a terminal or piped input)."""
    if prompt is not None:
        session.reply(prompt, out)
        return
    interactive = lines.isatty()
    console.print(HELP)
    while True:
        if interactive:
            console.print("[bold]you>[/] ", end="")
        line = lines.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset" or text.startswith("/system"):
            session.history.clear()
            if text.startswith("/system"):
                session.system = text[len("/system"):].strip() or None
            console.print(f"(new conversation{'; system: ' + session.system if session.system else ''})")
            continue
        if text.startswith("/"):
            console.print(f"unknown command {text.split()[0]}; {HELP}")
            continue
        if interactive:
            console.print("[bold]model>[/] ", end="")
        session.reply(text, out)

"""Eval tasks: read a task's rows, then score a model on them.

Kinds: `loss` (mean loss and perplexity over the tokens training would train, same mask), `generate`
(batched generation, answers scored by the metrics in metrics.py, k samples for pass@k / majority),
`multiple_choice` (the option with the highest log-likelihood wins), `lm_eval` (lm-evaluation-harness,
only when it is installed). `SHIPPED` maps names usable with `tunekit eval --task NAME` to task configs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.data.formats import FORMATS
from tunekit.data.masking import tokenize_with_mask
from tunekit.data.messages import Conversation
from tunekit.data.schema import DatasetSpec
from tunekit.data.sources import read_rows
from tunekit.data.templates import generation_prompts, special_token_texts
from tunekit.data.turns import THINK_CLOSE, THINK_OPEN
from tunekit.errors import UserError, did_you_mean
from tunekit.eval import calls
from tunekit.eval.calls import canonical_calls
from tunekit.eval.metrics import score_samples
from tunekit.eval.schema import EvalTask
from tunekit.methods.interventions import labels_for_positions
from tunekit.ui import console

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

QA_METRICS = ["numeric_match", "exact_match", "contains", "regex", "token_f1", "rouge_l"]
SHIPPED: dict[str, dict] = {
    "quickstart-loss": {"kind": "loss", "data": {"path": "builtin:quickstart/eval.jsonl", "format": "messages"}},
    "quickstart-arith": {"kind": "generate", "data": {"path": "builtin:eval/arith-qa.jsonl", "format": "qa"},
                         "metrics": QA_METRICS, "generation": {"max_new_tokens": 16}},
    "quickstart-choice": {"kind": "multiple_choice",
                          "data": {"path": "builtin:eval/arith-choice.jsonl", "format": "choice"}},
}


def shipped_task(name: str) -> EvalTask:
    if name.startswith("lm_eval:"):
        return EvalTask(name=name, kind="lm_eval", lm_eval_task=name.split(":", 1)[1])
    if name not in SHIPPED:
        raise UserError(f"--task: no shipped task `{name}`.{did_you_mean(name, SHIPPED)} Shipped: {', '.join(SHIPPED)}; "
                        "or `lm_eval:TASK` for lm-evaluation-harness")
    return EvalTask(name=name, **SHIPPED[name])


@dataclass
class Example:
    prompt: list[dict]  # chat messages before the answer (a Conversation carrying the row's tool schemas, if any)
    answer: str  # the reference text generation is scored against
    choices: list[str] = field(default_factory=list)
    label: int = -1  # index of the right choice
    reply: dict | None = None  # the reference assistant turn itself (tool calls kept), for the loss
    where: str = ""  # the row (file:line), for errors

    def conversation(self, answer: str | None = None) -> Conversation:
        """The prompt plus the reference turn (or `answer` as the assistant's reply), with the prompt's tools."""
        turn = self.reply if answer is None and self.reply else {"role": "assistant", "content": answer or self.answer}
        return Conversation.of([*self.prompt, turn], getattr(self.prompt, "tools", None))


def _col(row: dict, key: str, columns: dict[str, str], where: str) -> Any:
    col = columns.get(key, key)
    if col not in row:
        raise UserError(f"{where}: missing {key} field `{col}`; found: {', '.join(sorted(row)) or 'nothing'}. "
                        f"Map it with `columns: {{{key}: YOUR_COLUMN}}` under the task's `data:` in a recipe's "
                        "`eval.tasks`, or rename the column in the file (`--task-file` reads the names as they are).")
    return row[col]


def answer_text(m: dict) -> str:
    """The reference text of an assistant turn: its content, then each tool call as a `<tool_call>` JSON block (the
    Hermes/Qwen format), so a tool-call turn has a target a generation metric can check."""
    calls = [f'<tool_call>\n{json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})}'
             "\n</tool_call>" for c in m.get("tool_calls", ())]
    return "\n".join([m["content"], *calls] if m["content"] else calls)


def parse_row(row: dict, fmt: str, columns: dict[str, str], where: str, tools: str | None = None) -> Example:

    if fmt in FORMATS:
        # Training formats parse exactly as in training (same column mapping and checks).
        msgs = FORMATS[fmt](row, DatasetSpec(path="-", format=fmt, columns=columns, tools=tools), where)
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        return Example(Conversation.of(msgs[:last], getattr(msgs, "tools", None)), answer_text(msgs[last]),
                       reply=msgs[last])
    text = _col(row, "prompt", columns, where)
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: `{columns.get('prompt', 'prompt')}` must be a non-empty string, found {text!r:.60}")
    prompt = [{"role": "user", "content": text}]
    answer = _col(row, "answer", columns, where)
    if fmt == "qa":
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise UserError(f"{where}: `{columns.get('answer', 'answer')}` must be a non-empty string or a number, "
                            f"found {answer!r:.60}")
        return Example(prompt, str(answer))
    choices = _col(row, "choices", columns, where)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: `choices` must be a list of at least two strings")
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(choices):
            raise UserError(f"{where}: answer index {answer} is out of range for {len(choices)} choices")
        label = answer
    elif isinstance(answer, str) and answer in choices:
        label = choices.index(answer)
    else:
        raise UserError(f"{where}: answer must be a choice index or one of the choices, found {answer!r}")
    return Example(prompt, choices[label], choices, label)


def read_examples(task: EvalTask) -> list[Example]:

    assert task.data is not None

    loaded = read_rows(DatasetSpec(path=task.data.path, format="messages"))  # format is not used to read
    n = task.max_examples or len(loaded.rows)
    examples = [parse_row(r, task.data.format, task.data.columns, where, task.data.tools)
                for r, where in zip(loaded.rows[:n], loaded.where[:n])]
    for e, where in zip(examples, loaded.where[:n]):
        e.where = where
    if task.kind == "generate" and any(m.startswith("tool_call_") for m in task.metrics):
        check_reference_calls(task, examples)
    return examples


def check_reference_calls(task: EvalTask, examples: list[Example]) -> None:
    """A reference that marks a tool call the metrics cannot read would score a prediction without calls as right
    (`tool_call_format`): an error naming the row, before any model loads."""
    for e in examples:
        if (bad := calls.unreadable_call(e.answer)) is not None:
            field = (f"`{task.data.columns.get('answer', 'answer')}`" if task.data and task.data.format == "qa"
                     else "the last assistant turn")
            raise UserError(
                f"{e.where}: eval task `{task.name}` scores tool calls, but the reference answer ({field}) marks a call "
                f"that does not read as one: {bad[:120]!r}. Write each call as `<tool_call>{{\"name\": ..., "
                '"arguments": {...}}</tool_call>` (JSON or a Python dict), or give the assistant turn `tool_calls`; '
                "otherwise the task scores a prediction without any call as right")


# ------------------------------------------------------------------------------------------------ scoring


def progress(label: str, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                 transient=True)
    return p, p.add_task(label, total=total)


def sequence_logprobs(model: Any, tokenizer: Any, encs: list[dict], batch_size: int, label: str) -> list[tuple]:
    """(sum of log-probs, number of scored tokens) per encoded sequence; only tokens with mask 1 count."""
    import torch

    device = next(model.parameters()).device
    out: list[tuple] = []
    bar, tid = progress(label, len(encs))
    with bar, torch.no_grad():
        for start in range(0, len(encs), batch_size):
            batch = encs[start : start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for i, e in enumerate(batch):
                n = len(e["input_ids"])
                ids[i, :n] = torch.tensor(e["input_ids"])
                attn[i, :n] = 1
                mask[i, :n] = torch.tensor(e["mask"], dtype=torch.bool)
            # the scored tokens, for methods that place themselves by them (LoReFT's `last` prompt positions);
            # handed over beside the call, so the model computes no loss of its own
            with labels_for_positions(model, ids.masked_fill(~mask, -100)):
                logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
            logits = logits[:, -ids.shape[1]:]  # prompt tuning / p-tuning put their virtual tokens' logits first
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = ids[:, 1:].to(device)
            tok_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * mask[:, 1:].to(device)
            sums, counts = tok_lp.sum(-1).tolist(), mask[:, 1:].sum(-1).tolist()
            out.extend(zip(sums, counts))
            bar.update(tid, advance=len(batch))
    return out


def encode(tokenizer: Any, messages: list[dict], max_length: int, where: str, train_on: str = "assistant") -> dict:

    enc = tokenize_with_mask(tokenizer, messages, train_on, where)
    return {"input_ids": enc["input_ids"][:max_length], "mask": enc["mask"][:max_length]}


def run_loss(task: EvalTask, model: Any, tokenizer: Any, ctx: dict) -> dict:
    examples = read_examples(task)
    encs = [encode(tokenizer, e.conversation(), ctx["max_length"], task.name, ctx.get("train_on", "assistant"))
            for e in examples]
    return loss_result(task, sequence_logprobs(model, tokenizer, encs, ctx["batch_size"],
                                               f"{task.name} ({ctx['which']})"), ctx)


def loss_result(task: EvalTask, res: list[tuple], ctx: dict) -> dict:
    """Mean loss over the scored tokens; rows left with none (their answer cut by max_length) are counted apart
    and reported, not counted as scored rows; a task with none scored is an error."""
    tokens = sum(c for _, c in res)
    empty = sum(1 for _, c in res if c == 0)
    if tokens == 0:
        raise UserError(f"eval task `{task.name}`: no row has a scored token within max_length {ctx['max_length']} "
                        "(every answer was cut off); raise data.max_length or shorten the prompts")
    if empty:
        console.print(f"[yellow]eval task `{task.name}`: {empty} of {len(res)} rows have no scored token within "
                      f"max_length {ctx['max_length']} (their answers were cut off); left out of the loss[/]")
    loss = -sum(s for s, _ in res) / tokens
    return {"n": len(res) - empty, "metrics": {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                                               "tokens": float(tokens)},
            **({"rows_without_tokens": empty} if empty else {})}


def run_heldout_loss(task: EvalTask, model: Any, tokenizer: Any, ctx: dict) -> dict:
    """Loss and perplexity on the run's own eval split, rebuilt by its data stage (the same seed, so the same
    hold-out rows; unpacked: per-document loss is what packed training computes too) and its training mask."""
    recipe = ctx.get("recipe")
    if recipe is None or recipe.trainer.kind != "sft" or not (recipe.data.eval or recipe.data.eval_fraction):
        raise UserError(f"eval task `{task.name}`: kind heldout_loss needs an SFT run whose recipe has data.eval or "
                        "data.eval_fraction; give the task data and kind `loss` instead")
    cache = ctx.setdefault("cache", {})
    if "heldout" not in cache:  # built once, for the tuned and the base model
        from tunekit.data.build import build_datasets

        check_run_data(recipe, ctx.get("run_dir"))
        data = recipe.data.model_copy(update={"packing": False, "padding_free": False})
        _, cache["heldout"], _ = build_datasets(data, tokenizer, recipe.trainer.seed)
    rows = cache["heldout"]
    if task.max_examples:
        rows = rows.select(range(min(task.max_examples, len(rows))))
    encs = [{"input_ids": r["input_ids"][: ctx["max_length"]],
             "mask": [lab != -100 for lab in r["labels"][: ctx["max_length"]]]} for r in rows]
    return loss_result(task, sequence_logprobs(model, tokenizer, encs, ctx["batch_size"],
                                               f"{task.name} ({ctx['which']})"), ctx)


def check_run_data(recipe: Recipe, run: Path | None) -> None:
    """The files a run's hold-out is rebuilt from must be the ones it trained with (data.json's sha256): its
    recipe keeps relative paths, which resolve against the current directory, not the one it was trained in."""
    from tunekit.data.cache import source_fingerprints

    record = run / "data.json" if run is not None else None
    if record is None or not record.is_file():
        return
    recorded = json.loads(record.read_text()).get("files", {})
    used = recipe.data.model_copy(update={"train": recipe.data.eval or recipe.data.train, "eval": []})
    hint = (f"its relative paths resolve against the current directory ({Path.cwd()}): run tunekit eval from the "
            "directory the run was trained in, or give the data with --task-file")
    try:
        now = source_fingerprints(used)
    except UserError as e:
        raise UserError(f"{run}: the run's data cannot be read ({e}); {hint}") from None

    def digests(v: Any) -> Any:
        return sorted(v.values()) if isinstance(v, dict) else v

    changed = [k for k, v in now.items() if k in recorded and digests(v) != digests(recorded[k])]
    if changed:
        raise UserError(f"{run}: the run's data `{changed[0]}` is not what it was trained with (sha256 differs from "
                        f"{record}); {hint}")


def run_multiple_choice(task: EvalTask, model: Any, tokenizer: Any, ctx: dict) -> dict:
    examples = read_examples(task)
    encs = [encode(tokenizer, e.conversation(c), ctx["max_length"], task.name)
            for e in examples for c in e.choices]
    res = iter(sequence_logprobs(model, tokenizer, encs, ctx["batch_size"], f"{task.name} ({ctx['which']})"))
    acc = acc_norm = 0
    samples = []
    for e in examples:
        scores = [next(res) for _ in e.choices]
        if any(c == 0 for _, c in scores):
            raise UserError(f"{e.where}: a choice has no scored token within max_length {ctx['max_length']} (cut off), "
                            "so it would score probability 1 and win; raise data.max_length or shorten the prompt")
        best = max(range(len(scores)), key=lambda i: scores[i][0])
        best_norm = max(range(len(scores)), key=lambda i: scores[i][0] / max(scores[i][1], 1))
        acc += best == e.label
        acc_norm += best_norm == e.label
        samples.append({"prompt": e.prompt[-1]["content"], "reference": e.answer, "prediction": e.choices[best]})
    n = len(examples)
    return {"n": n, "metrics": {"accuracy": acc / n, "accuracy_norm": acc_norm / n}, "samples": samples}


def prompt_texts(tokenizer: Any, prompts: list[list[dict]]) -> list[str]:
    """Each prompt rendered by the chat template up to the assistant's turn, with its tool schemas, if any."""
    return generation_prompts(tokenizer, prompts)


def generate(model: Any, tokenizer: Any, texts: list[str], gen: Any, batch_size: int, label: str) -> list:
    """k completions per rendered prompt (list of lists of (raw, clean) texts: decoded with and without special
    tokens), batched with left padding."""
    import torch

    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    sample = gen.temperature > 0
    kwargs = dict(max_new_tokens=gen.max_new_tokens, do_sample=sample, num_return_sequences=gen.num_samples,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    kwargs.update(temperature=gen.temperature, top_p=gen.top_p) if sample else kwargs.update(
        temperature=None, top_p=None, top_k=None)
    out: list[list[str]] = []
    bar, tid = progress(label, len(texts))
    try:
        torch.manual_seed(gen.seed)
        with bar, torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                seqs = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1] :]
                clean = [d.strip() for d in tokenizer.batch_decode(seqs, skip_special_tokens=True)]
                pairs = list(zip(tokenizer.batch_decode(seqs, skip_special_tokens=False), clean))
                k = gen.num_samples
                out.extend(pairs[i * k : (i + 1) * k] for i in range(len(chunk)))
                bar.update(tid, advance=len(chunk))
    finally:
        tokenizer.padding_side = side
    return out


HARMONY_FINAL, HARMONY_CHANNEL = "<|channel|>final<|message|>", "<|channel|>"  # gpt-oss's answer channel


def final_answer(raw: str, clean: str, prompt: str, specials: list[str], tools: list | None = None) -> str:
    """What a generated output answers (`raw`: decoded with special tokens, `clean`: without), with its tool calls
    in the canonical `<tool_call>` form (calls.py; `tools`: the row's schemas): the text of gpt-oss's final channel
    (or its tool calls), or the text after a reasoning block (`<think>...</think>`, opened by the model or by the
    generation prompt, as DeepSeek-R1's `<think>\\n`), without special tokens; "" when the reasoning never reached
    an answer (cut off by max_new_tokens: no answer, rather than a number picked out of the reasoning); else `clean`
    (or, when it writes native calls, `raw` without special tokens). Markers and native calls are looked for in
    `raw`, where a tokenizer that marks them special still has them."""
    for marker in (HARMONY_FINAL, THINK_CLOSE):
        if marker in raw:
            return canonical_calls(raw.rsplit(marker, 1)[1], tools, specials).strip()
    if calls.HARMONY.search(raw):  # gpt-oss's tool call has no final channel: the answer is the call
        return calls.native_calls_only(raw, tools)
    if HARMONY_CHANNEL in raw or THINK_OPEN in raw or prompt.rstrip().endswith(THINK_OPEN):
        return ""
    return canonical_calls(raw, tools, specials).strip() if calls.native_spans(raw, tools) else clean


def run_generate(task: EvalTask, model: Any, tokenizer: Any, ctx: dict) -> dict:

    examples = read_examples(task)
    prompts = prompt_texts(tokenizer, [e.prompt for e in examples])
    outputs = generate(model, tokenizer, prompts, task.generation, ctx["batch_size"], f"{task.name} ({ctx['which']})")
    specials = special_token_texts(tokenizer)
    preds = [[final_answer(raw, clean, p, specials, getattr(e.prompt, "tools", None)) for raw, clean in outs]
             for e, outs, p in zip(examples, outputs, prompts)]
    totals: dict[str, float] = {}
    samples = []
    for e, k_preds, outs in zip(examples, preds, outputs):
        for metric in task.metrics:
            for key, v in score_samples(k_preds, e.answer, metric, task.regex).items():
                totals[key] = totals.get(key, 0.0) + v
        samples.append({"prompt": e.prompt[-1]["content"], "reference": e.answer, "prediction": k_preds[0],
                        **({"output": outs[0][0]} if outs[0][1] != k_preds[0] else {}),
                        **({"samples": k_preds} if len(k_preds) > 1 else {})})
    n = len(examples)
    return {"n": n, "metrics": {k: v / n for k, v in totals.items()}, "samples": samples}


def run_lm_eval(task: EvalTask, model: Any, tokenizer: Any, ctx: dict) -> dict:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UserError(f"eval task `{task.name}`: kind lm_eval needs lm-evaluation-harness, which is not "
                        "installed: pip install lm-eval") from None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=ctx["batch_size"])
    res = lm_eval.simple_evaluate(model=lm, tasks=[task.lm_eval_task], limit=task.max_examples)
    got = res["results"][task.lm_eval_task]
    metrics = {k.split(",")[0]: float(v) for k, v in got.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in k}
    return {"n": int(res.get("n-samples", {}).get(task.lm_eval_task, {}).get("effective", 0)), "metrics": metrics}


RUNNERS: dict[str, Callable[[EvalTask, Any, Any, dict], dict]] = {
    "loss": run_loss,
    "heldout_loss": run_heldout_loss,
    "generate": run_generate,
    "multiple_choice": run_multiple_choice,
    "lm_eval": run_lm_eval,
}

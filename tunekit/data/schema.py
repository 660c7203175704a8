"""The `data:` section of a recipe."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from tunekit.recipe.base import PathStr, Section

# The one list of data formats (each has a reader in formats.py or preference.py).
FormatName = Literal["alpaca", "messages", "sharegpt", "prompt_completion", "text", "preference", "unpaired_preference",
                     "prompt_answer"]
FORMATS: tuple[str, ...] = typing.get_args(FormatName)
# Formats only the preference / RL trainers read; every other format is an SFT format.
NON_SFT_FORMATS = ("preference", "unpaired_preference", "prompt_answer")
# Formats whose rows may come with tool schemas (a `tools` column, or a dataset's `tools:` file).
TOOL_FORMATS = ("messages", "sharegpt", "prompt_completion", "alpaca", "preference", "unpaired_preference")
# The columns each format requires (before a dataset's `columns:` renaming): how a JSON file holding one
# object tells "this object is one row" from "this object wraps the rows".
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"), "messages": ("messages",), "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"), "text": ("text",), "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label"), "prompt_answer": ("question", "answer", "solution"),
}

# Every column each format reads (what `columns:` may rename): the required ones, then the optional ones.
COLUMN_KEYS: dict[str, tuple[str, ...]] = {
    "alpaca": (*ROW_KEYS["alpaca"], "input", "system", "history", "tools"),
    "text": ROW_KEYS["text"],
    **{f: (*ROW_KEYS[f], "system", "tools") for f in ROW_KEYS if f not in ("alpaca", "text")},
}


class DatasetSpec(Section):
    path: PathStr = Field(
        description="Where the rows come from: a local file (.jsonl, .json, .csv, .parquet, .arrow), a glob of such "
        "files (`data/*.jsonl`), a directory written by `datasets.save_to_disk`, `builtin:NAME/FILE` for data "
        "shipped with tunekit, or `hub:ORG/NAME` for a Hugging Face Hub dataset. Relative paths resolve against "
        "the current directory."
    )
    format: FormatName = Field(
        description="Row layout. `alpaca`: {instruction, input?, output, system?, history?, tools?}. `messages`: {messages: "
        "[{role, content}, ...]} with roles system/user/assistant/tool. `sharegpt`: {conversations: [{from, value}]} "
        "(see `roles`). `prompt_completion`: {prompt, completion, system?, tools?}, strings or TRL's conversational form (a "
        "prompt of messages, completion messages or a string; only the completion trained). `text`: {text} for continued pre-training "
        "(every token trained, EOS appended). `preference` (dpo/orpo/cpo/kto): {prompt, chosen, rejected, system?, "
        "tools?}. `unpaired_preference` (kto): {prompt, completion, label: true|false, system?, tools?}. "
        "`prompt_answer` (reft): {question, answer, solution, system?} (solution: a reasoning path ending in "
        "`#### answer`)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename columns to the names the format expects, e.g. {instruction: question, output: answer}.",
    )
    roles: dict[str, str] = Field(
        default_factory=dict,
        description="sharegpt only: map `from` values to roles, merged over the default "
        "{system: system, human: user, user: user, gpt: assistant, assistant: assistant, tool: tool}.",
    )
    system: str | None = Field(
        default=None, description="A system prompt added to every row that has none of its own (a `system` column "
        "or a first system message): every format but `text`; preference formats add it to the prompt."
    )
    tools: PathStr | None = Field(
        default=None,
        description="A JSON or YAML file of tool (function) schemas given to the chat template (`tools=`) for every "
        "row of this dataset that has no `tools` column of its own: a list in OpenAI shape ({type: function, "
        "function: {name, description, parameters}}) or bare function schemas. `builtin:NAME/FILE` for shipped files. "
        "Every format but `text` and `prompt_answer`.",
    )
    weight: float | None = Field(
        default=None, gt=0,
        description="Share of the training mix relative to the other datasets' weights (the mix keeps the total "
        "row count of the weighted datasets). Rows left out or repeated are counted in the statistics.",
    )
    samples: int | None = Field(
        default=None, ge=1,
        description="Take exactly this many rows from this dataset (a seeded sample; rows repeat if it is larger).",
    )
    field: str | None = Field(
        default=None,
        description="JSON files holding one object: the key whose list holds the rows (e.g. `data` for "
        '`{"data": [...]}`). Needed only when the object has several list fields.',
    )
    split: str = Field(default="train", description="Split to read from a hub dataset or a saved DatasetDict (a saved single Dataset: only the split it was saved as).")
    subset: str | None = Field(default=None, description="Hub dataset configuration (subset) name.")
    revision: str | None = Field(
        default=None, description="Hub dataset revision (branch, tag or commit); pin a commit for reproducible caching."
    )

    @model_validator(mode="after")
    def _mix(self) -> DatasetSpec:
        if self.weight is not None and self.samples is not None:
            raise ValueError("give either `weight` or `samples` for a dataset, not both")
        self._check_format_options()
        if self.tools is not None and self.format not in TOOL_FORMATS:
            raise ValueError(f"`tools` (tool schemas for the chat template) are read only by the formats "
                             f"{', '.join(TOOL_FORMATS)}; format "
                             f"`{self.format}` has no tool calls to go with them. "
                             "Remove `tools`, or convert the rows to `messages`")
        return self

    def _check_format_options(self) -> None:
        """Options the format would silently not read: a `columns:` key it has no column of (a typo such as
        `outptu` left the real column unmapped), `roles:` outside sharegpt, `system:` on text rows."""
        import difflib

        known = COLUMN_KEYS[self.format]
        for key in self.columns:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                raise ValueError(f"columns: `{key}` is not a column format `{self.format}` reads"
                                 + (f"; did you mean `{close[0]}`?" if close else "")
                                 + f" (keys are the format's names: {', '.join(known)}; values your columns)")
        if self.roles and self.format != "sharegpt":
            raise ValueError(f"`roles:` maps sharegpt `from` values; format `{self.format}` does not read it. For "
                             "`messages` rows, roles must be system/user/assistant/tool (or the aliases docs/data.md "
                             "lists): convert other roles first")
        if self.system is not None and self.format == "text":
            raise ValueError("`system:` is a system prompt for conversations; `text` rows are trained as they are, "
                             "so it would be ignored: remove it (or put the text in the rows)")


# ------------------------------------------------------------------------------------------------ data.select
# The selection steps (docs/data.md, "Selecting data"): a discriminated union on `kind`; each step's own rules beside
# it, and `check_select` for the rules that depend on the rest of the section (which formats a step can read).


class LengthStep(Section):
    kind: Literal["length"] = Field(
        description="keep rows whose token counts lie within bounds (the rendered example after the length policy; "
        "preference rows: the longest prompt + answer)")
    min_tokens: int | None = Field(default=None, ge=1, description="Remove rows with fewer tokens than this.")
    max_tokens: int | None = Field(default=None, ge=1, description="Remove rows with more tokens than this.")
    min_trained_tokens: int | None = Field(
        default=None, ge=1, description="Remove rows with fewer trained (loss-carrying) tokens than this "
        "(preference rows: the longest answer).")
    max_trained_tokens: int | None = Field(
        default=None, ge=1, description="Remove rows with more trained (loss-carrying) tokens than this.")

    @model_validator(mode="after")
    def _bounds(self) -> LengthStep:
        if {self.min_tokens, self.max_tokens, self.min_trained_tokens, self.max_trained_tokens} == {None}:
            raise ValueError("a length step needs at least one of min_tokens, max_tokens, min_trained_tokens, "
                             "max_trained_tokens")
        for lo, hi, name in ((self.min_tokens, self.max_tokens, "tokens"),
                             (self.min_trained_tokens, self.max_trained_tokens, "trained_tokens")):
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"min_{name} ({lo}) is larger than max_{name} ({hi}): no row could pass")
        return self


MINHASH_ONLY = ("threshold", "num_perm", "ngram", "seed")


class DedupStep(Section):
    kind: Literal["dedup"] = Field(
        description="remove duplicate rows, keeping the first in dataset order (exact: same normalized text; "
        "minhash: estimated Jaccard similarity of word n-grams at or above `threshold`)")
    method: Literal["exact", "minhash"] = Field(
        default="exact", description="`exact`: rows whose (normalized) rendered text is identical. `minhash`: near "
        "duplicates found with MinHash signatures and locality-sensitive hashing.")
    normalize: bool = Field(
        default=True, description="Compare texts after Unicode NFKC normalization and case folding, as their runs of "
        "word characters and single punctuation characters (so texts differing only in case or whitespace are "
        "duplicates); false compares the rendered text as it is.")
    threshold: float = Field(
        default=0.8, gt=0.0, le=1.0, description="minhash: rows whose estimated Jaccard similarity to an earlier kept "
        "row is at least this are removed.")
    num_perm: int = Field(default=128, ge=16, le=1024, description="minhash: hash functions per signature (the "
                          "estimate's standard error is about sqrt(J(1-J)/num_perm)).")
    ngram: int = Field(default=5, ge=1, le=64, description="minhash: words per shingle (texts shorter than this are "
                       "one shingle).")
    seed: int = Field(default=0, description="minhash: seed of the hash functions (the result is deterministic for "
                      "a given seed).")

    @model_validator(mode="after")
    def _minhash_options(self) -> DedupStep:
        given = [k for k in MINHASH_ONLY if k in self.model_fields_set]
        if self.method == "exact" and given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join(given)} {verb} to `method: minhash` only; this step is `method: exact`")
        return self


class Keep(Section):
    top_k: int | None = Field(default=None, ge=1, description="Keep this many rows (the best by `order`).")
    fraction: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Keep this fraction of the rows entering the step (rounded half "
        "up, at least one), the best by `order`.")
    threshold: float | None = Field(
        default=None, description="Keep rows scoring at least this (`order: high`) or at most this (`order: low`).")

    @model_validator(mode="after")
    def _one(self) -> Keep:
        given = [k for k in ("top_k", "fraction", "threshold") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of top_k, fraction, threshold (found {', '.join(given) or 'none'})")
        return self


class ScoreStep(Section):
    kind: Literal["score"] = Field(
        description="score every row with a language model (perplexity or IFD) and keep the best (preference, KTO and "
        "ReFT rows: the chosen answer / completion / solution given the prompt)")
    by: Literal["perplexity", "ifd"] = Field(
        description="`perplexity`: exp(mean loss on the row's trained tokens). `ifd` (instruction-following "
        "difficulty): mean loss on the trained tokens given the context divided by their mean loss alone (answer "
        "after a start token); above 1 the context does not help predict the answer.")
    model: PathStr | None = Field(
        default=None, description="Scoring model: a local directory, hub id or `builtin:NAME`; it must use the "
        "recipe's tokenizer (same vocabulary). null: the recipe's model. Its identity (weights' sha256, or hub id and "
        "revision) is part of the data cache key.")
    revision: str | None = Field(default=None, description="Hub revision of `model` (pin a commit for caching).")
    keep: Keep = Field(description="How many rows to keep: {top_k: N}, {fraction: F} or {threshold: X}.")
    order: Literal["low", "high"] = Field(
        description="Which end of the scores is kept: `low` (lowest first) or `high` (highest first).")
    min_score: float | None = Field(
        default=None, description="Remove rows scoring below this before `keep` applies.")
    max_score: float | None = Field(
        default=None, description="Remove rows scoring above this before `keep` applies (the IFD paper drops "
        "IFD > 1: `max_score: 1.0`).")
    batch_size: int = Field(default=8, ge=1, description="Rows per forward pass while scoring.")


class RandomStep(Section):
    kind: Literal["random"] = Field(
        description="keep a seeded random subset (the baseline every other selection should be compared with)")
    fraction: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Keep this fraction of the rows entering the step (rounded half up, "
        "at least one).")
    count: int | None = Field(default=None, ge=1, description="Keep this many rows (all of them if fewer enter).")
    seed: int | None = Field(
        default=None, description="Seed of the draw; null: the data seed (data.shuffle_seed, else trainer.seed).")

    @model_validator(mode="after")
    def _one(self) -> RandomStep:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of fraction, count")
        return self


SelectStep = Annotated[LengthStep | DedupStep | ScoreStep | RandomStep, Field(discriminator="kind")]


def check_select(steps: list, formats: list[str], train_on: str) -> None:
    """Steps that cannot apply to the training data's formats are errors naming the step and field."""
    for i, step in enumerate(steps):
        if not isinstance(step, ScoreStep):
            continue
        if step.by == "ifd" and "text" in formats:
            raise ValueError(f"select[{i}].by: ifd compares the answer's loss with and without its instruction; "
                             "`text` rows have no instruction (use `by: perplexity`)")
        sft = any(f not in NON_SFT_FORMATS for f in formats)  # preference/ReFT rows: an untrained prompt always
        if step.by == "ifd" and train_on == "all" and sft:
            raise ValueError(f"select[{i}].by: ifd needs an untrained instruction before the trained answer; with "
                             "data.train_on: all every token is trained (use `by: perplexity`)")


class DataConfig(Section):
    train: list[DatasetSpec] = Field(min_length=1, description="Training datasets (at least one).")
    eval: list[DatasetSpec] = Field(default_factory=list, description="Evaluation datasets (optional).")
    eval_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Hold out this fraction of the training rows for evaluation."
    )
    max_length: int = Field(default=1024, ge=8, description="Maximum tokens per example (and per packed row).")
    length_policy: Literal["truncate", "drop"] = Field(
        default="truncate",
        description="What to do with examples longer than `max_length`: `truncate` them or `drop` them "
        "(both are counted and reported).",
    )
    train_on: Literal["assistant", "all", "last_assistant"] = Field(
        default="assistant",
        description="Which tokens carry loss: `assistant` (every assistant turn / completion, the default), "
        "`last_assistant` (only the final assistant turn) or `all`.",
    )
    multi_turn: Literal["auto", "consistent", "per_turn"] = Field(
        default="auto",
        description="How conversations with several trained assistant turns become examples. `consistent`: one "
        "example per conversation, every turn masked in (needs a template that renders conversation prefixes "
        "consistently; an error otherwise). `per_turn`: one example per trained assistant turn, rendered as the "
        "template renders a conversation ending there (earlier turns are context only): what the model sees at "
        "inference with templates that rewrite earlier turns (Qwen3, DeepSeek-V3/R1, Mistral v0.3 with a "
        "system turn), at the cost of "
        "repeating the context. `auto`: `consistent` where the template allows it, else `per_turn` for that row "
        "(counted in the statistics).",
    )
    train_reasoning: bool = Field(
        default=True,
        description="Assistant turns with reasoning (`reasoning_content`/`thinking`, or inline `<think>...</think>` "
        "in `content`): true trains the reasoning with the answer; false keeps the reasoning in the context but takes "
        "no loss on it (the closing tag, the answer and the end of turn are trained).",
    )
    drop_text_beside_tool_calls: bool = Field(
        default=False,
        description="Leave out the text (`content`) of assistant turns that also make tool calls (\"I will check "
        "the weather.\" + a call), in SFT rows and preference prompts and answers, whatever the template; the "
        "calls, the turns' reasoning and every other turn are kept. For templates with no place for such text "
        "(Llama 3.1, Mistral v0.3), where it is otherwise an error naming the row.",
    )
    system_role: Literal["keep", "merge_into_first_user"] = Field(
        default="keep",
        description="`keep` system messages as they are, or `merge_into_first_user`: put the system text before "
        "the first user message, for templates that have no system turn (Gemma-2 raises on one).",
    )
    drop_untrained: bool = Field(
        default=False,
        description="Drop (and count) examples left with no trained tokens instead of stopping with an error.",
    )
    chat_template: PathStr | None = Field(
        default=None,
        description="Chat template: null uses the tokenizer's own; a built-in name or a path to a .jinja file. "
        "Built-in: tunekit's minimal chatml, llama3, mistral, gemma, qwen, alpaca, and the real templates of model "
        "families: qwen2.5, qwen3, llama3.1, llama3.2, mistral-v0.3, gemma2, gemma3, phi3, phi3.5, phi4, "
        "deepseek-v3, deepseek-r1-distill (docs/data.md). The template used is saved with the run's tokenizer.",
    )
    chat_template_kwargs: dict[str, bool | int | float | str] = Field(
        default_factory=dict,
        description="Variables the chat template reads, fixed for the whole run: e.g. `{enable_thinking: false}` "
        "(Qwen3: an empty think block in the generation prompt), `{thinking: true}` (DeepSeek-V3.1), "
        "`{reasoning_effort: high}` (gpt-oss). They are written into the template as `{%- set NAME = VALUE -%}` "
        "lines, so training, eval, `tunekit chat`, preference trainers and the run's saved tokenizer all render "
        "with them. Each name must be one the template reads.",
    )
    packing: bool = Field(
        default=False,
        description="Pack examples into rows of `max_length` (best-fit decreasing); attention never crosses "
        "example boundaries (position ids restart per example).",
    )
    padding_free: bool = Field(
        default=False,
        description="Without packing: concatenate each batch into one padding-free row (position ids restart per "
        "example). Implied by `packing`.",
    )
    tokens_per_batch: int | None = Field(
        default=None, ge=8,
        description="Token budget of one micro-batch per device (trainer.kind sft), instead of a fixed number of "
        "rows; it sets trainer.per_device_batch_size (leave that unset). Packed data: tokens_per_batch // max_length "
        "packed rows per batch. Unpacked data: a length-aware batch sampler fills each batch up to the budget, "
        "counting the tokens the model processes (with padding: rows x the longest row; with padding_free: the sum "
        "of the rows' lengths); batches are formed once per run from the data seed and reshuffled every epoch; every "
        "row is seen once per epoch. Must be at least max_length. null: per_device_batch_size rows per batch.",
    )
    num_proc: int | None = Field(
        default=None, ge=1,
        description="Processes that build the data (SFT rows rendered, tokenized and masked; preference and RL rows "
        "converted and checked against the chat template): the rows are cut into this many contiguous shards, each "
        "written to disk as it goes; the output is the same for any value. null: the machine's cores (those this "
        "process may use). Not part of the cache key.",
    )
    cache_dir: PathStr | None = Field(
        default=None,
        description="Where tokenized datasets are cached, keyed by a fingerprint of data, tokenizer, template and "
        "options. null: $TUNEKIT_CACHE/data (default ~/.cache/tunekit/data).",
    )
    drop_invalid_pairs: bool = Field(
        default=False,
        description="Preference data: drop (and count) rows whose chosen equals rejected or that miss a field, "
        "instead of stopping with an error naming the row.",
    )
    masked_thought: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Masked Thought (SFT only): each trained (label-carrying) token of "
        "a training row is replaced in the model's INPUT by the unk token (the pad token if the tokenizer has none) "
        "with this probability, drawn afresh every time the row is batched; labels stay the original tokens. The "
        "paper uses 0.2 (0.1-0.4). 0: off. Evaluation rows are never masked.")
    shuffle_seed: int | None = Field(
        default=None, description="Seed for mixing and shuffling training rows; null uses trainer.seed."
    )
    select: list[SelectStep] = Field(
        default_factory=list,
        description="Data selection: steps applied in order to the training rows (after reading, mixing, "
        "tokenizing and holding out `eval_fraction`; before packing), e.g. [{kind: length, max_tokens: 512}, {kind: "
        "dedup, method: exact}, {kind: score, by: ifd, keep: {fraction: 0.5}, order: high}, {kind: random, "
        "fraction: 0.5}]. Each step's rows in/out (and score summary) are recorded in data.json; see docs/data.md.",
    )

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_variable_names(cls, v: dict) -> dict:
        for name in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"`{name}` is not a template variable name (letters, digits and _, not starting "
                                 "with a digit)")
        return v

    @field_validator("select")
    @classmethod
    def _select_fits_the_data(cls, steps: list, info: ValidationInfo) -> list:
        if "train" in info.data:  # else the datasets failed validation and are reported on their own
            check_select(steps, [s.format for s in info.data["train"]], info.data.get("train_on", "assistant"))
        return steps

    def data_seed(self, trainer_seed: int) -> int:
        """The seed rows are mixed and shuffled with: `shuffle_seed`, else the trainer's seed."""
        return self.shuffle_seed if self.shuffle_seed is not None else trainer_seed

    @model_validator(mode="after")
    def _eval_sources(self) -> DataConfig:
        if self.eval and self.eval_fraction:
            raise ValueError("give either `eval` datasets or `eval_fraction`, not both")
        weighted = [s.weight is not None for s in self.train if s.samples is None]
        if any(weighted) and not all(weighted):
            raise ValueError("when one training dataset has a `weight`, every dataset without `samples` needs one")
        return self

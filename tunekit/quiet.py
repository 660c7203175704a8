"""A quiet console: library messages that tell a tunekit user nothing are turned off at their source.

`tunekit --verbose COMMAND` (or TUNEKIT_VERBOSE=1) leaves every library at its own default. Otherwise, before any
heavy library is imported:

- transformers, datasets and the hub log errors only and draw no progress bars of their own ("Loading weights",
  "Writing model shards", "Generating train split", TRL's "Tokenizing train dataset" ...); tunekit's training
  display (`trainers/display.py`) is the one progress bar;
- bitsandbytes (imported by peft for every adapter, QLoRA or not) does not warn about optional CPU kernels;
- DeepSpeed (imported by accelerate when installed) does not announce that it fell back to the CPU;
- deprecation warnings raised inside libraries (peft still reads `is_gradient_checkpointing`) are not shown, nor
  warnings about what a library handles itself (`DROPPED_WARNINGS`).

The settings are environment variables, so processes relaunched under torchrun inherit them.
"""

from __future__ import annotations

import logging
import os
import warnings

ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # else: "the current process just got forked ... disabling parallelism"
    "TRL_EXPERIMENTAL_SILENCE": "1",  # "You are importing from 'trl.experimental'" (ORPO, CPO, online DPO)
}
# loggers whose warnings are about optional kernels/backends, not about the user's run
QUIET_LOGGERS = ("bitsandbytes", "trl", "torch.distributed.elastic.multiprocessing.redirects")
# single messages dropped from loggers that otherwise stay at their level
DROPPED_MESSAGES = {"DeepSpeed": ("Setting accelerator to CPU",)}
# library warnings about something the library handles itself: peft ignores the position ids generate passes to a
# prompt-tuning model (and says so at every call); sets fan_in_fan_out for GPT-2's Conv1D layers; and on a fused-MoE
# model (Qwen3-MoE, Mixtral in transformers 5) its own v4 -> v5 conversion adds rank/alpha patterns for
# `gate_up_proj` that match no module when the experts are targeted as parameters
DROPPED_WARNINGS = ("Position ids are not supported for parameter efficient tuning",
                    "fan_in_fan_out is set to False but the target module is `Conv1D`",
                    r"The following (rank|alpha)_pattern keys did not match any targeted module and were ignored: "
                    r"\['\.\*\\\\\.gate_up_proj'\]\.$")


def is_verbose() -> bool:
    return os.environ.get("TUNEKIT_VERBOSE", "") not in ("", "0")


class _DropMessages(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_libraries(verbose: bool = False) -> None:
    """Set the libraries' verbosity before they are imported; `verbose` keeps their defaults (and tells children)."""
    if verbose:
        os.environ["TUNEKIT_VERBOSE"] = "1"
    if is_verbose():
        return
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, starts in DROPPED_MESSAGES.items():
        logging.getLogger(name).addFilter(_DropMessages(starts))
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for message in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)

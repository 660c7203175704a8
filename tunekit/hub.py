"""Reaching the Hugging Face Hub: fail fast, or use the local cache at once, when the hub cannot be reached.

Without a network, `from_pretrained` and `load_dataset` retry each request for tens of seconds (78 s measured for
one `tunekit train`) before failing. Before the first hub load, tunekit opens one TCP connection to the hub
(3 s at most): when it fails, a model already in the local Hugging Face cache is loaded from there
(HF_HUB_OFFLINE for this process, no retries), and one that is not is an immediate error saying what to do.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from urllib.parse import urlparse

from tunekit.errors import UserError

PROBE_TIMEOUT_S = 3.0
TRUE = {"1", "true", "yes", "on"}


def offline_by_choice() -> bool:
    return any(os.environ.get(k, "").strip().lower() in TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def reachable() -> bool:
    """Whether one TCP connection to the hub endpoint (HF_ENDPOINT, default huggingface.co) opens in 3 s."""
    url = urlparse(_endpoint())
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Use the local cache only from here on (huggingface_hub and datasets read these at import; set both)."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[key] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True


def in_cache(repo: str, filename: str, revision: str | None, repo_type: str = "model") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename, revision=revision, repo_type=repo_type), str)


def check_model(repo: str, revision: str | None, field: str = "model.path") -> None:
    """Before loading hub model `repo`: nothing to do online or when offline was chosen; offline with the model in
    the cache, load it from there without retries; offline without it, a UserError."""
    if offline_by_choice() or reachable():
        return
    if in_cache(repo, "config.json", revision):
        go_offline()
        return
    raise UserError(f"{field}: `{repo}` is a Hugging Face Hub id, but the hub ({_endpoint()}) cannot be reached from "
                    "this machine and the model is not in the local Hugging Face cache. Give a local model "
                    f"directory, download it where there is a network (`hf download {repo}`) and copy the cache "
                    "(HF_HOME), or set HF_ENDPOINT to a mirror you can reach.")


def check_dataset(name: str) -> None:
    """Before loading hub dataset `name` without a network: use the cache only (datasets then fails at once, with
    its own message, when the dataset is not cached)."""
    if not offline_by_choice() and not reachable():
        go_offline()


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"

"""Where tunekit's files are: shipped assets, recipes and launcher configs, and the cache root.

Shipped files are found through `importlib.resources`, so they resolve the same way in an editable
install (the repo) and in an installed wheel (recipes/ and configs/ are force-included under
`tunekit/_shipped/`, see pyproject.toml).
"""

from __future__ import annotations

import codecs
import os
from importlib import resources
from pathlib import Path

from tunekit.errors import UserError

PACKAGE = Path(str(resources.files("tunekit")))
ASSETS = PACKAGE / "assets"


def asset(*parts: str) -> Path:
    """A file or folder under tunekit/assets (tokenizer, templates, data)."""
    return ASSETS.joinpath(*parts)


def shipped_dir(kind: str) -> Path:
    """Shipped `recipes` or `configs`: inside the installed wheel, or at the repo root for an editable install."""
    for candidate in (PACKAGE / "_shipped" / kind, PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise UserError(f"cannot find the shipped {kind}/ folder; reinstall tunekit")


def decode_utf8(raw: bytes, name: str, line_offset: int = 0) -> str:
    """The text of a user's UTF-8 file (or one line of it); a byte that is not UTF-8 is a UserError naming
    `name:line:col`. A leading byte-order mark (Excel's "CSV UTF-8", Notepad) is valid UTF-8 but no part of the
    text: it is dropped (columns are counted after it)."""
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1 + line_offset
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"{name}:{line}:{col}: byte 0x{raw[e.start]:02x} is not UTF-8 text; "
                        "save the file as UTF-8") from None


def cache_root() -> Path:
    """$TUNEKIT_CACHE, or ~/.cache/tunekit: builtin models and the data cache live below it."""
    return Path(os.environ.get("TUNEKIT_CACHE", Path.home() / ".cache" / "tunekit")).expanduser()


def create_dir(path: Path, flag: str, given: Path | None = None) -> Path:
    """Create the output directory `path` (and its parents) for the option `flag`; one that cannot be created (a
    file in the way, a read-only or virtual filesystem) is a UserError naming the flag, the path and the reason.
    `given` is what the user passed when `path` is a directory made next to it (a merge's partial output)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = f"{given}: cannot create directory {path}" if given else f"{path}: cannot create directory"
        why = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror or e
        raise UserError(f"{flag} {where} ({why})") from None
    return path


def as_umask_allows(directory: Path) -> None:
    """Give the weight files under `directory` the permissions the umask gives any other file: safetensors (0.8)
    writes its files with mode 0600 whatever the umask, so a model shared with another account (a server reading a
    merged model) could not be read. Only files left at exactly 0600 are changed."""
    mask = os.umask(0)
    os.umask(mask)
    mode = 0o666 & ~mask
    if mode == 0o600:
        return
    for f in directory.rglob("*.safetensors"):
        if f.is_file() and f.stat().st_mode & 0o777 == 0o600:
            f.chmod(mode)


def absolute_file(path: str) -> str:
    """An existing local file as an absolute path (a recipe records it so from any directory); anything else
    (`builtin:`/`hub:` names, globs, a missing file the reading code reports) as it is."""
    p = Path(path).expanduser()
    return str(p.resolve()) if ":" not in path.split("/")[0] and p.is_file() else path

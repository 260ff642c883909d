"""Which folders a shared dashboard may read checkpoints and datasets from.

Each allow-list comes from an environment variable (folders separated by os.pathsep), else from a
key in .streamlit/secrets.toml (a list of folders, or one string like the variable), which the
dashboard reads and passes in. Unset, every path is allowed: local use. A path is allowed when,
with ``~``, ``..`` and symlinks resolved, it is one of the roots or lies under one. Imports no torch.

Only a dataset's root is checked here: what lies under it is kept inside it by the member rule
(agegender.data.members), which reads nothing but regular files inside the resolved root, never a link,
whatever the allow-list says; so a link in an allowed dataset cannot reach a file outside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agegender.models.catalog import META, list_checkpoints

CHECKPOINT_ENV = "AGEGENDER_ALLOWED_ROOTS"
DATA_ENV = "AGEGENDER_ALLOWED_DATA"
CHECKPOINT_SECRET = "allowed_roots"  # keys in .streamlit/secrets.toml
DATA_SECRET = "allowed_data"
SECRETS_FILE = ".streamlit/secrets.toml"

# Messages are constants so tests can assert them word for word.
ERR_NOT_ALLOWED = ("{what} {path} is outside the folders this dashboard may read ({roots}); "
                   "to allow it, add its folder to {source}")
RESOLVES = "{path} (which resolves to {resolved})"
FROM_ENV = "${env} (folders separated by '{sep}')"
FROM_SECRET = "{key} in " + SECRETS_FILE
ERR_BAD_SETTING = ("{source} must be a list of folders or one string of them, not {value!r}; "
                   "until it is, no typed path is allowed")
ERR_UNREADABLE = "{file} cannot be read ({detail}); until it can, no typed path is allowed"


class NotAllowed(PermissionError):
    """A path outside the allow-list; the message names it and where to allow it."""


class BadSetting(ValueError):
    """An allow-list setting that is not a list of folders."""


def _resolve(path: str | os.PathLike) -> Path | None:
    """The absolute path with ~, .. and symlinks resolved; None for a symlink loop."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, before Python 3.13
        return None


def parse_roots(value: str | Iterable[str], source: str = "the allow-list") -> tuple[Path, ...]:
    """The folders in a setting: one string with os.pathsep between folders, or a list; empty
    entries dropped, each resolved."""
    if isinstance(value, str):
        entries = value.split(os.pathsep)
    elif isinstance(value, Iterable) and not isinstance(value, Mapping) and all(isinstance(v, str) for v in value):
        entries = list(value)
    else:
        raise BadSetting(ERR_BAD_SETTING.format(source=source, value=value))
    roots = (_resolve(e.strip()) for e in entries if e.strip())
    return tuple(dict.fromkeys(r for r in roots if r is not None))


def is_allowed(path: str | os.PathLike, roots: Iterable[str | os.PathLike] | None) -> bool:
    """Whether ``path``, resolved, is one of ``roots`` or under one; ``roots`` None allows all."""
    if roots is None:
        return True
    resolved = _resolve(path)
    if resolved is None:
        return False
    return any(r is not None and resolved.is_relative_to(r) for r in map(_resolve, roots))


@dataclass(frozen=True)
class AllowList:
    what: str  # "checkpoint folder" or "dataset", for the message
    roots: tuple[Path, ...] | None = None  # None: nothing set, every path allowed
    source: str = ""  # where the roots were set, named in the refusal
    problem: str = ""  # a setting that could not be read: nothing is allowed, and this says why

    def allows(self, path: str | os.PathLike) -> bool:
        return not self.problem and is_allowed(path, self.roots)

    def check(self, path: str | os.PathLike) -> None:
        """Raises NotAllowed for a path outside the roots."""
        if self.allows(path):
            return
        if self.problem:
            raise NotAllowed(self.problem)
        resolved = _resolve(path)
        shown = str(path) if resolved == Path(path) else RESOLVES.format(path=path, resolved=resolved)
        raise NotAllowed(ERR_NOT_ALLOWED.format(what=self.what, path=shown, source=self.source,
                                                roots=", ".join(map(str, self.roots)) or "none"))


def allow_list(what: str, env: str, key: str, secret: str | Iterable[str] | None = None,
               secrets_error: str = "") -> AllowList:
    """$env when set (not blank), else the secret (an empty list allows nothing), else everything
    allowed. A setting that is not a list of folders, or a secrets file that exists but cannot be
    read (``secrets_error``), allows nothing and says so: never open by mistake."""
    value = os.environ.get(env, "")
    if value.strip():
        setting, source = value, FROM_ENV.format(env=env, sep=os.pathsep)
    elif secrets_error:
        return AllowList(what, (), FROM_SECRET.format(key=key),
                         problem=ERR_UNREADABLE.format(file=SECRETS_FILE, detail=secrets_error))
    elif secret is not None:
        setting, source = secret, FROM_SECRET.format(key=key)
    else:
        return AllowList(what)
    try:
        return AllowList(what, parse_roots(setting, source), source)
    except BadSetting as e:
        return AllowList(what, (), source, problem=str(e))


def checkpoint_allow_list(secret: str | Iterable[str] | None = None, secrets_error: str = "") -> AllowList:
    """From $AGEGENDER_ALLOWED_ROOTS, else allowed_roots in .streamlit/secrets.toml."""
    return allow_list("checkpoint folder", CHECKPOINT_ENV, CHECKPOINT_SECRET, secret, secrets_error)


def data_allow_list(secret: str | Iterable[str] | None = None, secrets_error: str = "") -> AllowList:
    """From $AGEGENDER_ALLOWED_DATA, else allowed_data in .streamlit/secrets.toml."""
    return allow_list("dataset", DATA_ENV, DATA_SECRET, secret, secrets_error)


def pickable(allowed: AllowList, default: Path) -> list[Path]:
    """The checkpoint folders to offer in a picker: those in ``default`` (the checkpoints/ folder)
    and, when roots are set, in each root or the root itself if it is a checkpoint; only allowed
    ones (a symlink out of a root is left out), each once."""
    folders = []
    for root in [default, *(allowed.roots or ())]:
        if not allowed.allows(root):
            continue
        folders += [root] if (root / META).is_file() else list_checkpoints(root)
    unique = {}
    for f in folders:
        if allowed.allows(f):
            unique.setdefault(_resolve(f), f)
    return list(unique.values())

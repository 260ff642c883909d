"""meta.json's schema: each field a reader of a checkpoint uses (the loader, the model factory, the preprocessing,
the age scaling, the catalog, resume, the audit), its type and its range, checked in one pass when meta.json is
read (agegender.meta.read_meta), so no value reaches a model, a transform or a page unchecked.

Written by hand, not with jsonschema: JSON Schema's "number" admits NaN and infinity, which Python's json reads, so
every numeric rule would need a hand-written check beside it, as would the rules across fields (input_size within
cache_size) and against the registry (a known arch); by hand, every rule and the words of its message sit in one
table that the tests read word for word, and the contract stays one import lighter. Unknown keys pass: newer code
may add some.

The age_interval record is not checked here: a record that cannot be used does not stop the load (the model
still predicts ages), and meta.Calibration.from_json refuses it, word for word, wherever an interval is asked.
Imports no torch; the architecture names come from the caller that knows the registry."""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Collection

from .labels import printable

# the shipped meta.json are ~15 KB, a soup of a hundred runs ~0.3 MB; 1 MB of the worst JSON reads in ~0.3 s
MAX_BYTES = 1 << 20
MAX_DEPTH = 24  # objects and lists inside each other; the shipped have 6 (meta.soup.runs[i].init_trunk.converted_from)
MIN_PIXELS, MAX_PIXELS = 16, 1024  # cache and input size: UTKFace's chips are 200 px, the models see 112-224
MAX_AGE_BINS = 256  # a DLDL head has one bin per whole year from 0: a person is not 255
AGE_LIMIT = 1000.0  # years: beyond this no age (a scale of 1e300 makes an output inf, and 0 x inf is NaN)
STD_RANGE = (1e-3, 1e3)  # a preprocessing std outside this divides a pixel into infinity or into nothing
CHANNELS = 3

# The detail of one violation; meta.ERR_BAD_META joins them, naming the file.
FIELD = "{field} must be {expected}, not {value}"
MISSING = "missing {fields}"
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _within(lo: float, hi: float) -> Callable[[object], bool]:
    return lambda x: _real(x) and lo <= x <= hi


def _reals(n: int, ok: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda x: isinstance(x, list) and len(x) == n and all(map(ok, x))


def _sha256(x) -> bool:
    return isinstance(x, str) and len(x) == 64 and set(x) <= set(string.hexdigits)


def _age_range(x) -> bool:
    return _reals(2, _within(-AGE_LIMIT, AGE_LIMIT))(x) and x[0] < x[1]


def _objects(x) -> bool:
    return isinstance(x, list) and all(isinstance(v, dict) for v in x)


def _object(x) -> bool:
    return isinstance(x, dict)


# (field, whether it must be there, its test, what it must be). A field of an object that is itself wrong (or
# absent) is not looked into: its parent's line says what is wrong.
RULES: tuple[tuple[str, bool, Callable[[object], bool], str], ...] = (
    ("format", True, lambda x: isinstance(x, str), "a string"),
    ("arch", True, lambda x: isinstance(x, str), "an architecture's name, a string"),
    ("preprocess", True, _object, "an object with cache_size, input_size, mean and std"),
    ("preprocess.cache_size", True, lambda x: _int(x) and MIN_PIXELS <= x <= MAX_PIXELS,
     f"a whole number of pixels from {MIN_PIXELS} to {MAX_PIXELS}"),
    ("preprocess.input_size", True, lambda x: _int(x) and MIN_PIXELS <= x <= MAX_PIXELS,
     f"a whole number of pixels from {MIN_PIXELS} to {MAX_PIXELS}"),
    ("preprocess.mean", True, _reals(CHANNELS, _within(-AGE_LIMIT, AGE_LIMIT)),
     f"a list of {CHANNELS} finite numbers, one per colour channel"),
    ("preprocess.std", True, _reals(CHANNELS, _within(*STD_RANGE)),
     f"a list of {CHANNELS} numbers from {STD_RANGE[0]:g} to {STD_RANGE[1]:g}, one per colour channel"),
    ("age_offset", True, _within(-AGE_LIMIT, AGE_LIMIT), f"a finite number of years from -{AGE_LIMIT:g} to "
                                                         f"{AGE_LIMIT:g}"),
    ("age_scale", True, lambda x: _within(0, AGE_LIMIT)(x) and x > 0,
     f"a finite number of years above 0, at most {AGE_LIMIT:g}"),
    ("age_range", False, _age_range, f"two finite ages from -{AGE_LIMIT:g} to {AGE_LIMIT:g}, the first smaller"),
    ("age_bins", False, lambda x: _int(x) and (x == 0 or 2 <= x <= MAX_AGE_BINS),
     f"0 (a regression head) or a whole number of bins from 2 to {MAX_AGE_BINS}"),
    ("dropout", False, lambda x: _real(x) and 0 <= x < 1, "a number from 0 up to (not including) 1"),
    ("labels", True, _object, "an object"),
    ("weights_sha256", True, _sha256, "64 hexadecimal digits"),
    ("dataset_fingerprint", False, lambda x: isinstance(x, str), "a string"),
    ("epochs_run", False, lambda x: _int(x) and x >= 0, "a whole number of epochs"),
    ("train_minutes", False, lambda x: _real(x) and x >= 0, "a finite number of minutes"),
    ("metrics", False, lambda x: _object(x) and all(map(_object, x.values())),
     "an object of figures by split, each an object"),
    ("train_config", False, _object, "an object"),
    ("train_config.holdout_fold", False, lambda x: _int(x) and x >= -1, "a whole number, -1 for none"),
    ("train_config.folds", False, lambda x: _int(x) and x >= 2, "a whole number of folds, 2 or more"),
    ("train_config.age_loss", False, lambda x: isinstance(x, str), "a string"),
    ("train_config.epochs", False, lambda x: _int(x) and x >= 0, "a whole number of epochs"),
    ("holdout", False, _object, "an object"),
    ("holdout.fold", False, lambda x: _int(x) and x >= -1, "a whole number, -1 for none"),
    ("holdout.folds", False, lambda x: _int(x) and x >= 2, "a whole number of folds, 2 or more"),
    ("holdout.rule", False, lambda x: isinstance(x, str), "a string"),
    ("soup", False, _object, "an object"),
    ("soup.runs", False, _objects, "a list of objects, one per run"),
)
_RULE = {name: ok for name, _, ok, _ in RULES}


def shown(value, limit: int = 60) -> str:
    """A value as a message shows it: Python's repr, cut to ``limit`` characters, nothing unprintable."""
    text = printable(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def depth(value) -> int:
    """How many containers (objects, lists) ``value`` (parsed JSON) nests, level by level without recursion, and
    no further than one level past MAX_DEPTH; only containers are kept, so a long flat list costs one pass."""
    deepest, level = 0, [value] if isinstance(value, (dict, list)) else []
    while level and deepest <= MAX_DEPTH:
        deepest += 1
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, (dict, list))]
    return deepest


def violations(meta: dict, archs: Collection[str] | None = None) -> list[str]:
    """Every way ``meta`` (a parsed meta.json object, nested at most MAX_DEPTH) breaks the schema, one line each,
    the missing required fields first; [] when it is sound. ``archs``: the known architectures, where the caller
    knows the registry."""
    found, missing = [], []
    for name, required, ok, expected in RULES:
        *parents, key = name.split(".")
        holder = meta
        for p in parents:
            holder = holder.get(p) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or (parents and not _parent_ok(meta, parents)):
            continue
        if key not in holder:
            if required:
                missing.append(name)
        elif not ok(holder[key]):
            found.append(FIELD.format(field=name, expected=expected, value=shown(holder[key])))
    found += _across(meta, archs)
    return ([MISSING.format(fields=", ".join(missing))] if missing else []) + found


def _parent_ok(meta: dict, parents: list[str]) -> bool:
    """Whether each parent of a nested field passed its own rule (else its line says what is wrong)."""
    holder = meta
    for i, p in enumerate(parents):
        holder = holder.get(p)
        if not _RULE.get(".".join(parents[: i + 1]), _object)(holder):
            return False
    return True


def _across(meta: dict, archs: Collection[str] | None) -> list[str]:
    """The rules that read more than one field, or the registry."""
    found = []
    arch, pp = meta.get("arch"), meta.get("preprocess")
    if archs is not None and isinstance(arch, str) and arch not in archs:
        found.append(FIELD.format(field="arch", expected=f"one of {', '.join(archs)}", value=shown(arch)))
    sizes_ok = isinstance(pp, dict) and all(_RULE[f"preprocess.{k}"](pp.get(k)) for k in ("cache_size", "input_size"))
    if sizes_ok and pp["input_size"] > pp["cache_size"]:  # each wrong on its own has its own line already
        found.append(FIELD.format(field="preprocess.input_size", value=shown(pp["input_size"]),
                                  expected=f"at most preprocess.cache_size ({pp['cache_size']})"))
    return found

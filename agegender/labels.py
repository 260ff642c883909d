"""The one label map: UTKFace name fields, gender and ethnicity names, age buckets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

GENDERS = ("male", "female")  # UTKFace: 0 = male, 1 = female; the gender head predicts P(female)
RACES = ("White", "Black", "Asian", "Indian", "Others")
MAX_AGE = 116
AGE_BUCKET_EDGES = (0, 3, 10, 20, 30, 40, 50, 60, 70)  # lower bounds; the last bucket is open
DECISION = 0.5  # P(female) at or above this is called female (outside the Uncertain band's reading)
DEFAULT_BAND = (0.45, 0.55)  # P(female) inside this band reads "Uncertain"
# FairFace's age bins, inclusive; None: open ("more than 70"). Their lower bounds are AGE_BUCKET_EDGES, so a
# FairFace bin and an age bucket carry the same label.
FAIRFACE_BINS = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, None))

ERR_BAND = "the Uncertain band {lo} {hi} must be two numbers LO <= HI, each from 0 to 1"
ERR_BIN = "age bin {text!r}: write LOW-HIGH (20-29), LOW+ (70+) or 'more than LOW'"
ERR_BIN_OF = "age {age} falls in none of the bins {bins}"

# age_gender_race_datetime with .jpg, or the aligned-and-cropped .jpg.chip.jpg form.
_NAME_RE = re.compile(
    r"^(?P<age>\d{1,3})_(?P<gender>\d+)_(?P<race>\d+)_(?P<stamp>\d+)\.(?:jpe?g|png)(?:\.chip\.jpe?g)?$",
    re.IGNORECASE,
)


class MalformedName(ValueError):
    """A file name that does not carry valid UTKFace labels."""


@dataclass(frozen=True)
class Labels:
    age: int
    gender: int
    race: int


def printable(name: str) -> str:
    """``name`` safe to print in one log line or message: control and other unprintable characters (a newline in
    a file name, a bidi override) escaped as Python writes them, so a file name can neither split a line nor
    forge one. Letters of any script stay as they are."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(name))


def parse_name(name: str) -> Labels:
    """Labels from a UTKFace file name; raises MalformedName rather than guess."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    m = _NAME_RE.match(base)
    if m is None:
        raise MalformedName(f"{base!r} does not match age_gender_race_datetime.jpg")
    age, gender, race = int(m["age"]), int(m["gender"]), int(m["race"])
    if not 0 <= age <= MAX_AGE:
        raise MalformedName(f"{base!r}: age {age} outside 0..{MAX_AGE}")
    if gender not in (0, 1):
        raise MalformedName(f"{base!r}: gender {gender} is not 0 or 1")
    if not 0 <= race < len(RACES):
        raise MalformedName(f"{base!r}: race {race} outside 0..{len(RACES) - 1}")
    return Labels(age, gender, race)


def image_key(name: str) -> str:
    """The name without folders and image extensions: x.jpg and x.jpg.chip.jpg share it."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"(\.(jpe?g|png))?(\.chip\.jpe?g)?$", "", base, flags=re.IGNORECASE)


def gender_name(g: int) -> str:
    return GENDERS[g]


def race_name(r: int) -> str:
    return RACES[r]


def age_bucket(age: float, edges: tuple[int, ...] = AGE_BUCKET_EDGES) -> str:
    """Bucket label such as '20-29' or '70+'."""
    label = None
    for i, lo in enumerate(edges):
        if age >= lo:
            label = f"{lo}+" if i == len(edges) - 1 else f"{lo}-{edges[i + 1] - 1}"
    if label is None:
        raise ValueError(f"age {age} is below the first bucket edge {edges[0]}")
    return label


def called_female(p_female):
    """The gender call at the decision threshold; works on floats, arrays and Series alike."""
    return p_female >= DECISION


def gender_label(p_female: float, band: tuple[float, float] = DEFAULT_BAND) -> str:
    """Male, Female or Uncertain when P(female) falls inside the band."""
    lo, hi = band
    if p_female < lo:
        return "Male"
    if p_female > hi:
        return "Female"
    return "Uncertain"


def check_band(band) -> tuple[float, float]:
    """(lo, hi) as floats when 0 <= lo <= hi <= 1; ValueError(ERR_BAND) otherwise."""
    lo, hi = (float(v) for v in band)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(ERR_BAND.format(lo=lo, hi=hi))
    return lo, hi


def parse_age_bin(text: str) -> tuple[int, int | None]:
    """'20-29' -> (20, 29); '70+' and 'more than 70' -> (70, None). Raises ValueError(ERR_BIN)."""
    t = str(text).strip().lower()
    if m := re.fullmatch(r"(\d{1,3})\s*-\s*(\d{1,3})", t):
        lo, hi = int(m[1]), int(m[2])
        if lo <= hi:
            return lo, hi
    elif m := re.fullmatch(r"(?:(\d{1,3})\s*\+|more than\s+(\d{1,3}))", t):
        return int(m[1] or m[2]), None
    raise ValueError(ERR_BIN.format(text=text))


def bin_label(age_bin: tuple[int, int | None]) -> str:
    lo, hi = age_bin
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def bin_of(age: float, bins: Sequence[tuple[int, int | None]] = FAIRFACE_BINS) -> int:
    """The index of the bin holding an exact age; a bin LOW-HIGH holds LOW <= age < HIGH + 1, so 29.7 is 20-29."""
    for i, (lo, hi) in enumerate(bins):
        if lo <= age and (hi is None or age < hi + 1):
            return i
    raise ValueError(ERR_BIN_OF.format(age=age, bins=", ".join(map(bin_label, bins))))


def nearest_bin(age: float, bins: Sequence[tuple[int, int | None]] = FAIRFACE_BINS) -> int:
    """bin_of for a predicted age, which may fall below, above or between a dataset's bins: the bin
    holding it, else the one whose range is nearest (a model is judged on the bins the labels use)."""
    def distance(b: tuple[int, int | None]) -> float:
        lo, hi = b
        return max(lo - age, 0.0, age - (float("inf") if hi is None else hi + 1) + 1e-9)

    return min(range(len(bins)), key=lambda i: (distance(bins[i]), i))

"""The one label map: UTKFace name fields, gender and ethnicity names, age buckets."""

from __future__ import annotations

import re
from dataclasses import dataclass

GENDERS = ("male", "female")  # UTKFace: 0 = male, 1 = female; the gender head predicts P(female)
RACES = ("White", "Black", "Asian", "Indian", "Others")
MAX_AGE = 116
AGE_BUCKET_EDGES = (0, 3, 10, 20, 30, 40, 50, 60, 70)  # lower bounds; the last bucket is open
DECISION = 0.5  # P(female) at or above this is called female (outside the Uncertain band's reading)
DEFAULT_BAND = (0.45, 0.55)  # P(female) inside this band reads "Uncertain"

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

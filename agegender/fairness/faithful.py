"""A faithfulness report's file (python -m agegender.faithfulness writes it beside a checkpoint) read, and what it
says per head and method: the predict page's picker text and the bias report's section. Torch-free; the
measuring is agegender.explain.faithfulness, which says what the numbers mean (SIGN).
"""

from __future__ import annotations

import json
from pathlib import Path

HEAD_MAPS = {"age": "older", "gender": "female"}  # the gradcam map each head is explained by
OVERALL = "overall"
FILE = "faithfulness-{split}.json"
SHOWN_SPLITS = ("test", "val")  # the page reads the first of these it finds beside the checkpoint
SIGN = ("ROADCombined = (LeRF - MoRF) / 2 over the percentiles: higher is more faithful; difference = method - "
        "RandomCAM on the same faces; beats_random: the difference's 95% bootstrap interval lies above 0")
BEATS = "beats random"
NOT_SHOWN = "not shown better than random"
NOT_RUN = "not checked"
SMALL = ", too few to judge"
NOTE_FAILS = "{method} is not shown better than random for {head} in: {groups}."
NOTE_ALL = "{method} beats random for every head and group checked."
NOTE_SOURCE = "Faithfulness (ROAD against a random map) from {source}, {n} faces: python -m agegender.faithfulness."
ERR_UNREADABLE = "{path} is not a faithfulness report (run python -m agegender.faithfulness again): {detail}"


class FaithfulnessError(ValueError):
    pass


def report_path(checkpoint: str | Path, split: str) -> Path:
    return Path(checkpoint) / FILE.format(split=split)


def read_file(path: str | Path) -> dict:
    """One faithfulness report; FaithfulnessError for a file that is not one (or is missing)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
        if not isinstance(report.get("heads"), dict):
            raise ValueError("no 'heads'")
    except (OSError, ValueError, AttributeError, RecursionError) as e:
        raise FaithfulnessError(ERR_UNREADABLE.format(path=path, detail=e)) from e
    return report


def read_report(checkpoint: str | Path) -> dict | None:
    """The faithfulness report beside a checkpoint (test's, else val's); None where there is none.
    FaithfulnessError for a file that is not one."""
    for split in SHOWN_SPLITS:
        p = report_path(checkpoint, split)
        if p.is_file():
            return read_file(p)
    return None


def _result(report: dict, head: str, method: str) -> dict | None:
    return report.get("heads", {}).get(head, {}).get("methods", {}).get(method)


def method_label(method: str, report: dict | None) -> str:
    """The picker's text for a method: its name, and per head whether it beats random where it was checked."""
    if not report:
        return method
    verdicts = []
    for head in HEAD_MAPS:
        r = _result(report, head, method)
        verdicts.append(f"{head}: {NOT_RUN if r is None else BEATS if r['beats_random'] else NOT_SHOWN}")
    return f"{method}  " + " · ".join(verdicts)


def method_note(method: str, report: dict | None) -> str | None:
    """Under the picker: which groups ``method`` fails for, per head (None without a report or a result)."""
    if not report:
        return None
    parts = []
    for head in HEAD_MAPS:
        r = _result(report, head, method)
        if r is None:
            continue
        failed = [f"{row['grouping']} {row['group']} (n={row['n']}{SMALL if row.get('too_small') else ''})"
                  for row in r["by_group"] if not row["beats_random"]]
        if not r["overall"]["beats_random"]:
            failed.insert(0, OVERALL)
        if failed:
            parts.append(NOTE_FAILS.format(method=method, head=head, groups=", ".join(failed)))
    if not parts and any(_result(report, h, method) for h in HEAD_MAPS):
        parts.append(NOTE_ALL.format(method=method))
    if not parts:
        return None
    return " ".join([*parts, NOTE_SOURCE.format(source=report.get("source", "?"), n=report.get("n", "?"))])


def report_section(report: dict) -> dict:
    """What the bias report keeps of a faithfulness report: per head and method whether it beats random overall
    and the groups it is not shown to beat random for."""
    heads = {}
    for head in HEAD_MAPS:
        methods = report.get("heads", {}).get(head, {}).get("methods", {})
        heads[head] = {m: {"beats_random": bool(r["overall"]["beats_random"]),
                           "fails_for": [f"{row['grouping']} {row['group']}" for row in r["by_group"]
                                         if not row["beats_random"]]}
                       for m, r in methods.items()}
    return {"source": report.get("source"), "n": report.get("n"), "sign": report.get("sign", SIGN), "heads": heads}

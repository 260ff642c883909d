"""Model card for the shipped checkpoints, generated from their metadata and test predictions.

    python -m agegender.modelcard [--root checkpoints] [--out checkpoints/README.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from .. import lookalikes
from ..fairness import faithful, sensitivity
from ..fairness.compare import gap_change, pair, paired_deltas
from ..fairness.groups import MIN_COUNT, N_BOOT, GroupReport, prepare
from ..fairness.measures import METRICS
from ..meta import META, WEIGHTS, soup_runs
from ..models.catalog import default_root, list_checkpoints
from ..models.checkpoint import read_meta
from ..predictions import file_name, load_predictions
from ..train.config import TrainConfig

SHOWN = ("age_mae", "age_bias", "gender_accuracy", "female_as_male", "male_as_female")
INTENDED_USE = """\
**Intended use.** Research and review of how facial age and gender models behave: explaining
predictions with Grad-CAM and measuring error by age, gender and ethnicity on UTKFace-like data.

**Not for** biometric identification, age verification, access control, hiring, credit, policing,
legal or medical decisions, or any other decision about a person. The labels are what the dataset
annotated (binary gender, five coarse ethnicity groups, apparent age); they do not describe how
people identify, and a model trained on them cannot either.

**Limitations.** UTKFace is web-scraped: its groups are unbalanced (few "Others", few very old
people, many babies among "Asian") and its labels are noisy. Several images of one person can fall
in different splits (the split is by file, not by identity), so held-out figures are optimistic: each
checkpoint's "Look-alikes" lines below say by how much (`python -m agegender.leakage`).
The models start from dlib's face-recognition network (CC0, trained on about 3 million faces whose
make-up dlib does not document, so its own biases come with it) and are fine-tuned at low resolution;
figures on other photo sources, lighting or poses will be worse. Faces must be detected and aligned as
the dashboard does. One training run is one draw: six runs of the earlier resnet18 recipe that differed
only in their seed scored 81.1-82.7% gender accuracy on FairFace-sample, with a best-to-worst ethnicity
gap of 5.7 to 15.8 points; two seeds of run 35's recipe scored 85.6 and 85.3%, gaps 5.3 and 5.8, and
each shipped checkpoint, the mean of two runs' weights, 86.5-86.9%, gap 4.4 (docs/experiments.md, runs 19-28,
33-37 and "Soups"). A gap difference between two checkpoints inside that spread is training noise, whatever
its interval over faces says.
"""


# settings that do not change what a run learns (paths, threads, time budget) or that are the mitigation itself
NOT_RECIPE = {"data", "out", "resume", "max_minutes", "save_every_minutes", "threads", "cache_dir", "device",
              "balance", "balance_by", "balance_power", "balance_within"}


def recipes(meta: dict) -> list[dict]:
    """The training settings behind a checkpoint: one run's, or each run's of a soup (agegender.train.soup)."""
    return [r.get("train_config", {}) for r in soup_runs(meta) or [meta]]


def recipe_differences(a: dict, b: dict) -> dict[str, tuple]:
    """Training settings two checkpoints' metas differ in, besides balancing; keys missing from an older
    meta take TrainConfig's defaults of the time the field was added. Soups are compared run by run, in order."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    ra, rb = recipes(a), recipes(b)
    if len(ra) != len(rb):
        return {"runs averaged": (len(ra), len(rb))}
    out = {}
    for i, (ca, cb) in enumerate(zip(ra, rb, strict=True)):
        ca, cb = {**defaults, **ca}, {**defaults, **cb}
        prefix = f"run {i + 1} " if len(ra) > 1 else ""
        out.update({prefix + k: (ca[k], cb[k]) for k in defaults if k not in NOT_RECIPE and ca[k] != cb[k]})
    return out


def baseline_for(balanced: Path, plain: list[Path], metas: dict) -> Path:
    """The unbalanced checkpoint trained most like ``balanced``: same architecture first, then the fewest
    other differences, so that the comparison measures the mitigation and as little else as possible."""
    return min(plain, key=lambda q: (metas[q]["arch"] != metas[balanced]["arch"],
                                     len(recipe_differences(metas[q], metas[balanced]))))


def _fmt(m: str, v: float) -> str:
    unit = METRICS[m].unit
    return f"{v:+.2f} {unit}" if m == "age_bias" else (f"{v:.2f} {unit}" if unit else f"{v:.1%}")


def _row(r: dict, m: str) -> str:
    if not np.isfinite(r[m]):
        return "–"  # undefined here, e.g. the male-as-female rate among women
    return f"{_fmt(m, r[m])} [{_fmt(m, r[m + '_lo'])}, {_fmt(m, r[m + '_hi'])}]"


def _balancing(b: dict | None) -> str:
    if not b:
        return "none"
    how = ("sampling, count ** -power" if b["method"] == "sampling"
           else "loss reweighting by each cell's last-epoch error (per head), (error / mean) ** power")
    within = f", each cell against the mean of its {b['within']}" if b.get("within") else ""
    return f"{how}, power {b['power']}, over {b['cells']}{within}"


def _start(meta: dict, cfg: dict) -> str:
    if meta.get("init_from"):
        src = meta["init_from"]
        return (f"fine-tuned from checkpoint {src['name']} (weights sha256 {src['weights_sha256'][:12]}, "
                f"{src.get('epochs')} epochs)")
    if meta.get("init_trunk"):
        return (f"trained from a converted trunk, {meta['init_trunk']['file']}, at {cfg.get('trunk_lr', 1.0)} x "
                "the heads' learning rate")
    return "trained from " + ("ImageNet weights" if cfg.get("pretrained") else "random initialisation")


def _device(cfg: dict) -> str:
    device = cfg.get("device")  # minutes on a GPU and on 2 CPU cores are not comparable
    return f" on {device}" if device in ("cpu", "cuda") else ""


def _photo_levers(cfg: dict) -> str:
    from ..models.preprocess import Augment

    on = [f"{k} {cfg['aug_' + k]}" for k in Augment.PHOTO if cfg.get("aug_" + k)]
    if cfg.get("aug_yaw") and cfg.get("aug_yaw_realign"):
        on[-1] += " (aligned as photos are)"
    return ", ".join(on) if on else "none"


def card_for(path: Path, n_boot: int = N_BOOT) -> str:
    meta = read_meta(path)
    cfg = meta.get("train_config", {})
    lines = [f"## {path.name}", ""]
    lines.append(f"- Architecture: {meta['arch']} ({_start(meta, cfg)}), input "
                 f"{meta['preprocess']['input_size']} px crop of a {meta['preprocess']['cache_size']} px aligned face.")
    data = " and ".join(dict.fromkeys(f"`{Path(c.get('data', '?')).name}`" for c in recipes(meta)))  # a soup's runs
    lines.append(f"- Data: UTKFace aligned chips as {data}, fingerprint "
                 f"`{meta.get('dataset_fingerprint', '?')[:16]}`; split by "
                 f"{meta.get('split_rule', '?')}.")
    runs = soup_runs(meta)
    if runs:
        lines.append(f"- Weights: the mean of {len(runs)} runs' weights (`python -m agegender.soup`), each run "
                     "below as it was trained; its figures are the mean's own.")
    for run in runs or [meta]:
        cfg = run.get("train_config", {})
        who = f"{run['name']} ({run['share']:.0%} of the mean), " if runs else ""
        lines.append(f"- Training: {who}{run.get('epochs_run')} epochs (best: {run.get('best_epoch')}), batch "
                     f"{cfg.get('batch_size')}, AdamW lr {cfg.get('lr')}, trunk rate {cfg.get('trunk_lr', 1.0)}, "
                     f"{cfg.get('age_loss')} age loss, {run.get('train_minutes')} min{_device(cfg)}; balancing: "
                     f"{_balancing(run.get('balance'))}; photo degradations: {_photo_levers(cfg)}.")
    try:
        df = prepare(load_predictions(path, "test"))
    except ValueError as e:
        return "\n".join(lines + ["", f"(no test predictions: {e})", ""])
    overall = GroupReport(df, n_boot=n_boot).overall
    lines += ["", f"Test split, n = {overall['n']}, bootstrap 95% intervals:", "",
              "| group | n | " + " | ".join(METRICS[m].label for m in SHOWN) + " |",
              "|---|---|" + "---|" * len(SHOWN),
              "| **all** | " + f"{overall['n']} | " + " | ".join(_row(overall, m) for m in SHOWN) + " |"]
    worst = []
    for grouping in ("race", "gender", "age_bucket"):
        rep = GroupReport(df, grouping, n_boot=n_boot, overall=overall)
        for _, r in rep.by_group.iterrows():
            flag = " (too small)" if r["too_small"] else ""
            lines.append(f"| {r[grouping]}{flag} | {r['n']} | " + " | ".join(_row(r, m) for m in SHOWN) + " |")
        d = rep.disparity()
        for _, r in d[d["metric"].isin(["age_mae", "gender_accuracy"])].iterrows():
            worst.append(f"- {r['label']} by {grouping}: worst **{r['worst_group']}** ({r['worst']:.3f}), "
                         f"best {r['best_group']} ({r['best']:.3f}), gap {r['gap']:.3f}")
    lines += ["", f"Where it fails most (groups with n >= {MIN_COUNT}):", "",
              *(worst or ["- no group is large enough"]), "", *look_alike_lines(path), *robustness_lines(path),
              *faithfulness_lines(path)]
    return "\n".join(lines)


def _diff(m: str, r: dict) -> str:
    if r["lo"] is None:  # too few faces left for an interval
        return _delta(m, r["difference"])
    return f"{_delta(m, r['difference'])} [{_delta(m, r['lo'])}, {_delta(m, r['hi'])}]"


def look_alike_lines(path: Path) -> list[str]:
    """The held-out faces that have a look-alike or a copy in training, and the test figures without them
    (lookalikes: the leakage file beside the checkpoint; nothing when there is none)."""
    leak = lookalikes.read_if_any(lookalikes.leakage_path(path))
    if leak is None:
        return []
    figures = (leak.get("checkpoint_figures") or {}).get("test") or {}
    kinds = [p["kind"] for p in leak["pairs"]]
    lines = [f"Look-alikes (`python -m agegender.leakage`): {len(kinds)} of the {leak['n']} val and test faces "
             f"({len(kinds) / max(leak['n'], 1):.1%}) have a look-alike in the training split "
             f"({kinds.count('duplicate')} of them the same picture). Test figures with them, without them, and the "
             "difference (paired bootstrap 95% interval):", "",
             "| group | n | n without | age MAE | without | difference | gender accuracy | without | difference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for group, r in figures.items():
        mae, acc = r["age_mae"], r["gender_accuracy"]
        if mae["without"] is None:
            continue
        lines.append(f"| {'**all**' if group == 'all' else group} | {r['n']} | {r['n_without']} | "
                     f"{_fmt('age_mae', mae['with'])} | {_fmt('age_mae', mae['without'])} | {_diff('age_mae', mae)} | "
                     f"{_fmt('gender_accuracy', acc['with'])} | {_fmt('gender_accuracy', acc['without'])} | "
                     f"{_diff('gender_accuracy', acc)} |")
    return lines + [""]


def _rate(r: dict) -> str:
    return f"{r['flip_rate']:.1%} [{r['flip_rate_lo']:.1%}, {r['flip_rate_hi']:.1%}]"


def robustness_lines(path: Path) -> list[str]:
    """The counterfactual sweep beside the checkpoint (its test split's, else val's; nothing when there is none):
    per perturbation, the share of gender calls that flip at full strength for women and men, and the groups
    whose sensitivity differs from the others' (BH q below 0.05). A file that is not one: a line saying so."""
    try:
        return _robustness_lines(path)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        return [f"Counterfactual sweep: a file beside the checkpoint cannot be read ({type(e).__name__}: {e}); "
                "make it again with python -m agegender.sweep", ""]


def _robustness_lines(path: Path) -> list[str]:
    found = [p for p in (sensitivity.sweep_path(path, s) for s in ("test", "val")) if p.is_file()]
    if not found:
        return []
    try:
        sweep = sensitivity.read_sweep(found[0])
    except sensitivity.SweepError as e:
        return [f"Counterfactual sweep: {e}", ""]
    split = found[0].stem.removeprefix("sweep-")
    lines = [f"Counterfactual faces (`python -m agegender.sweep`, {sweep.get('n_faces', '?')} {split} faces, each "
             "re-predicted under each perturbation at 4 strengths): gender calls flipped at full strength, per "
             "gender (95% interval), and the groups whose change per unit strength differs from the other groups' "
             "(Benjamini-Hochberg q < 0.05):", "",
             "| perturbation | full strength | women flipped | men flipped | groups that differ |",
             "|---|---|---|---|---|"]
    for name, pert in sweep["perturbations"].items():
        by = {(r["grouping"], r["group"]): r for r in pert["by_group"]}
        flagged = [f"{r['grouping'].replace('_', ' ')} {r['group']} ({', '.join(r['flagged'])})"
                   for r in pert["by_group"] if r.get("flagged")]
        women, men = by.get(("gender", "female")), by.get(("gender", "male"))
        levels = pert.get("levels") or ["?"]
        lines.append(f"| {name} | {pert.get('parameter', '')} {levels[-1]} | {_rate(women) if women else '-'} | "
                     f"{_rate(men) if men else '-'} | {', '.join(flagged) or 'none'} |")
    return lines + [""]


def faithfulness_lines(path: Path) -> list[str]:
    """The faithfulness report beside the checkpoint (nothing when there is none): per head and method whether
    its heatmap beats a random one (ROAD), overall with the interval, and the groups it is not shown to beat it for.
    A file that is not one: a line saying so."""
    try:
        return _faithfulness_lines(path)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        return [f"Heatmap faithfulness: the report beside the checkpoint cannot be read ({type(e).__name__}: {e}); "
                "make it again with python -m agegender.faithfulness", ""]


def _faithfulness_lines(path: Path) -> list[str]:
    try:
        report = faithful.read_report(path)
    except faithful.FaithfulnessError as e:
        return [f"Heatmap faithfulness: {e}", ""]
    if report is None:
        return []
    lines = [f"Heatmap faithfulness (`python -m agegender.faithfulness`, {report.get('n', '?')} faces of "
             f"{report.get('source', '?')}): ROAD's score of the heatmap minus a random map's on the same faces "
             "(higher: the heatmap marks more of what the head uses), 95% interval:", ""]
    for head, h in report["heads"].items():
        for method, r in h.get("methods", {}).items():
            o = r["overall"]
            fails = [f"{g['grouping']} {g['group']}" + (" (too few)" if g.get("too_small") else "")
                     for g in r["by_group"] if not g["beats_random"]]
            verdict = faithful.BEATS if o["beats_random"] else faithful.NOT_SHOWN
            lines.append(f"- {head}, {method}: {verdict}, {o['difference']:+.3f} [{o['difference_lo']:+.3f}, "
                         f"{o['difference_hi']:+.3f}] {h.get('unit', '')}; not shown better for: "
                         f"{', '.join(fails) or 'no group'}")
    return lines + [""]


def checkpoint_card(path: str | Path, n_boot: int = N_BOOT) -> str:
    """One checkpoint's model card from its own files (meta.json, predictions-test.csv): its section of
    the card write_card writes, then the intended use. The mitigation section is left out: it needs the
    baseline among other checkpoints. Raises CheckpointError for a folder that is not a checkpoint."""
    return "\n".join([card_for(Path(path), n_boot), INTENDED_USE])


# what each file of a checkpoint folder holds (DESIGN.md, "Checkpoint = folder, no pickle")
FILE_ROLES = {META: "architecture, preprocessing, age scaling, labels, training config, figures",
              WEIGHTS: "weights (safetensors, checked against meta.json's sha256)",
              "manifest": "the split of every training image",
              "history": "per-epoch training and validation figures",
              "predictions": "one row per image scored: truth, groups, predicted age, P(female)",
              "leakage": "held-out faces with a look-alike or a copy in training (agegender.leakage)",
              "sweep": "predictions of the same faces turned, blurred, darkened... per group (agegender.sweep)",
              "faithfulness": "whether each head's heatmap beats a random map, per group (agegender.faithfulness)"}


def checkpoint_files(path: str | Path) -> list[dict]:
    """The files of a checkpoint folder, each with its size in bytes and what it holds (FILE_ROLES; a file
    of another kind: "")."""
    def role(name: str) -> str:  # history-2.csv, a soup's second run's, is a history
        return FILE_ROLES.get(name) or FILE_ROLES.get(name.split(".")[0].split("-")[0], "")

    files = sorted(f for f in Path(path).iterdir() if f.is_file())
    return [{"file": f.name, "bytes": f.stat().st_size, "holds": role(f.name)} for f in files]


def mitigation(baseline: Path, balanced: Path, n_boot: int = N_BOOT) -> str:
    """What balancing did: overall deltas and the change of the ethnicity gaps, on the test split."""
    lines = [f"## Mitigation: {balanced.name} against {baseline.name}", ""]
    diff = recipe_differences(read_meta(baseline), read_meta(balanced))
    if diff:
        lines += ["**Not a clean comparison**: besides balancing, the two were trained differently ("
                  + "; ".join(f"{k}: {a} in {baseline.name}, {b} in {balanced.name}" for k, (a, b) in diff.items())
                  + "), so the figures below mix both effects.", ""]
    try:
        m = pair(load_predictions(baseline, "test"), load_predictions(balanced, "test"))
        overall = paired_deltas(m, n_boot=n_boot).iloc[0]
        gaps = gap_change(m, "race", n_boot=n_boot).set_index("metric")
        std = gap_change(m, "race", n_boot=n_boot, standardise="age_bucket").set_index("metric")
    except ValueError as e:
        return "\n".join(lines + [f"(cannot compare: {e})", ""])
    lines += [f"Test split, {len(m)} images scored by both; paired bootstrap 95% intervals. The gap is the best "
              "ethnicity group's figure against the worst one's.", "",
              f"| | {baseline.name} | {balanced.name} | change |", "|---|---|---|---|"]
    for name in ("age_mae", "gender_accuracy"):
        lo, hi = overall[f"{name}_delta_lo"], overall[f"{name}_delta_hi"]
        d = overall[f"{name}_delta"]
        lines.append(f"| overall {METRICS[name].label} | {_fmt(name, overall[f'{name}_a'])} | "
                     f"{_fmt(name, overall[f'{name}_b'])} | {_delta(name, d)} "
                     f"[{_delta(name, lo)}, {_delta(name, hi)}] |")
    for what, table in (("ethnicity gap", gaps), ("ethnicity gap, age-standardised,", std)):
        for name, r in table.iterrows():
            lines.append(f"| {what} in {METRICS[name].label} | {_fmt(name, r['gap_a'])} | {_fmt(name, r['gap_b'])} "
                         f"| {r['change']:+.0%} [{r['change_lo']:+.0%}, {r['change_hi']:+.0%}] |")
    lines += ["", "Age-standardised: each ethnicity group weighted to the overall age-bucket mix, so that a group "
              "is not judged worse only for holding more of the older, harder faces."]
    return "\n".join(lines + [""])


def _delta(m: str, v: float) -> str:
    return f"{v:+.2f} {METRICS[m].unit}" if METRICS[m].unit else f"{v * 100:+.1f} pts"


def write_card(root: Path, out: Path, n_boot: int = N_BOOT) -> str:
    parts = ["# Model card: agegender checkpoints", "",
             "Generated by `python -m agegender.modelcard` from each checkpoint's meta.json and "
             f"{file_name('test')}; do not edit by hand.", "", INTENDED_USE]
    paths = list_checkpoints(root)
    parts += [card_for(p, n_boot) for p in paths]
    metas = {p: read_meta(p) for p in paths}
    plain = [p for p in paths if not metas[p].get("balance")]
    for p in paths:
        if metas[p].get("balance") and plain:
            parts.append(mitigation(baseline_for(p, plain, metas), p, n_boot))
    text = "\n".join(parts)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agegender.modelcard", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="checkpoints folder (default: the repo's checkpoints/)")
    p.add_argument("--out", default=None, help="default: ROOT/README.md")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    args = p.parse_args(argv)
    root = Path(args.root) if args.root else default_root()
    out = Path(args.out) if args.out else root / "README.md"
    write_card(root, out, args.n_boot)
    print(f"model card written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

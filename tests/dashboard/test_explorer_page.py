"""The Error explorer as a reviewer uses it, on the shipped checkpoint and the real UTKFace: a verdict goes to the
face on screen whatever the clicks before it; the dataset is found the way the rest of the app finds it; the
verdicts live beside the evaluation results, outside the repository."""

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Selectbox

from agegender.evaluation.results import results_dir, set_folder
from agegender.models.catalog import DATA_ENV, DATA_FIELD, default_data_path, trained_on
from agegender.predictions import load_predictions
from agegender.report import command as report
from agegender.review import audit as A
from agegender.review import audit_run as AR
from agegender.review import verdicts as R
from agegender.review.explorer import NO_DATA, NO_DATA_AT

from ..conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")
SHIPPED = ROOT / "checkpoints"
BASELINE = SHIPPED / "dlib-resnet29-utkface"  # what a fresh session's picker holds (catalog.default_pick)
SUSPECTS = "Suspected label errors"
SHOW = ("Worst age errors", "Misgendered", SUSPECTS)
SEQUENCES, SEED = 20, 35


class HeldPick(Selectbox):
    """The Explain picker as a browser sends it: the label it holds, whatever the server's value."""

    held = ""

    @property
    def _widget_state(self) -> WidgetState:
        return WidgetState(id=self.id, string_value=self.held)


class Reviewer:
    """One browser session on the explorer. AppTest sends back the server's own value of each widget; a browser
    sends back what it holds, and for a selectbox that is the label it shows, kept per element id until the server
    sets another (streamlit's Selectbox.js). The issue's bug lived in that difference: after a "Show" switch the
    server kept its pick (1_0_2..., #5 in the new list) and sent no value, the browser kept showing its old label
    "#1 1_0_2...", which the new list does not hold, and the click sent that label back, so the server's pick fell
    back to the list's first face. So the Explain picker here is driven as the browser drives it (checked in
    Chromium: the same clicks gave the same rows); every other widget as AppTest does."""

    def __init__(self, at: AppTest):
        self.at, self.pick_id, self.label = at, None, None
        self.hold()

    def pick_box(self):
        return next((s for s in self.at.selectbox if s.key == "ex_pick"), None)

    def hold(self) -> None:
        """After a run: the label the browser now shows (a new element starts at the server's default or set value)."""
        box = self.pick_box()
        if box is None:
            self.pick_id = self.label = None
            return
        if box.proto.set_value:
            self.label = box.proto.raw_value
        elif box.id != self.pick_id:
            self.label = box.options[box.proto.default] if box.options else None
        self.pick_id = box.id

    def run(self) -> None:
        box = self.pick_box()
        if box is not None and self.label is not None:
            box.__class__, box.held = HeldPick, self.label
        self.at.run()
        assert not self.at.exception, self.at.exception
        assert not self.at.error, [e.value for e in self.at.error]
        self.hold()

    @property
    def shown(self) -> str | None:
        """The face the picker shows: its label is "#rank file"."""
        return self.label.split(" ", 1)[1] if self.label else None

    def verdict_buttons(self) -> dict:
        return {b.label: b for b in self.at.button if (b.key or "").startswith("ex_verdict")}


@pytest.fixture
def explorer(monkeypatch, tmp_path, real_data):
    """A fresh session on the Error explorer, on the shipped checkpoints and the real UTKFace, with the results
    (and so the verdicts) in tmp_path."""
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(SHIPPED))
    monkeypatch.setenv("AGEGENDER_UTKFACE", str(real_data))
    monkeypatch.setenv("AGEGENDER_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv(R.IN_CHECKPOINT_ENV, raising=False)

    def start() -> Reviewer:
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.switch_page("pages/explorer.py")
        reviewer = Reviewer(at)
        reviewer.run()
        return reviewer
    return start


def act(r: Reviewer, action: str, rng: random.Random, table: pd.DataFrame, presses: list) -> None:
    """One reviewer's move; a verdict press is checked against the review file at once."""
    if action == "show":
        r.at.radio(key="ex_mode").set_value(rng.choice([m for m in SHOW if m != r.at.radio(key="ex_mode").value]))
    elif action == "group":
        box = r.at.selectbox(key="ex_group_col")
        box.set_value(rng.choice(box.options))
        r.run()
        values = [s for s in r.at.selectbox if s.key == "ex_group_value"]
        if not values or rng.random() < 0.5:
            return
        values[0].set_value(rng.choice(values[0].options))
    elif action == "pick":
        box = r.pick_box()
        if box is None:
            return
        r.label = rng.choice(box.options)  # the reviewer picks another face in the browser
    else:  # to the suspects if elsewhere (the issue's move), then a verdict on the face shown
        if r.at.radio(key="ex_mode").value != SUSPECTS:
            r.at.radio(key="ex_mode").set_value(SUSPECTS)
            r.run()
        buttons = r.verdict_buttons()
        if not buttons:  # a group without suspects
            return
        label = rng.choice(sorted(buttons))
        shown = r.shown
        assert any(c.value.startswith(f"A verdict is recorded for {shown},") for c in r.at.caption)
        buttons[label].click()
        r.run()
        check_verdict(shown, label, table)
        assert r.shown == shown  # and the page stays on it
        presses.append((shown, label))
        return
    r.run()


def check_verdict(shown: str, label: str, table: pd.DataFrame) -> None:
    """The review file's last row is the verdict on the face shown, with its label ("Clear" removes its row)."""
    review = R.read_review(R.review_path(BASELINE, "val"))
    face = table[table["file"] == shown].iloc[0]
    if label == "Clear the verdict":
        assert shown not in set(review["file"])
        return
    last = review.iloc[-1]
    assert (last["file"], last["verdict"]) == (shown, {"Label confirmed": R.CONFIRMED, "Label wrong": R.WRONG}[label])
    assert (float(last["age"]), last["gender"]) == (float(face["age"]), face["gender"])


def check_face_view(r: Reviewer, table: pd.DataFrame) -> None:
    """The browser shows a face of the list on screen, and that face is the one explained: its prediction above
    the maps, and the maps drawn."""
    if r.shown is None:
        return
    assert r.label in r.pick_box().options
    face = table[table["file"] == r.shown].iloc[0]
    assert any(f"age **{face['pred_age']:.1f}** y" in m.value for m in r.at.markdown)
    maps = [im for im in r.at.get("image") if "evidence for" in (im.proto.imgs[0].caption if im.proto.imgs else "")]
    assert len(maps) >= 2


def test_a_verdict_always_names_the_face_on_screen(explorer):
    """20 generated sequences of 4-8 moves (switch Show, change the group, pick a face, press a verdict), each in
    a fresh session that starts on the worst age errors: after every press the review file's last row is the face
    the picker showed, with its label."""
    rng = random.Random(SEED)
    table = load_predictions(BASELINE, "val")
    shipped = sorted(p.name for p in BASELINE.iterdir())
    presses = []
    for _ in range(SEQUENCES):
        r = explorer()
        moves = ["show", *rng.choices(("show", "group", "pick", "verdict"), (2, 1, 2, 3), k=rng.randint(3, 7))]
        for move in moves:  # the first leaves the worst age errors, as the issue's reviewer did
            act(r, move, rng, table, presses)
            check_face_view(r, table)
    assert len(presses) >= 2 * SEQUENCES and len({face for face, _ in presses}) >= 5
    assert sorted(p.name for p in BASELINE.iterdir()) == shipped  # nothing written into the shipped checkpoint


def test_the_issues_click_sequence(explorer):
    """The issue's reproduction: switch Show to the suspects and press "Label wrong". The browser shows the
    suspects' own #1 (not the worst error's #1 under its old rank), the verdict names it, and the page stays."""
    r = explorer()
    r.at.radio(key="ex_mode").set_value(SUSPECTS)
    r.run()
    shown = r.shown
    assert r.label == r.pick_box().options[0]
    r.verdict_buttons()["Label wrong"].click()
    r.run()
    check_verdict(shown, "Label wrong", load_predictions(BASELINE, "val"))
    assert r.shown == shown


# ---- the dataset, found as the rest of the app finds it ---------------------------------------------------------

def with_data(src: Path, dest: Path, data: str, runs: list[tuple[str, str | None]] = ()) -> Path:
    """A copy of checkpoint ``src`` whose meta.json records ``data`` as its training data, and ``runs`` (data,
    fingerprint) as a soup's runs; a soup's own data is then another copy (as the shipped soups' WebP zip)."""
    shutil.copytree(src, dest)
    meta = json.loads((dest / "meta.json").read_text())
    meta["train_config"]["data"] = data
    if runs:
        meta["dataset_fingerprint"] = "another copy"
        meta["soup"] = {"runs": [{"train_config": {"data": d}, "dataset_fingerprint": f} for d, f in runs]}
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


def test_the_data_path_is_the_variable_else_the_data_a_checkpoint_was_trained_on(tiny_checkpoint, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    missing = str(tmp_path / "gone")
    scored = json.loads((tiny_checkpoint / "meta.json").read_text())["metrics"]["val"].get("dataset_fingerprint")
    assert scored  # the fingerprint the val predictions were scored on
    plain = with_data(tiny_checkpoint, tmp_path / "plain", str(here))
    souped = with_data(tiny_checkpoint, tmp_path / "soup", missing, [(str(here), "another"), (str(there), scored)])
    lost = with_data(tiny_checkpoint, tmp_path / "lost", missing)
    assert default_data_path() == ""
    assert default_data_path([plain]) == str(here)
    assert trained_on(souped) == [str(there), missing, str(here)]  # the data val was scored on first
    assert default_data_path([souped]) == str(there)
    assert default_data_path([lost]) == "" and default_data_path([tmp_path / "no-checkpoint"]) == ""
    assert default_data_path([lost, plain]) == str(here)
    monkeypatch.setenv(DATA_ENV, missing)
    assert default_data_path([plain]) == missing  # the variable, when set, is what the user asked for


def test_the_shipped_checkpoints_name_the_data_their_predictions_were_scored_on():
    for ck in (BASELINE, SHIPPED / "dlib-resnet29-balanced"):
        meta = json.loads((ck / "meta.json").read_text())
        scored = meta["metrics"]["val"]["dataset_fingerprint"]
        first = next(r for r in meta["soup"]["runs"] if r["dataset_fingerprint"] == scored)
        assert trained_on(ck)[0] == first["train_config"]["data"]


@pytest.fixture
def tiny_explorer(monkeypatch, tmp_path):
    """The explorer in a fresh session on one checkpoint, with no $AGEGENDER_UTKFACE."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("AGEGENDER_RESULTS", str(tmp_path / "results"))

    def start(ck: Path) -> AppTest:
        monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(ck.parent))
        at = AppTest.from_file(APP, default_timeout=120).run()
        return at.switch_page("pages/explorer.py").run()
    return start


def test_the_explorer_finds_the_data_its_checkpoint_was_trained_on(tiny_explorer, tiny_checkpoint, tiny_data,
                                                                   tmp_path):
    at = tiny_explorer(with_data(tiny_checkpoint, tmp_path / "ck" / "tiny", str(tiny_data)))
    assert not at.exception and not at.error and not at.info
    assert any(c.value.startswith(f"UTKFace images from {tiny_data}, the data tiny was trained on") for c in at.caption)
    assert len(at.get("image")) >= 6  # the thumbnails


def test_without_data_the_explorer_says_what_to_do_in_the_app(tiny_explorer, tiny_checkpoint, tmp_path):
    at = tiny_explorer(with_data(tiny_checkpoint, tmp_path / "ck" / "tiny", str(tmp_path / "gone")))
    assert not at.exception and not at.error
    assert [i.value for i in at.info] == [NO_DATA]
    assert f'"{DATA_FIELD}"' in NO_DATA and DATA_ENV in NO_DATA and "--" not in NO_DATA


def test_a_data_path_that_is_not_there_is_named_with_what_to_do(tiny_explorer, tiny_checkpoint, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "typo"))
    at = tiny_explorer(with_data(tiny_checkpoint, tmp_path / "ck" / "tiny", str(tmp_path / "gone")))
    assert not at.exception and not at.error
    assert [i.value for i in at.info] == [NO_DATA_AT.format(path=tmp_path / "typo")]
    assert "--" not in NO_DATA_AT


# ---- the verdicts, beside the evaluation results ----------------------------------------------------------------

@pytest.fixture
def cut(tmp_path):
    """The shipped baseline's meta.json and its val predictions cut to its suspects and every tenth face (the
    shipped figures, fewer rows to report on), and its audit."""
    ck = tmp_path / "ck" / BASELINE.name
    ck.mkdir(parents=True)
    shutil.copy(BASELINE / "meta.json", ck)
    audit = A.audit_table(load_predictions(BASELINE, "val"))
    rows = pd.read_csv(BASELINE / "predictions-val.csv")
    keep = set(audit[audit["flagged"]]["file"]) | set(rows["file"].iloc[::10])
    rows[rows["file"].isin(keep)].to_csv(ck / "predictions-val.csv", index=False)
    return ck, audit[audit["flagged"]]


def test_verdicts_live_outside_the_repository_one_file_per_checkpoint_split_and_per_set(tmp_path, monkeypatch):
    for env in ("AGEGENDER_RESULTS", "AGEGENDER_CACHE", R.IN_CHECKPOINT_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default cache is ~/.cache/agegender
    shipped = sorted(p.name for p in BASELINE.iterdir())
    path = R.review_path(BASELINE, "val")
    assert not path.resolve().is_relative_to(ROOT.resolve())
    assert path.is_relative_to(results_dir()) and results_dir().is_relative_to(tmp_path / "home")
    (tmp_path / "a" / "ck").mkdir(parents=True)
    (tmp_path / "b" / "ck").mkdir(parents=True)
    folders = (BASELINE, SHIPPED / "dlib-resnet29-balanced", tmp_path / "a" / "ck", tmp_path / "b" / "ck")
    paths = [R.review_path(ck, source) for ck in folders for source in ("val", "test")]
    assert len(set(paths)) == len(paths)  # two folders of one name included
    # a set's labels are the set's: every checkpoint reviewed on it shares its verdicts
    shared = {R.review_path(ck, "ff") for ck in folders}
    assert shared == {set_folder("ff") / "label-review-ff.csv"} and not shared & set(paths)
    assert sorted(p.name for p in BASELINE.iterdir()) == shipped and not any(p.exists() for p in [*paths, *shared])


def test_verdicts_go_into_the_checkpoint_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(R.IN_CHECKPOINT_ENV, raising=False)
    ck = tmp_path / "ck"
    assert R.review_path(ck, "val").parent != ck
    assert R.review_path(ck, "val", in_checkpoint=True) == ck / "label-review-val.csv"
    assert R.review_path(ck, "ff", in_checkpoint=True) == set_folder("ff") / "label-review-ff.csv"  # the set's
    monkeypatch.setenv(R.IN_CHECKPOINT_ENV, "1")
    assert R.review_path(ck, "val") == ck / "label-review-val.csv"


def test_verdicts_recorded_where_earlier_versions_kept_them_are_still_read(cut, monkeypatch):
    monkeypatch.delenv(R.IN_CHECKPOINT_ENV, raising=False)
    ck, flagged = cut
    old = ck / "label-review-val.csv"
    R.mark(old, flagged.iloc[[0]], R.WRONG)  # as the explorer wrote it before
    R.mark(set_folder("ff") / "label-review-ff.csv", flagged.iloc[[1]], R.CONFIRMED)  # an evaluation set's, before
    before = old.read_bytes()
    path = R.review_path(ck, "val")
    assert path != old
    assert R.read_review(path).set_index("file")["verdict"].to_dict() == {flagged["file"].iloc[0]: R.WRONG}
    R.mark(path, flagged.iloc[[2]], R.CONFIRMED)
    assert R.read_review(R.review_path(ck, "val"))["file"].tolist() == flagged["file"].iloc[[0, 2]].tolist()
    assert old.read_bytes() == before  # left as it was
    assert R.read_review(R.review_path(ck, "ff"))["file"].tolist() == [flagged["file"].iloc[1]]


def test_the_review_flags_of_the_report_and_the_audit_keep_working(cut, real_data, tmp_path, capsys):
    ck, flagged = cut
    R.mark(ck / "label-review-val.csv", flagged.iloc[[0]], R.WRONG)  # the checkpoint's, from before
    other = tmp_path / "mine.csv"
    R.mark(other, flagged.iloc[[1, 2]], R.CONFIRMED)
    reviewed = []
    for extra in ([], ["--review", str(other)]):
        js = tmp_path / "r.json"
        assert report.main(["--checkpoint", str(ck), "--split", "val", "--json", str(js), "--n-boot", "10",
                            *extra]) == 0
        reviewed.append(json.loads(js.read_text())["label_audit"]["reviewed"])
    assert reviewed == [{R.CONFIRMED: 0, R.WRONG: 1}, {R.CONFIRMED: 2, R.WRONG: 0}]
    verdicts = []
    for extra in ([], ["--review", str(other)]):
        js = tmp_path / "a.json"
        assert AR.main(["--checkpoint", str(ck), "--data", str(real_data), "--split", "val", "--json", str(js),
                       "--top", "0", *extra]) == 0
        verdicts.append({i["file"]: i["verdict"] for i in json.loads(js.read_text())["images"] if i["verdict"]})
    capsys.readouterr()
    assert verdicts == [{flagged["file"].iloc[0]: R.WRONG}, dict.fromkeys(flagged["file"].iloc[[1, 2]], R.CONFIRMED)]

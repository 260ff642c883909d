"""Issue 14: allow-lists for the paths a shared dashboard reads (dashboard.access), and the health
flag for a checkpoint whose validation figures say it is untrained or diverged (catalog.health)."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from agegender.models.catalog import (
    FLAGGED,
    HEALTH_AGE,
    HEALTH_CHANCE,
    HEALTH_FEW,
    HEALTH_MISSING,
    HEALTH_NO_VAL,
    HEALTH_SCALE,
    META,
    REPO_CHECKPOINTS,
    health,
    health_of,
    read_meta,
    summary_table,
)
from dashboard.access import (
    CHECKPOINT_ENV,
    CHECKPOINT_SECRET,
    DATA_ENV,
    DATA_SECRET,
    ERR_BAD_SETTING,
    ERR_NOT_ALLOWED,
    ERR_UNREADABLE,
    FROM_ENV,
    FROM_SECRET,
    RESOLVES,
    AllowList,
    BadSetting,
    NotAllowed,
    checkpoint_allow_list,
    data_allow_list,
    is_allowed,
    parse_roots,
    pickable,
)

from ..conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")
SHIPPED = [REPO_CHECKPOINTS / "dlib-resnet29-utkface", REPO_CHECKPOINTS / "dlib-resnet29-balanced"]
ENV_SOURCE = FROM_ENV.format(env=CHECKPOINT_ENV, sep=os.pathsep)


@pytest.fixture(autouse=True)
def no_allow_lists(monkeypatch):
    """Each test starts from the local default: nothing set."""
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    monkeypatch.delenv(DATA_ENV, raising=False)


@pytest.fixture
def tree(tmp_path):
    """allowed/ with a checkpoint-like folder in it, outside/ next to it, and a symlink
    allowed/escape -> outside/."""
    (tmp_path / "allowed" / "ck").mkdir(parents=True)
    (tmp_path / "outside" / "ck").mkdir(parents=True)
    (tmp_path / "allowed" / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    return tmp_path


# --- allow-lists -----------------------------------------------------------------------------------


def test_unset_allows_everything(tree):
    assert is_allowed("/etc", None) and is_allowed(tree / "outside" / "ck", None)
    for allowed in (checkpoint_allow_list(), data_allow_list(), checkpoint_allow_list(secret=None)):
        assert allowed.roots is None and allowed.allows("/etc")
        allowed.check(tree / "outside")  # no refusal


def test_blank_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv(CHECKPOINT_ENV, "  ")
    assert checkpoint_allow_list().roots is None


def test_inside_and_outside(tree):
    roots = parse_roots(str(tree / "allowed"))
    assert roots == ((tree / "allowed").resolve(),)
    assert is_allowed(tree / "allowed", roots)
    assert is_allowed(tree / "allowed" / "ck", roots)
    assert is_allowed(tree / "allowed" / "not-yet-there", roots)
    assert not is_allowed(tree / "outside" / "ck", roots)
    assert not is_allowed(tree / "allowed-but-not-really", roots)  # a shared prefix is not a parent
    assert not is_allowed("/", roots)


def test_dotdot_cannot_escape(tree):
    roots = parse_roots([str(tree / "allowed")])
    assert not is_allowed(tree / "allowed" / ".." / "outside" / "ck", roots)
    assert not is_allowed(f"{tree}/allowed/ck/../../outside", roots)
    assert is_allowed(tree / "allowed" / "x" / ".." / "ck", roots)


def test_symlink_cannot_escape(tree):
    roots = parse_roots([str(tree / "allowed")])
    assert not is_allowed(tree / "allowed" / "escape", roots)
    assert not is_allowed(tree / "allowed" / "escape" / "ck", roots)
    # a link from outside into the root is fine: what counts is where it leads
    (tree / "into").symlink_to(tree / "allowed" / "ck", target_is_directory=True)
    assert is_allowed(tree / "into", roots)
    # and a root that is itself a link allows what is under its target
    (tree / "link-root").symlink_to(tree / "allowed", target_is_directory=True)
    assert is_allowed(tree / "allowed" / "ck", parse_roots([str(tree / "link-root")]))


def test_a_symlink_loop_is_refused(tree):
    (tree / "allowed" / "loop").symlink_to(tree / "allowed" / "loop")
    assert not is_allowed(tree / "allowed" / "loop" / "x", parse_roots([str(tree / "allowed")]))


def test_roots_from_the_variable(monkeypatch, tree):
    a, b = tree / "allowed", tree / "outside"
    monkeypatch.setenv(CHECKPOINT_ENV, f"{a}{os.pathsep}{os.pathsep}{b}{os.pathsep}")
    allowed = checkpoint_allow_list()
    assert allowed.roots == (a.resolve(), b.resolve()) and allowed.source == ENV_SOURCE
    assert allowed.allows(b / "ck") and not allowed.allows(tree)


def test_the_variable_wins_over_the_secret(monkeypatch, tree):
    monkeypatch.setenv(CHECKPOINT_ENV, str(tree / "allowed"))
    allowed = checkpoint_allow_list(secret=[str(tree / "outside")])
    assert allowed.roots == ((tree / "allowed").resolve(),)


def test_roots_from_the_secret(tree):
    allowed = data_allow_list(secret=[str(tree / "allowed")])
    assert allowed.source == FROM_SECRET.format(key=DATA_SECRET) == "allowed_data in .streamlit/secrets.toml"
    assert allowed.allows(tree / "allowed" / "UTKFace.zip") and not allowed.allows(tree / "outside")
    assert data_allow_list(secret=str(tree / "allowed")).roots == allowed.roots  # one string works too
    nothing = data_allow_list(secret=[])  # set, but empty: nothing is allowed
    assert nothing.roots == () and not nothing.allows(tree / "allowed")


def test_refusal_message_names_the_path_and_how_to_allow_it(monkeypatch, tree):
    monkeypatch.setenv(CHECKPOINT_ENV, str(tree / "allowed"))
    with pytest.raises(NotAllowed) as e:
        checkpoint_allow_list().check(tree / "outside" / "ck")
    assert str(e.value) == ERR_NOT_ALLOWED.format(
        what="checkpoint folder", path=tree / "outside" / "ck", roots=(tree / "allowed").resolve(),
        source=ENV_SOURCE)
    assert str(e.value) == (
        f"checkpoint folder {tree / 'outside' / 'ck'} is outside the folders this dashboard may read "
        f"({(tree / 'allowed').resolve()}); to allow it, add its folder to "
        f"${CHECKPOINT_ENV} (folders separated by '{os.pathsep}')")


def test_refusal_message_shows_where_a_link_leads(tree):
    link = tree / "allowed" / "escape" / "ck"
    with pytest.raises(NotAllowed) as e:
        data_allow_list(secret=[str(tree / "allowed")]).check(link)
    shown = RESOLVES.format(path=link, resolved=(tree / "outside" / "ck").resolve())
    assert str(e.value) == ERR_NOT_ALLOWED.format(what="dataset", path=shown, roots=(tree / "allowed").resolve(),
                                                  source=FROM_SECRET.format(key=DATA_SECRET))


@pytest.mark.parametrize("bad", [5, {"a": "/srv"}, ["/srv", 3]])
def test_a_malformed_setting_allows_nothing_and_says_why(bad, tree):
    source = FROM_SECRET.format(key=CHECKPOINT_SECRET)
    with pytest.raises(BadSetting) as e:
        parse_roots(bad, source)
    message = ERR_BAD_SETTING.format(source=source, value=bad)
    assert str(e.value) == message
    allowed = checkpoint_allow_list(secret=bad)
    assert allowed.problem == message and not allowed.allows(tree / "allowed")
    with pytest.raises(NotAllowed, match="until it is, no typed path is allowed"):
        allowed.check(tree / "allowed")


def test_an_unreadable_secrets_file_allows_nothing(monkeypatch, tree):
    allowed = checkpoint_allow_list(secrets_error="Invalid value")
    assert allowed.roots == () and not allowed.allows(tree / "allowed")
    assert allowed.problem == ERR_UNREADABLE.format(file=".streamlit/secrets.toml", detail="Invalid value")
    monkeypatch.setenv(CHECKPOINT_ENV, str(tree / "allowed"))  # the variable, when set, does not need the file
    assert checkpoint_allow_list(secrets_error="Invalid value").allows(tree / "allowed")


def test_the_picker_offers_only_allowed_checkpoints(tree):
    default, shelf = tree / "checkpoints", tree / "allowed"
    for folder in (default / "shipped", shelf / "ck", tree / "outside" / "ck", shelf / "single"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META).write_text("{}")
    assert pickable(AllowList("checkpoint folder"), default) == [default / "shipped"]  # unset: as before
    # set: the default folder is not listed, nor is allowed/escape (a link to outside/)
    allowed = AllowList("checkpoint folder", parse_roots([str(shelf)]))
    assert pickable(allowed, default) == [shelf / "ck", shelf / "single"]
    both = AllowList("checkpoint folder", parse_roots([str(default), str(shelf / "single")]))
    assert pickable(both, default) == [default / "shipped", shelf / "single"]  # a root may be a checkpoint


# --- health ----------------------------------------------------------------------------------------

GOOD = {"age_scale": 20.0, "metrics": {"val": {"n": 2000, "age_mae": 4.5, "age_cs5": 0.67, "age_bias": -0.2,
                                               "gender_accuracy": 0.94, "gender_auc": 0.98}}}


def meta_with(val=None, **top):
    meta = json.loads(json.dumps(GOOD))
    meta["metrics"]["val"].update(val or {})
    meta.update(top)
    return meta


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoints_are_healthy(path):
    assert health(read_meta(path)) is None and health_of(path) is None


def test_healthy_and_borderline_metas():
    assert health(GOOD) is None
    assert health(meta_with({"n": 100, "gender_accuracy": 0.61, "gender_auc": 0.61, "age_mae": 13.9})) is None


@pytest.mark.parametrize("meta, reason", [
    ({"age_scale": 20.0}, HEALTH_NO_VAL),
    ({"age_scale": 20.0, "metrics": {"test": GOOD["metrics"]["val"]}}, HEALTH_NO_VAL),
    ({"age_scale": 20.0, "metrics": {"val": {}}}, HEALTH_NO_VAL),
    (meta_with({"n": 6}), HEALTH_FEW.format(n=6, min_n=100)),
    (meta_with({"age_mae": math.nan}), HEALTH_MISSING.format(figure="age MAE", value=math.nan)),
    (meta_with({"gender_auc": None}), HEALTH_MISSING.format(figure="gender AUC", value="missing")),
    (meta_with({"gender_accuracy": math.inf}), HEALTH_MISSING.format(figure="gender accuracy", value=math.inf)),
    (meta_with({"gender_accuracy": 0.6}), HEALTH_CHANCE.format(figure="gender accuracy", value=0.6, limit=0.6)),
    (meta_with({"gender_auc": 0.5}), HEALTH_CHANCE.format(figure="gender AUC", value=0.5, limit=0.6)),
    (meta_with({"age_mae": 14.0}), HEALTH_AGE.format(value=14.0, limit=14.0, factor=0.7, scale=20.0)),
    (meta_with(age_scale=0), HEALTH_SCALE.format(value=0)),
])
def test_each_clause_names_the_figure(meta, reason):
    assert health(meta) == reason


def test_messages_word_for_word():
    assert health(meta_with({"age_mae": math.nan})) == "validation age MAE is nan"
    assert health(meta_with({"gender_auc": 0.55})) == (
        "validation gender AUC 0.55 is no better than chance (0.60 or less)")
    # the 1-epoch checkpoint that guessed ages near 997 years
    assert health(meta_with({"age_mae": 963.2}, age_scale=19.4)) == (
        "validation age MAE 963.2 y is no better than always guessing the mean training age "
        "(13.6 y or more: 0.7 x the 19.4 y spread of the training ages)")


def test_every_reason_that_applies_is_given():
    meta = meta_with({"n": 40, "gender_accuracy": 0.5, "age_mae": 30.0})
    assert health(meta) == "; ".join([HEALTH_FEW.format(n=40, min_n=100),
                                      HEALTH_CHANCE.format(figure="gender accuracy", value=0.5, limit=0.6),
                                      HEALTH_AGE.format(value=30.0, limit=14.0, factor=0.7, scale=20.0)])


def test_the_tiny_checkpoint_is_flagged(tiny_checkpoint, tmp_path):
    meta = read_meta(tiny_checkpoint)
    n = meta["metrics"]["val"]["n"]
    # a 1-epoch model's other figures depend on the torch build; its 6 val images are flagged on any
    assert n < 100 and HEALTH_FEW.format(n=n, min_n=100) in health(meta).split("; ")
    shutil.copytree(tiny_checkpoint, tmp_path / "ck" / "tiny")
    (tmp_path / "ck" / "broken").mkdir()
    (tmp_path / "ck" / "broken" / META).write_text("{ truncated")
    table = summary_table(tmp_path / "ck")
    assert dict(zip(table["checkpoint"], table["health"].fillna(""), strict=True)) == {"broken": "",
                                                                                      "tiny": health(meta)}
    assert health_of(tmp_path / "ck" / "broken").startswith(f"{tmp_path / 'ck' / 'broken'}/meta.json is corrupt")


def test_the_catalog_imports_no_torch():
    code = ("import sys; from agegender.models import catalog; from dashboard import access; "
            "t = catalog.summary_table(); "
            "assert len(t) >= 2 and (t['health'] == 'ok').all(), t; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "AGEGENDER_CHECKPOINTS": str(REPO_CHECKPOINTS)})
    assert out.stdout.strip() == "[]"


# --- the dashboard ---------------------------------------------------------------------------------


@pytest.fixture
def shelf(tiny_checkpoint, tmp_path, monkeypatch):
    """An allowed root with the tiny checkpoint one level down (so that the picker does not list
    and pre-pick it), the same checkpoint outside the root, and a default root with one too."""
    shutil.copytree(tiny_checkpoint, tmp_path / "allowed" / "runs" / "tiny")
    shutil.copytree(tiny_checkpoint, tmp_path / "outside" / "tiny")
    shutil.copytree(tiny_checkpoint, tmp_path / "checkpoints" / "shipped")
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.delenv("AGEGENDER_UTKFACE", raising=False)
    return tmp_path


def full_app(typed=None):
    at = AppTest.from_file(APP, default_timeout=60)
    # AppTest runs app.py, and so the sidebar, on the first run only: type before it
    for key, value in (typed or {}).items():
        at.session_state[key] = value
    return at.run()


def picker_app():
    """The shared sidebar and what a page gets from it (AppTest reruns all of this, unlike app.py)."""
    import streamlit as st

    from dashboard import state

    state.sidebar()
    st.write(f"dataset: {st.session_state[state.DATASET]!r}")
    for ckpt in state.selected_checkpoints():
        st.write(f"loaded {ckpt.name}")


def written(at):
    return [m.value for m in at.markdown]


def test_dashboard_refuses_a_checkpoint_outside_the_roots(shelf, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_ENV, str(shelf / "allowed"))
    outside = shelf / "outside" / "tiny"
    at = full_app({"picker_path": str(outside)})
    assert not at.exception
    assert [e.value for e in at.sidebar.error] == [ERR_NOT_ALLOWED.format(
        what="checkpoint folder", path=outside, roots=(shelf / "allowed").resolve(), source=ENV_SOURCE)]
    assert at.multiselect(key="picker_names").options == []  # checkpoints/ is not in the roots
    assert at.session_state["selected_checkpoints"] == []
    assert "Pick a checkpoint" in at.info[0].value


def test_sidebar_refuses_outside_paths_and_loads_inside_ones(shelf, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_ENV, str(shelf / "allowed"))
    (shelf / "allowed" / "escape").symlink_to(shelf / "outside", target_is_directory=True)
    roots = (shelf / "allowed").resolve()
    at = AppTest.from_function(picker_app, default_timeout=60).run()
    assert not at.exception and not at.sidebar.error and "Pick a checkpoint" in at.info[0].value
    box = at.sidebar.text_input(key="picker_path")
    for typed, shown in [
        (shelf / "outside" / "tiny", shelf / "outside" / "tiny"),
        (f"{shelf}/allowed/../outside/tiny", RESOLVES.format(path=f"{shelf}/allowed/../outside/tiny",
                                                             resolved=(shelf / "outside" / "tiny").resolve())),
        (shelf / "allowed" / "escape" / "tiny", RESOLVES.format(path=shelf / "allowed" / "escape" / "tiny",
                                                                resolved=(shelf / "outside" / "tiny").resolve())),
    ]:
        box.set_value(str(typed)).run()
        assert not at.exception
        assert [e.value for e in at.sidebar.error] == [ERR_NOT_ALLOWED.format(
            what="checkpoint folder", path=shown, roots=roots, source=ENV_SOURCE)]
        assert not any(w.startswith("loaded") for w in written(at)) and "Pick a checkpoint" in at.info[0].value
    inside = shelf / "allowed" / "runs" / "tiny"
    box.set_value(f"  {inside}  ").run()
    assert not at.exception and not at.error
    assert "loaded tiny" in written(at)
    # flagged where it is picked, and still usable
    assert [w.value for w in at.warning] == [FLAGGED.format(name="tiny", reason=health_of(inside))]


def test_sidebar_refuses_a_dataset_outside_the_secret_roots(shelf):
    (shelf / "data" / "UTKFace").mkdir(parents=True)
    at = AppTest.from_function(picker_app, default_timeout=60)
    at.secrets[DATA_SECRET] = [str(shelf / "data")]
    at.run()
    box = at.sidebar.text_input(key="data_path")
    box.set_value(str(shelf / "outside")).run()
    assert not at.exception
    assert [e.value for e in at.sidebar.error] == [ERR_NOT_ALLOWED.format(
        what="dataset", path=shelf / "outside", roots=(shelf / "data").resolve(),
        source=FROM_SECRET.format(key=DATA_SECRET))]
    assert "dataset: ''" in written(at)
    box.set_value(str(shelf / "data" / "UTKFace")).run()
    assert not at.sidebar.error and f"dataset: {str(shelf / 'data' / 'UTKFace')!r}" in written(at)


def test_dashboard_marks_flagged_checkpoints_in_the_picker(shelf):
    at = full_app({"picker_names": []})  # nothing set: checkpoints/ is listed, as before
    assert not at.exception
    assert at.multiselect(key="picker_names").options == ["shipped ⚠"]


def test_sidebar_with_a_broken_secrets_file_refuses_typed_paths(tmp_path):
    from streamlit import config

    (tmp_path / "secrets.toml").write_text("allowed_roots = [\n")
    at = AppTest.from_function(picker_app, default_timeout=60)
    at.session_state["picker_path"] = "/etc"
    before = config.get_option("secrets.files")
    config.set_option("secrets.files", [str(tmp_path / "secrets.toml")])
    try:
        at.run()
    finally:
        config.set_option("secrets.files", before)
    assert not at.exception
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 2 and len(set(errors)) == 1  # the problem, then the refusal of /etc
    assert errors[0].startswith(".streamlit/secrets.toml cannot be read (Error parsing secrets file at ")
    assert errors[0].endswith("); until it can, no typed path is allowed")
    assert "Pick a checkpoint" in at.info[0].value

"""What a session chooses, and the widgets it chooses with: the sidebar's checkpoint picker and dataset
path (read only where the allow-lists allow), the compare pages' offer of a pair, the evaluation-set
picker, and the predict page's CAM options kept across a page switch for the other pages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from agegender.faces.detect import MIN_CONFIDENCE
from agegender.labels import DEFAULT_BAND
from agegender.meta import CheckpointError
from agegender.models.catalog import (
    DATA_ENV,
    DATA_FIELD,
    FLAGGED,
    compare_pick,
    default_data_path,
    default_pick,
    default_root,
    health,
    health_of,
    problem_of,
    trained_on,
)
from dashboard.access import (
    CHECKPOINT_SECRET,
    DATA_SECRET,
    AllowList,
    NotAllowed,
    checkpoint_allow_list,
    data_allow_list,
    pickable,
)
from dashboard.caches import get_checkpoint
from dashboard.ui import plain

if TYPE_CHECKING:
    from agegender.models.checkpoint import Checkpoint

SELECTED = "selected_checkpoints"
DATASET = "dataset_path"
PICKER = "picker_names"  # the picker's widget key
OFFERED = "picker_offered"  # label -> path of what the picker offers
PICK_DEFAULT = "picker_default"  # the labels a fresh session starts on
PAIR_BUTTON = "Compare {names}"
UNUSABLE = "{label} (unusable)"  # the picker's label of a checkpoint whose meta.json cannot be used
UNUSABLE_HELP = "{n} checkpoint(s) picked cannot be used; why, as read from their meta.json:"
# widgets whose choice outlives a page switch (keep_options): the predict page's options, read again on the
# compare and explorer pages
KEEP = "kept."
KEPT = {"cropped": False, "whole": False, "min_conf": MIN_CONFIDENCE, "band": DEFAULT_BAND, "method": "GradCAM",
        "aug_smooth": False, "eigen_smooth": False, "other_gender": False, "faith": False, "opacity": 0.5}


def _secret(key: str) -> tuple[object, str]:
    """(the value of a key of .streamlit/secrets.toml or None, why a secrets file that exists
    cannot be read or "")."""
    try:
        return st.secrets.get(key), ""
    except FileNotFoundError as e:  # StreamlitSecretNotFoundError: no secrets file, or one that does not parse
        exists = any(Path(f).expanduser().exists() for f in st.get_option("secrets.files"))
        return None, str(e) if exists else ""


def allow_lists() -> tuple[AllowList, AllowList]:
    """Where checkpoints and datasets may be read from: the environment, else secrets.toml."""
    return checkpoint_allow_list(*_secret(CHECKPOINT_SECRET)), data_allow_list(*_secret(DATA_SECRET))


def pick_labels(paths: list[Path]) -> dict[str, Path]:
    """Picker labels: the folder's name, or its whole path where two folders share a name."""
    names = [p.name for p in paths]
    return {(p.name if names.count(p.name) == 1 else str(p)): p for p in paths}


def typed_path(text: str, allowed: AllowList) -> str:
    """The path typed, stripped; empty after showing why, for one outside the allow-list."""
    text = text.strip()
    try:
        if text:
            allowed.check(text)
    except NotAllowed as e:
        st.error(str(e))
        return ""
    return text


def sidebar() -> None:
    """The checkpoint picker every page shares; choices live in session state. It offers, and
    reads, only folders the allow-lists allow (dashboard.access); ⚠ marks a checkpoint whose
    validation figures say it is untrained or diverged (agegender.models.catalog.health)."""
    ckpt_allowed, data_allowed = allow_lists()
    root = default_root()
    paths = pickable(ckpt_allowed, root)
    labels = pick_labels(paths)
    # read within bounds and never raising (catalog.problem_of): one bad folder is marked, the others work
    problems = {label: problem_of(p) for label, p in labels.items()}
    flags = {label: health_of(p) for label, p in labels.items() if not problems[label]}
    default = [label for label, p in labels.items() if p in default_pick(paths)]
    # the picker's value lives in session state from the start, never as the widget's default: a page may then
    # set it (offer_pair) with no "default value and Session State" clash; a folder gone since is dropped
    st.session_state[PICKER] = [label for label in st.session_state.get(PICKER, default) if label in labels]
    where = root if ckpt_allowed.roots is None else ", ".join(map(str, ckpt_allowed.roots)) or "nowhere"
    with st.sidebar:
        st.header("Checkpoints")
        for problem in {a.problem for a in (ckpt_allowed, data_allowed) if a.problem}:
            st.error(problem)
        chosen = st.multiselect("From checkpoints/", list(labels), key=PICKER, format_func=lambda label: (
                                    UNUSABLE.format(label=label) if problems.get(label)
                                    else f"{label} ⚠" if flags.get(label) else label),
                                help=f"Folders in {where}. ⚠: its validation figures say it is untrained or "
                                     "diverged (the Checkpoints page says why).")
        unusable = [problems[label] for label in chosen if problems.get(label)]
        if unusable:  # as code, not markdown: the reasons quote values and folder names a hostile hand wrote
            st.warning(UNUSABLE_HELP.format(n=len(unusable)))
            st.code("\n".join(unusable), language=None, wrap_lines=True)
        extra = typed_path(st.text_input("…or a checkpoint folder", key="picker_path",
                                         placeholder="/path/to/checkpoint"), ckpt_allowed)
        # the value counts on the first run only (the field is keyed): the data the default checkpoint was trained on
        data = typed_path(st.text_input(DATA_FIELD, value=default_data_path([labels[c] for c in default]),
                                        key="data_path", placeholder="/path/to/UTKFace",
                                        help=f"Folder, .zip or .tar.gz; default ${DATA_ENV}, else the data the "
                                             "checkpoint was trained on, where it is on this machine"), data_allowed)
    # plain keys, not widget keys: pages read these
    st.session_state[SELECTED] = [str(labels[c]) for c in chosen if c in labels] + ([extra] if extra else [])
    st.session_state[DATASET] = data
    st.session_state[OFFERED] = labels
    st.session_state[PICK_DEFAULT] = default


def offer_pair(container) -> bool:
    """With fewer than two checkpoints picked, a button that puts two in the picker
    (agegender.models.catalog.compare_pick: the two most recently trained while the picker holds what a fresh
    session starts on, else the pick plus the most recent other). The sidebar's choice changes only when
    the user presses it. False when there is nothing to offer."""
    offered: dict[str, Path] = st.session_state.get(OFFERED, {})
    chosen = list(st.session_state.get(PICKER, []))
    picked = [Path(p) for p in st.session_state.get(SELECTED, [])]
    untouched = chosen == st.session_state.get(PICK_DEFAULT) and len(picked) == len(chosen)
    names = {p: label for label, p in offered.items()}
    pick = [names[p] for p in compare_pick(picked, list(offered.values()), untouched) if p in names]
    if len(pick) < 2:
        return False
    container.button(PAIR_BUTTON.format(names=" and ".join(pick)), key="offer_pair", on_click=_pick, args=(pick,))
    return True


def _pick(labels: list[str]) -> None:
    # a callback runs before the script, so the picker is drawn with these and the page sees them at once
    st.session_state[PICKER] = labels
    # what the sidebar will read from the picker; set here too, for a rerun of the page alone
    offered: dict[str, Path] = st.session_state.get(OFFERED, {})
    st.session_state[SELECTED] = [str(offered[label]) for label in labels]


def selected_checkpoints(limit: int | None = None) -> list[Checkpoint]:
    """The loaded checkpoints picked in the sidebar; a page with none stops with a hint."""
    loaded = []
    for p in st.session_state.get(SELECTED, [])[:limit]:
        try:
            loaded.append(get_checkpoint(p))
        except CheckpointError as e:
            st.error(f"Checkpoint not loaded: {plain(str(e))}")
            continue
        reason = health(loaded[-1].meta)
        if reason:  # still usable: say so, and go on
            st.warning(FLAGGED.format(name=loaded[-1].name, reason=reason))
    if not loaded:
        st.info("Pick a checkpoint in the sidebar (folders under checkpoints/, or a path).")
        st.stop()
    return loaded


def checkpoint_choice(ckpts: list[Checkpoint], label: str = "Checkpoint", key: str = "one_ckpt") -> Checkpoint:
    """One of the sidebar's checkpoints, for pages that look at one at a time."""
    if len(ckpts) == 1:
        return ckpts[0]
    names = [c.name for c in ckpts]
    return ckpts[names.index(st.selectbox(label, names, key=key))]


def source_picker(container, key: str) -> str:
    """The evaluation-set picker of the review pages: the checkpoints' own UTKFace val and test, then every
    registered evaluation set whose images the data allow-list allows."""
    from agegender.evaluation import sources

    _, data_allowed = allow_lists()
    return container.selectbox("Evaluation set", sources.names(lambda s: data_allowed.allows(s.path)), key=key,
                               format_func=sources.label,
                               help="UTKFace val / test: the checkpoint's own held-out splits. Register and "
                                    "evaluate other labelled datasets on the Evaluation sets page.")


def utkface_data(ckpt: Checkpoint) -> str:
    """The UTKFace images a checkpoint's own split is read from: the sidebar's field, else the data the checkpoint
    was trained on when it is here and allowed. Says what to do, and stops the page, where they are not found."""
    from agegender.review.explorer import data_problem

    data_path = st.session_state.get(DATASET, "")
    if not data_path:  # the sidebar's field is empty: the data this checkpoint was trained on, when it is here
        data_path = default_data_path([ckpt.path])
        data_path = data_path if data_path and allow_lists()[1].allows(data_path) else ""
    if data_path and data_path in trained_on(ckpt.path):  # the sidebar fills in the default checkpoint's data
        st.caption(f"UTKFace images from {data_path}, the data {ckpt.name} was trained on (type another "
                   "path in the sidebar).")
    if problem := data_problem(data_path):
        st.info(problem)
        st.stop()
    return data_path


@dataclass(frozen=True)
class Options:
    cropped: bool = False
    whole_if_no_face: bool = False
    min_confidence: float = MIN_CONFIDENCE
    band: tuple[float, float] = DEFAULT_BAND
    method: str = "GradCAM"
    layer: str | None = None  # the checkpoint's own default (its first cam_layers): layer names differ by architecture
    aug_smooth: bool = False
    eigen_smooth: bool = False
    other_gender: bool = False
    faithfulness: bool = False
    opacity: float = 0.5


def keep_options() -> None:
    """Before the predict page draws its options: each widget takes its last value back (Streamlit drops a
    widget's state on a run that does not draw it, so a page switch would reset it), and the value it holds
    now is kept, under a key no widget owns, for the next switch and for kept_options()."""
    state = st.session_state
    for key, value in KEPT.items():
        if key in state:
            state[KEEP + key] = state[key]
        else:
            state[key] = state.get(KEEP + key, value)


def kept_options(**changes) -> Options:
    """The CAM options last chosen on the predict page (KEPT), for the other pages that explain a face."""
    kept = {key: st.session_state.get(KEEP + key, value) for key, value in KEPT.items()}
    chosen = dict(band=tuple(kept["band"]), method=kept["method"], aug_smooth=kept["aug_smooth"],
                  eigen_smooth=kept["eigen_smooth"], other_gender=kept["other_gender"], faithfulness=kept["faith"],
                  opacity=kept["opacity"])
    return Options(**{**chosen, **changes})

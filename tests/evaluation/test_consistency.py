"""With the real chips: alignment reproduces the chip geometry, so a chip pasted into a photo is
predicted like the chip itself (README gives the figure over 300 chips)."""

import numpy as np

from agegender.data.template import derive
from agegender.evaluation.consistency import measure
from agegender.faces.detect import load_template
from agegender.models.catalog import REPO_CHECKPOINTS
from agegender.models.checkpoint import load_checkpoint


def test_template_is_reproduced_from_a_sample_of_chips(real_data):
    t = derive(str(real_data), 24)
    assert t["chips_used"] >= 20
    assert np.abs(np.array(t["landmarks"]) - load_template()).max() < 12  # px in a 200 px chip


def test_pasted_chips_are_predicted_like_the_chips(real_data):
    m = measure(load_checkpoint(REPO_CHECKPOINTS / "dlib-resnet29-utkface"), str(real_data), n=30, seed=1)
    assert m["detected"] >= 27
    assert m["median_abs_age_diff"] < 3.0
    assert m["gender_agreement"] >= 0.85


def test_photo_variants_of_a_labelled_photo_set(tiny_checkpoint, tmp_path):
    """Each photo with a face is mirrored, re-framed and shrunk; photos without one are not counted."""
    from agegender.evaluation.consistency import VARIANTS, measure_photos

    from .test_evalset import fairface_like

    fairface_like(tmp_path / "ff")  # six photos with a face, two without, one corrupt
    m = measure_photos(load_checkpoint(tiny_checkpoint), str(tmp_path / "ff"), n=9)
    assert (m["photos"], m["found"]) == (9, 6)
    assert set(m["variants"]) == set(VARIANTS)
    for v in m["variants"].values():
        assert v["found"] + v["lost"] == 6
        if v["found"]:
            assert 0 <= v["median_abs_age_change"] <= v["p90_abs_age_change"] and 0 <= v["gender_kept"] <= 1
    # flip TTA averages a face with its mirror, so a mirrored photo moves the age only as far as
    # detection and alignment of the mirrored face differ
    assert m["variants"]["mirrored"]["found"] == 6 and m["variants"]["mirrored"]["median_abs_age_change"] < 2

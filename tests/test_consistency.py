"""With the real chips: alignment reproduces the chip geometry, so a chip pasted into a photo is
predicted like the chip itself (README gives the figure over 300 chips)."""

import numpy as np

from agegender.catalog import REPO_CHECKPOINTS
from agegender.checkpoint import load_checkpoint
from agegender.consistency import measure
from agegender.faces import load_template
from agegender.template import derive


def test_template_is_reproduced_from_a_sample_of_chips(real_data):
    t = derive(str(real_data), 24)
    assert t["chips_used"] >= 20
    assert np.abs(np.array(t["landmarks"]) - load_template()).max() < 12  # px in a 200 px chip


def test_pasted_chips_are_predicted_like_the_chips(real_data):
    m = measure(load_checkpoint(REPO_CHECKPOINTS / "resnet18-utkface"), str(real_data), n=30, seed=1)
    assert m["detected"] >= 27
    assert m["median_abs_age_diff"] < 3.0
    assert m["gender_agreement"] >= 0.85

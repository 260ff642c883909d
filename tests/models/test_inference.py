"""predict_checkpoint: the one call from pixels to (years, P(female)), with the checkpoint's own contract."""

from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.models.checkpoint import Checkpoint
from agegender.models.inference import model_input, predict_checkpoint
from agegender.models.model import create_model
from agegender.models.preprocess import Preprocess

PP = Preprocess(cache_size=40, input_size=32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("resnet18").eval()


def predict(ckpt: Checkpoint, px, tta: bool):
    """predict_checkpoint in fp32, as the references below are computed: on a CPU with bf16 (avx512_bf16)
    its default would autocast and differ from them by bf16's rounding, which is not what these test."""
    return predict_checkpoint(ckpt, px, tta=tta, precision="fp32")


def fake(model, **meta) -> Checkpoint:
    """A checkpoint of ``model`` with no folder; its age scaling the identity unless ``meta`` gives one (a
    Checkpoint parses its scaling when made, as meta.json always holds one)."""
    return Checkpoint(Path("fake"), model, {"preprocess": PP.to_dict(), "age_offset": 0.0, "age_scale": 1.0, **meta})


def faces(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, PP.cache_size, PP.cache_size, 3), dtype=np.uint8)


def heads(model, pixels, mirror=False):
    """Each face's raw (age, gender logit), one face at a time: the textbook way."""
    with torch.no_grad():
        out = [model(model_input(fake(model), p).flip(3) if mirror else model_input(fake(model), p)) for p in pixels]
    return torch.cat([a for a, _ in out]), torch.cat([g for _, g in out])


def test_ages_follow_the_checkpoints_age_scaling_and_range(model):
    px = faces()
    raw, logit = heads(model, px)
    ages, pf = predict(fake(model, age_offset=33.0, age_scale=20.0), px, tta=False)
    np.testing.assert_allclose(ages, (raw * 20 + 33).clamp(0, 116).numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(pf, torch.sigmoid(logit).numpy(), rtol=1e-5, atol=1e-6)
    other, _ = predict(fake(model, age_offset=10.0, age_scale=5.0), px, tta=False)
    np.testing.assert_allclose(other, (raw * 5 + 10).clamp(0, 116).numpy(), rtol=1e-5, atol=1e-4)
    narrow = (float(ages.min()) + 0.1, float(ages.max()) - 0.1)  # a recorded age range clamps
    clamped, _ = predict(fake(model, age_offset=33.0, age_scale=20.0, age_range=list(narrow)), px, tta=False)
    assert clamped.min() == pytest.approx(narrow[0]) and clamped.max() == pytest.approx(narrow[1])


def test_tta_is_the_mean_of_the_face_and_its_mirror_so_it_moves_a_prediction_half_as_far_as_the_mirror(model):
    px = faces(seed=1)
    ckpt = fake(model, age_offset=33.0, age_scale=20.0)
    plain, p_plain = predict(ckpt, px, tta=False)
    tta, p_tta = predict(ckpt, px, tta=True)
    raw, logit = heads(model, px)
    raw_m, logit_m = heads(model, px, mirror=True)
    mirrored = (raw_m * 20 + 33).numpy()
    assert ((plain > 0) & (plain < 116) & (mirrored > 0) & (mirrored < 116)).all()  # no clamping in the way
    assert not np.allclose(tta, plain, rtol=0, atol=1e-3)  # TTA is applied
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.abs(tta - plain), np.abs(mirrored - plain) / 2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p_tta, torch.sigmoid((logit + logit_m) / 2).numpy(), rtol=1e-5, atol=1e-6)
    p_mirror = torch.sigmoid(logit_m).numpy()
    assert (np.abs(p_tta - p_plain) <= np.abs(p_mirror - p_plain) + 1e-6).all()  # never further than the mirror


def test_no_faces_no_predictions(model):
    ages, pf = predict_checkpoint(fake(model, age_offset=33.0, age_scale=20.0), faces(0))
    assert ages.shape == pf.shape == (0,)

import numpy as np
import pytest
import torch
from PIL import Image

from agegender.faces.detect import resize_image
from agegender.models.preprocess import Augment, Preprocess, centre_crop, preprocess, to_batch

PP = Preprocess(cache_size=32, input_size=24)
NO_AUG = Augment(scale=0, rotate=0, shift=0, flip=False, brightness=0, contrast=0, saturation=0)


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_eval_path_is_the_normalised_centre_crop():
    b = batch()
    x = preprocess(b, PP)
    crop = b[:, :, 4:28, 4:28].float() / 255
    mean, std = torch.tensor(PP.mean).view(1, 3, 1, 1), torch.tensor(PP.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (crop - mean) / std)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_centre_crop_is_what_the_eval_path_sees():
    images = batch().permute(0, 2, 3, 1).contiguous()  # N x S x S x 3, as cached and uploaded
    crop = centre_crop(images, PP)
    assert crop.shape == (4, 24, 24, 3) and torch.equal(crop, images[:, 4:28, 4:28])
    mean, std = torch.tensor(PP.mean).view(1, 3, 1, 1), torch.tensor(PP.std).view(1, 3, 1, 1)
    expected = (crop.permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(preprocess(to_batch(images), PP), expected, rtol=0, atol=0)
    one = images[1].numpy()  # one image, as numpy: the dashboard's display crop
    np.testing.assert_array_equal(centre_crop(one, PP), crop[1].numpy())
    odd = Preprocess(cache_size=33, input_size=24)  # an odd margin: the extra pixel goes right and below
    assert centre_crop(np.zeros((33, 33, 3), np.uint8), odd).shape == (24, 24, 3)
    assert np.shares_memory(centre_crop(one, PP), one)  # a view, no copy
    with pytest.raises(ValueError, match="expected 32 px images"):
        centre_crop(np.zeros((40, 40, 3), np.uint8), PP)


def test_augment_with_nothing_random_equals_the_eval_path():
    b = batch()
    torch.testing.assert_close(preprocess(b, PP, NO_AUG, torch.Generator()), preprocess(b, PP), atol=1e-5, rtol=0)


def test_augment_is_seeded_and_finite():
    b = batch()
    x1 = preprocess(b, PP, Augment(), torch.Generator().manual_seed(3))
    x2 = preprocess(b, PP, Augment(), torch.Generator().manual_seed(3))
    x3 = preprocess(b, PP, Augment(), torch.Generator().manual_seed(4))
    assert x1.shape == (4, 3, 24, 24) and torch.isfinite(x1).all()
    torch.testing.assert_close(x1, x2)
    assert not torch.allclose(x1, x3)


def test_flip_only_mirrors():
    b = batch(1)
    flip = Augment(scale=0, rotate=0, shift=0, flip=True, brightness=0, contrast=0, saturation=0)
    g = torch.Generator().manual_seed(0)
    outs = [preprocess(b, PP, flip, g) for _ in range(8)]
    plain = preprocess(b, PP)
    assert all(torch.allclose(o, plain, atol=1e-5) or torch.allclose(o, plain.flip(3), atol=1e-5) for o in outs)


def test_random_erasing_blanks_one_rectangle_per_chosen_image():
    import dataclasses

    b = batch(400, seed=1)
    plain = preprocess(b, PP)
    always = preprocess(b, PP, dataclasses.replace(NO_AUG, erase=1.0), torch.Generator().manual_seed(0))
    changed = ~torch.isclose(always, plain, atol=1e-5)
    assert (always[changed] == 0).all()  # only ever set to the mean, which is 0 once normalised
    blank = (always == 0).all(1)  # pixels erased in all channels
    share = blank.flatten(1).float().mean(1)
    assert (share > 0).float().mean() > 0.95
    # At most 33% of the crop: the rectangle's area is, but it blanks every pixel whose centre it holds, and
    # those can be ~38% of a 24 px crop. The centres of a block of r x c pixels span (r - 1) x (c - 1) inside it.
    height, width = blank.any(2).sum(1), blank.any(1).sum(1)
    assert ((height - 1).clamp(min=0) * (width - 1).clamp(min=0)).max() <= 0.33 * PP.input_size ** 2
    for img in blank[share > 0][:50]:  # one axis-aligned rectangle: rows and columns hit form a solid block
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        assert img[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    half = preprocess(b, PP, dataclasses.replace(NO_AUG, erase=0.5), torch.Generator().manual_seed(0))
    assert 140 < int((half == 0).all(1).flatten(1).any(1).sum()) < 260
    from agegender.train.config import TrainConfig

    assert TrainConfig(data="d", out="o", aug_erase=0.25).augment().erase == 0.25  # --aug-erase reaches it
    with pytest.raises(ValueError, match="--aug-erase is a probability"):
        TrainConfig(data="d", out="o", aug_erase=1.5).validate()


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match="expected 32 px images"):
        preprocess(torch.zeros(1, 3, 40, 40, dtype=torch.uint8), PP)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(torch.zeros(1, 3, 32, 32), PP)


def test_resize_image_converts_modes():
    for mode in ("L", "RGBA", "CMYK", "I;16"):
        arr = resize_image(Image.new(mode, (50, 40)), 32)
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert to_batch(arr).shape == (1, 3, 32, 32)

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agegender.faces.quality import sharpness
from agegender.models import degrade
from agegender.models.preprocess import (
    Augment,
    Preprocess,
    _colour_jitter,
    _normalise,
    _random_affine,
    _random_erase,
    preprocess,
)
from agegender.train.config import TrainConfig, parser_for

PP = Preprocess(cache_size=32, input_size=24)
RANDOM = {  # lever name -> its random function
    "downscale": degrade.random_downscale, "blur": degrade.random_blur, "jpeg": degrade.random_jpeg,
    "noise": degrade.random_noise, "cast": degrade.random_cast, "grayscale": degrade.random_grayscale,
}
ALL_ON = dict(downscale=0.5, blur=0.5, jpeg=0.5, noise=0.5, cast=0.5, grayscale=0.5, yaw=0.3)


def batch(n=4, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def natural(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Images in [0, 1] with detail at every scale, falling off as 1/f as in photos: a sharpness measure
    then falls steadily as detail is taken away (on pure noise it would too, but nothing else looks like it)."""
    g = torch.Generator().manual_seed(seed)
    x, s = torch.zeros(n, 3, size, size), 4
    while s <= size:
        x += F.interpolate(torch.rand(n, 3, s, s, generator=g) - 0.5, size=size, mode="bilinear") / s
        s *= 2
    x -= x.amin(dim=(1, 2, 3), keepdim=True)
    return x / x.amax(dim=(1, 2, 3), keepdim=True)


def sharp(x: torch.Tensor) -> np.ndarray:
    """agegender.faces.quality.sharpness of float N x 3 x S x S images, as the uint8 N x S x S x 3 it takes."""
    return sharpness(x.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / (a - b).pow(2).flatten(1).mean(1))


def todays_preprocess(b, aug, g):
    """preprocess() as it was before the photo levers: affine, colour jitter, normalise, erase."""
    x = _normalise(_colour_jitter(_random_affine(b.float() / 255, PP, aug, g), aug, g), PP)
    return _random_erase(x, aug.erase, g) if aug.erase > 0 else x


@pytest.mark.parametrize("erase", [0.0, 0.5])
def test_levers_off_is_todays_preprocess_with_the_same_random_stream(erase):
    b, aug = batch(16), Augment(erase=erase)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(preprocess(b, PP, aug, g1), todays_preprocess(b, aug, g2))
    assert torch.equal(g1.get_state(), g2.get_state())  # not one draw more


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_a_lever_at_zero_changes_nothing_and_draws_nothing(name):
    x = torch.rand(8, 3, 16, 16)
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    assert torch.equal(RANDOM[name](x.clone(), 0.0, g), x)
    assert torch.equal(g.get_state(), state)


def test_yaw_at_zero_draws_nothing():
    b = batch(8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = _random_affine(b.float() / 255, PP, Augment(yaw=0.0), g1)
    _random_affine(b.float() / 255, PP, Augment(yaw=0.2), g2)
    assert not torch.equal(g1.get_state(), g2.get_state())  # on, it draws one t per image ...
    g2.manual_seed(3)
    assert torch.equal(a, _random_affine(b.float() / 255, PP, Augment(), g2))  # ... off, it does not


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_each_lever_changes_its_share_of_the_images(name):
    x = torch.rand(200, 3, 24, 24, generator=torch.Generator().manual_seed(0))

    def changed(p):
        out = RANDOM[name](x.clone(), p, torch.Generator().manual_seed(2))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1
        return int((out != x).flatten(1).any(1).sum())

    assert changed(1.0) == 200
    assert 60 < changed(0.5) < 140  # binomial(200, 0.5): 100 +- 7
    assert 0 < changed(0.1) < 45


def test_random_levers_leave_the_images_not_picked_exactly_as_they_were():
    x = torch.rand(64, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    for name, fn in RANDOM.items():
        out = fn(x.clone(), 0.3, torch.Generator().manual_seed(5))
        same = (out == x).flatten(1).all(1)
        assert same.sum() > 20, name  # ~70% not picked, each bit-identical
        assert ((out != x).flatten(1).any(1) | same).all(), name


def test_downscale_and_blur_lower_sharpness_monotonically_with_strength():
    x = natural(6)
    down = [sharp(x)] + [sharp(degrade.downscale(x, f)) for f in sorted(degrade.DOWNSCALE_FACTORS, reverse=True)]
    blurred = [sharp(x)] + [sharp(degrade.blur(x, s)) for s in sorted(degrade.BLUR_SIGMAS)]
    for levels in (down, blurred):
        for weaker, stronger in zip(levels, levels[1:], strict=False):
            assert (stronger < weaker).all()
    assert (sharp(degrade.random_downscale(x.clone(), 1.0, torch.Generator())) < down[0]).all()
    assert (sharp(degrade.random_blur(x.clone(), 1.0, torch.Generator())) < blurred[0]).all()


def test_blur_is_the_depthwise_gaussian_with_reflected_edges():
    x = torch.rand(2, 3, 20, 24)
    for sigma in degrade.BLUR_SIGMAS:
        k = degrade.gaussian_kernel(sigma)
        r = len(k) // 2
        ref = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        ref = F.conv2d(F.pad(ref, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        torch.testing.assert_close(degrade.blur(x, sigma), ref)
        flat = torch.full((1, 3, 20, 24), 0.4)
        torch.testing.assert_close(degrade.blur(flat, sigma), flat)  # weights sum to 1, edges included
    with pytest.raises(ValueError, match="needs images over 6 px"):
        degrade.blur(torch.rand(1, 3, 6, 6), 2.0)


def test_jpeg_differs_but_stays_close():
    # 25 dB is where 8-bit images count as visibly degraded but whole; quality 15 keeps this 1/f image at
    # ~28.5 dB (UTKFace chips at 128 px: 29-34 dB), while rounding to uint8 alone would give ~59 dB
    x = natural(4)
    low, high = psnr(degrade.jpeg(x, 15), x), psnr(degrade.jpeg(x, 60), x)
    assert (low > 25).all() and (high < 45).all()
    assert (high > low + 2).all()  # better quality, closer
    lo, hi = degrade.JPEG_QUALITY
    got = psnr(degrade.random_jpeg(x.clone(), 1.0, torch.Generator().manual_seed(0)), x)
    assert ((got > psnr(degrade.jpeg(x, lo), x) - 0.5) & (got < psnr(degrade.jpeg(x, hi), x) + 0.5)).all()


def test_noise_has_the_documented_strength():
    x = torch.full((64, 3, 32, 32), 0.5)
    out = degrade.random_noise(x.clone(), 1.0, torch.Generator().manual_seed(0))
    std = (out - x).flatten(1).std(1)
    lo = degrade.NOISE_READ[0]
    hi = (degrade.NOISE_READ[1] ** 2 + degrade.NOISE_SHOT[1] ** 2 * 0.5) ** 0.5
    assert (std > 0.8 * lo).all() and (std < 1.1 * hi).all()
    assert abs(float((out - x).mean())) < 1e-3  # zero-mean


def test_cast_keeps_grey_levels_and_grayscale_removes_colour():
    grey = torch.full((32, 3, 8, 8), 0.5)
    out = degrade.random_cast(grey.clone(), 1.0, torch.Generator().manual_seed(0))
    luma = sum(w * out[:, c] for c, w in enumerate(degrade.LUMA))
    torch.testing.assert_close(luma, torch.full_like(luma, 0.5))
    ratio = out.amax(1) / out.amin(1)
    assert (ratio > 1).all() and ratio.max() > 1.2 and (ratio < (1 + degrade.CAST) / (1 - degrade.CAST)).all()
    x = torch.rand(8, 3, 8, 8)
    out = degrade.random_grayscale(x.clone(), 1.0, torch.Generator())
    assert (out == out[:, :1]).all()


def test_yaw_warp_turns_a_symmetric_image_and_zero_is_the_identity():
    x = torch.rand(1, 3, 24, 24)
    x = (x + x.flip(3)) / 2  # left-right symmetric
    x[..., 11:13] = 1.0  # and a bright midline
    grid = F.affine_grid(torch.eye(2, 3).unsqueeze(0), [1, 3, 24, 24], align_corners=False)
    assert torch.equal(degrade.yaw_warp(grid, torch.zeros(1)), grid)
    torch.testing.assert_close(F.grid_sample(x, grid, align_corners=False), x)
    for t in (0.2, -0.3):
        out = F.grid_sample(x, degrade.yaw_warp(grid, torch.tensor([t])), padding_mode="reflection",
                            align_corners=False)
        assert (out - out.flip(3)).abs().mean() > 0.02  # no longer symmetric
        # the source's midline, x' = 0, lands where u + t = 0: at u = -t
        centre = out[0, 0, 12].argmax().item()
        assert abs((2 * centre + 1) / 24 - 1 + t) < 0.1
        edges = torch.tensor([[[[-1.0, 0.7], [1.0, -0.4]]]])  # points on the left and right edge
        assert torch.equal(degrade.yaw_warp(edges, torch.tensor([t]))[..., 0], edges[..., 0])  # stay on them


def test_yaw_composes_into_the_affine_without_a_second_resampling():
    theta = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 0.1, -0.1, 0.3, -0.3, 0.5])
    size = [6, 3, 20, 24]
    identity = F.affine_grid(torch.eye(2, 3).expand(6, 2, 3), size, align_corners=False)
    warped = degrade.yaw_warp(identity, t)  # first the turn, in the output's frame, then the affine
    expected = warped @ theta[:, :, :2].transpose(1, 2).unsqueeze(1) + theta[:, None, None, :, 2]
    torch.testing.assert_close(degrade.yaw_affine_grid(theta, t, size), expected)
    assert torch.equal(degrade.yaw_affine_grid(theta, torch.zeros(6), size),
                       F.affine_grid(theta, size, align_corners=False))


def test_all_levers_are_seeded_and_keep_the_model_input_form():
    b, aug = batch(32, size=32), Augment(erase=0.25, **ALL_ON)
    x1 = preprocess(b, PP, aug, torch.Generator().manual_seed(3))
    x2 = preprocess(b, PP, aug, torch.Generator().manual_seed(3))
    x3 = preprocess(b, PP, aug, torch.Generator().manual_seed(4))
    assert x1.shape == (32, 3, 24, 24) and x1.dtype == torch.float32 and torch.isfinite(x1).all()
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    no_erase = preprocess(b, PP, dataclasses.replace(aug, erase=0.0), torch.Generator().manual_seed(3))
    assert no_erase.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(PP.mean).view(1, 3, 1, 1), torch.tensor(PP.std).view(1, 3, 1, 1)
    pixels = no_erase * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_levers_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"^--aug-jpeg is a probability, not 1.5$"):
        Augment(jpeg=1.5)
    with pytest.raises(ValueError, match=r"^--aug-noise is a probability, not -0.1$"):
        Augment(noise=-0.1)
    with pytest.raises(ValueError, match=r"^--aug-yaw must be in \[0, 0.5\], not 0.6$"):
        Augment(yaw=0.6)


def test_every_lever_is_a_train_flag_recorded_with_the_config():
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in Augment.PHOTO:
        assert fields[f"aug_{name}"] == getattr(Augment(), name) == 0  # off unless asked
    args = parser_for(TrainConfig, "").parse_args(["--aug-jpeg", "0.3", "--aug-yaw", "0.2"])
    cfg = TrainConfig(**vars(args))
    assert (cfg.aug_jpeg, cfg.aug_yaw, cfg.aug_blur) == (0.3, 0.2, 0.0)
    assert dataclasses.asdict(cfg)["aug_jpeg"] == 0.3  # the checkpoint's meta.json train_config is asdict(cfg)


def test_train_config_passes_the_levers_to_augment():
    cfg = TrainConfig(data="d", out="o", **{f"aug_{k}": v for k, v in ALL_ON.items()})
    assert {k: getattr(cfg.augment(), k) for k in ALL_ON} == ALL_ON


def test_realign_is_the_5_point_alignment_of_the_turned_landmarks():
    from agegender.faces.detect import similarity_transform

    t = torch.tensor([0.0, 0.2, -0.35, 0.5])
    m = degrade.realign(t)
    template = degrade._template()
    torch.testing.assert_close(m[0], torch.eye(2, 3))  # no turn, nothing to align
    for i in range(len(t)):  # the closed form is faces.similarity_transform, the aligner photos go through
        turned = degrade.unturn_points(template, t[i:i + 1])[0].numpy()
        np.testing.assert_allclose(m[i].numpy(), similarity_transform(template.numpy(), turned), atol=1e-6)
    scale = torch.linalg.det(m[:, :, :2]).sqrt()
    assert scale[3] < scale[2] < scale[1] < 0.99  # the eyes close up, so it zooms in, the more the larger |t|


def test_unturn_points_inverts_the_warp():
    pts = torch.rand(3, 7, 2, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    t = torch.tensor([0.1, -0.3, 0.5])
    shown = degrade.unturn_points(pts, t)
    torch.testing.assert_close(degrade.yaw_warp(shown.unsqueeze(1), t), pts.unsqueeze(1), atol=1e-5, rtol=1e-5)


def test_a_realigned_turn_puts_the_landmarks_back_near_the_template_in_one_resampling():
    theta = torch.eye(2, 3).expand(4, 2, 3).clone()
    t = torch.tensor([0.0, 0.3, -0.4, 0.5])
    size = [4, 3, 16, 16]
    assert torch.equal(degrade.yaw_aligned_grid(theta, torch.zeros(4), size),
                       F.affine_grid(theta, size, align_corners=False))
    template = degrade._template().float()
    # a landmark at template position L in the output samples the source at warp(realign(L)): the turned
    # landmark's source is L itself, so the realigned grid should send L (nearly) back onto L
    s = degrade.realign(t)
    mapped = template @ s[:, :, :2].transpose(1, 2) + s[:, None, :, 2]
    back = degrade.yaw_warp(mapped.unsqueeze(1), t).squeeze(1)
    plain = degrade.yaw_warp(template.expand(4, -1, -1).unsqueeze(1), t).squeeze(1)
    err_aligned = (back - template).norm(dim=-1).mean(-1)
    err_plain = (plain - template).norm(dim=-1).mean(-1)
    assert (err_aligned[1:] < 0.5 * err_plain[1:]).all()


def test_yaw_realign_needs_a_turn_and_changes_only_the_geometry():
    with pytest.raises(ValueError, match="--aug-yaw-realign aligns turned heads: it needs --aug-yaw above 0"):
        Augment(yaw_realign=True)
    b = torch.randint(0, 256, (4, 3, PP.cache_size, PP.cache_size), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(2))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plain = _random_affine(b.float() / 255, PP, Augment(yaw=0.3), g1)
    aligned = _random_affine(b.float() / 255, PP, Augment(yaw=0.3, yaw_realign=True), g2)
    assert not torch.allclose(plain, aligned)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))  # the same draws
    cfg = parser_for(TrainConfig, "").parse_args(["--aug-yaw", "0.3", "--aug-yaw-realign"])
    assert TrainConfig(**vars(cfg)).augment().yaw_realign

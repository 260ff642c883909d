"""agegender.models.turn: the depth-aware head turn on aligned chips."""

from __future__ import annotations

import json

import pytest
import torch

from agegender.models import turn

SIZE = 128


def centres(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float32) * 2 + 1) / n - 1


def dots(points: list[tuple[float, float]], size: int = SIZE, radius: float = 0.04) -> torch.Tensor:
    """1 x len(points) x S x S: channel k a small bright disc at point k (half chip widths), 0 elsewhere."""
    c = centres(size)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([((xx - x) ** 2 + (yy - y) ** 2 < radius**2).float() for x, y in points])[None]


def centroid_x(channel: torch.Tensor) -> float:
    c = centres(channel.shape[-1])
    return float((channel.sum(-2) * c).sum() / channel.sum())


def nose() -> tuple[float, float]:
    x, y = turn._load()[1][2].tolist()
    return x, y


def test_shapes_and_dtype_kept():
    x = torch.rand(3, 3, 64, 80)
    for realign in (False, True):
        out = turn.turn(x, torch.tensor([30.0, -45.0, 0.0]), realign)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert turn.turn(x.double(), 20.0).dtype == torch.float64


@pytest.mark.parametrize("realign", [False, True])
def test_zero_degrees_is_the_identity(realign):
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert (turn.turn(x, 0.0, realign) - x).abs().max() < 1e-4


def test_the_nose_moves_further_than_the_cheeks_and_the_way_it_is_turned():
    nx, ny = nose()
    x = dots([(nx, ny), (nx - 0.6, ny), (nx + 0.6, ny)])
    for deg, way in ((30.0, 1), (-30.0, -1)):
        out = turn.turn(x, deg)
        shift = [centroid_x(out[0, k]) - centroid_x(x[0, k]) for k in range(3)]
        assert way * shift[0] > 0.25  # ~ depth 1.07 x sin 30 - the axis's own move
        # both cheeks, the near (ear) side and the far one, move less than the nose in the turn's direction
        assert way * shift[0] > way * shift[1] + 0.1
        assert way * shift[0] > way * shift[2] + 0.1


def test_the_far_side_of_the_nose_is_hidden_when_turned_far():
    nx, ny = nose()
    x = dots([(nx + 0.15, ny), (nx - 0.15, ny)], radius=0.05)  # just beside the nose, either side
    out = turn.turn(x, 60.0)
    assert out[0, 0].sum() < 0.05 * x[0, 0].sum()  # behind the nose: gone (a warp without depth keeps it)
    assert out[0, 1].sum() > 0.5 * x[0, 1].sum()  # the near side of the nose: still seen


def test_a_left_turn_is_the_mirror_of_a_right_turn_on_the_mirrored_face():
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    for realign in (False, True):
        right = turn.turn(x, 40.0, realign)
        left = turn.turn(x.flip(3), -40.0, realign)
        assert (left.flip(3) - right).abs().max() < 1e-4
    d = turn.depth_map()
    assert torch.equal(d, d.flip(1))


def test_a_batch_turns_each_image_by_its_own_angle():
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    deg = torch.tensor([0.0, 25.0, -50.0, 60.0])
    together = turn.turn(x, deg, True)
    for i in range(4):
        assert (together[i] - turn.turn(x[i:i + 1], float(deg[i]), True)[0]).abs().max() < 1e-5
    assert (together[3] - together[0]).abs().mean() > 0.05


def test_realigning_zooms_in_as_the_eyes_close_up():
    m = turn.realign(torch.tensor([0.0, 30.0, 60.0]))
    scale = torch.linalg.det(m[:, :, :2]).sqrt()
    assert torch.allclose(m[0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), atol=1e-5)
    assert 1 > scale[1] > scale[2]  # the aligned chip shows less of the turned image: the face looks bigger


def test_random_turn_draws_nothing_at_zero_and_checks_its_range():
    x = torch.rand(5, 3, 32, 32)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert turn.random_turn(x.clone(), 0.0, g).equal(x)
    assert torch.equal(g.get_state(), state)
    out = turn.random_turn(x.clone(), 1.0, g)
    assert ((out - x).abs().flatten(1).mean(1) > 0).all()
    with pytest.raises(ValueError, match="at most 60"):
        turn.random_turn(x, 1.0, g, max_degrees=90)


def test_the_depth_file_says_where_it_comes_from():
    d = json.loads(turn.DEPTH_FILE.read_text())
    assert turn.DEPTH_FILE.stat().st_size < 200_000
    assert d["source"]["repository"] == "https://github.com/google/mediapipe"
    assert d["source"]["licence"].startswith("Apache-2.0")
    assert len(d["source"]["sha256"]) == 64
    depth = turn.depth_map()
    assert depth.shape == (d["cells"], d["cells"])
    # the nose tip is the nearest point, and it sits where the template's nose is
    iy, ix = divmod(int(depth.argmax()), d["cells"])
    nx, ny = nose()
    assert abs(centres(d["cells"])[ix] - nx) < 0.05 and abs(centres(d["cells"])[iy] - ny) < 0.1

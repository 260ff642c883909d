"""Shared fixtures: small generated UTKFace-like datasets, a tiny trained checkpoint, the real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
MALFORMED = ["61_1_20170109150557335.jpg.chip.jpg", "notes.jpg", "7_2_0_20170109150557335.jpg"]


@pytest.fixture(scope="session", autouse=True)
def _results_outside_home(tmp_path_factory):
    """The dashboard's evaluation-set registry and results cache (agegender.evaluation.results) live under the user's
    cache folder; a test run keeps its own, so it neither reads a developer's sets nor leaves any behind.
    Tests that need a particular one set AGEGENDER_RESULTS themselves."""
    if "AGEGENDER_RESULTS" in os.environ:
        yield
        return
    os.environ["AGEGENDER_RESULTS"] = str(tmp_path_factory.mktemp("results"))
    yield
    del os.environ["AGEGENDER_RESULTS"]


def skip_unless_ci(reason: str) -> None:
    """Skip on a developer's machine; fail under CI (.ci/run sets AGEGENDER_CI), where the real
    dataset and the browser are always there, so that a skip cannot hide a test that never ran."""
    if os.environ.get("AGEGENDER_CI"):
        pytest.fail(f"{reason}; under CI (AGEGENDER_CI is set) this test must run", pytrace=False)
    pytest.skip(reason)


def real_dataset_path() -> Path | None:
    env = os.environ.get("AGEGENDER_UTKFACE")
    for p in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "datasets" / "UTKFace"]:
        if p.is_dir():
            return p
    return None


def fairface_sample_or_skip() -> Path:
    """The FairFace sample: $AGEGENDER_FAIRFACE, then ../shared/datasets/FairFace-sample; else skip."""
    env = os.environ.get("AGEGENDER_FAIRFACE")
    for p in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "datasets" / "FairFace-sample"]:
        if p.is_dir():
            return p
    skip_unless_ci("FairFace sample not found: set AGEGENDER_FAIRFACE or place it at "
                   "../shared/datasets/FairFace-sample")


def make_dataset(folder: Path, n: int = 60, size: int = 40, seed: int = 0, chip: bool = True) -> list[str]:
    """n random face-sized images named like UTKFace chips; age and gender shape the pixels a little
    so a model has something to learn. Returns the names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        age, gender, race = int(rng.integers(1, 90)), int(rng.integers(0, 2)), int(rng.integers(0, 5))
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        img[: size // 2] = np.uint8(age * 2)
        img[:, : size // 4, 0] = 255 * gender
        name = f"{age}_{gender}_{race}_2017010915{i:07d}.jpg" + (".chip.jpg" if chip else "")
        Image.fromarray(img).save(folder / name, quality=95)
        names.append(name)
    return names


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), cache_size=32, input_size=28, epochs=1, batch_size=8,
                lr=1e-3, threads=1, cache_dir=str(out.parent / "cache"), precision="fp32", seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("utk") / "UTKFace"
    make_dataset(folder, n=80)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data, tmp_path_factory) -> Path:
    from agegender.train.loop import train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    return train(tiny_config(tiny_data, out))


@pytest.fixture
def real_data() -> Path:
    p = real_dataset_path()
    if p is None:
        skip_unless_ci("real UTKFace not found: set AGEGENDER_UTKFACE or place it at ../shared/datasets/UTKFace")
    return p


@pytest.fixture(scope="session")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    """A 2-epoch tiny run without interruption, to compare interrupted runs with."""
    from agegender.train.loop import train

    return train(tiny_config(tiny_data, tmp_path_factory.mktemp("full") / "run", epochs=2))


def cli_args(cfg: TrainConfig) -> list[str]:
    """The train.py command line for a config (booleans as --x / --no-x)."""
    import dataclasses

    args = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + flag[2:])
        elif v != "":
            args += [flag, str(v)]
    return args

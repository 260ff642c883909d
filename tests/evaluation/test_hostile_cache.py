"""Issue 36: a run killed while writing a cache file (the crop cache, the decoded-image cache) leaves its temporary
file behind; the next run removes those older than STALE_TEMP_HOURS, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from agegender.data.datasets import read_dataset
from agegender.data.utkface import STALE_TEMP_HOURS, cached_images, remove_stale_temps, scan
from agegender.evaluation.evalset import dataset_crops

from ..conftest import ROOT, make_dataset

OLD = time.time() - (STALE_TEMP_HOURS + 1) * 3600
FP = "0123456789abcdef0123"


def leftovers(cache: Path) -> dict[str, Path]:
    """Temporary files as atomic_write names them, for both caches, stale and fresh, and files that are not ours."""
    cache.mkdir(parents=True, exist_ok=True)
    names = {
        "stale_crops": f".evalset-{FP}-photos-abcdef012345-144px.npz.tmpk3j4h5g6",
        "stale_crops_index": f".evalset-{FP}-photos-abcdef012345-144px.json.tmp0a1b2c3d",
        "stale_images": f".utk-{FP}-64px.npy.tmpq1w2e3r4",
        "fresh_crops": f".evalset-{FP}-chips-abcdef012345-24px.npz.tmpz9x8c7v6",  # a live writer's
        "fresh_images": f".utk-{FP}-24px.npy.tmpm1n2b3v4",
        "not_ours": ".notes.txt.tmp12345678",
        "a_cache_file": f"utk-{FP}-64px.npy",
    }
    out = {}
    for key, name in names.items():
        p = cache / name
        p.write_bytes(b"partial")
        if not key.startswith("fresh"):
            os.utime(p, (OLD, OLD))
        out[key] = p
    return out


def test_the_crop_cache_removes_stale_temporary_files_when_a_run_starts(tmp_path):
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    make_dataset(folder, n=4, size=24)
    cache = tmp_path / "cache"
    left = leftovers(cache)
    crops = dataset_crops(read_dataset(folder), 24, cache)
    assert len(crops.files) == 4
    assert {k for k, p in left.items() if not p.exists()} == {"stale_crops", "stale_crops_index"}


def test_the_image_cache_removes_its_stale_temporary_files_when_a_run_starts(tmp_path):
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    make_dataset(folder, n=4, size=24)
    cache = tmp_path / "cache"
    left = leftovers(cache)
    images = cached_images(scan(folder), 24, cache)
    assert len(images.samples) == 4
    assert {k for k, p in left.items() if not p.exists()} == {"stale_images"}


def test_a_kill_during_the_write_leaves_a_file_the_next_run_removes(tmp_path):
    """A real kill: the writer is SIGKILLed while its temporary file is open; that file is what the cleaner
    recognises, and it removes it once it is old enough, not before."""
    cache = tmp_path / "cache"
    cache.mkdir()
    code = ("import time, numpy as np; from pathlib import Path\n"
            "from agegender.meta import atomic_write\n"
            f"with atomic_write(Path({str(cache)!r}) / 'evalset-{FP}-chips-abcdef012345-24px.npz') as tmp:\n"
            "    open(tmp, 'wb').write(b'half'); print('writing', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
    finally:
        p.kill()
        p.wait(timeout=30)
    (orphan,) = list(cache.iterdir())
    assert remove_stale_temps(cache, "evalset") == [] and orphan.exists()  # it could be a live writer's
    os.utime(orphan, (OLD, OLD))
    assert remove_stale_temps(cache, "utk") == [] and orphan.exists()  # not the image cache's
    assert remove_stale_temps(cache, "evalset") == [orphan] and not orphan.exists()


def test_a_link_or_folder_named_like_a_temporary_file_is_left_alone(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    link = cache / f".utk-{FP}-24px.npy.tmpabcdefgh"
    link.symlink_to(target)
    folder = cache / f".utk-{FP}-32px.npy.tmpabcdefgh"
    folder.mkdir()
    for p in (link, folder):
        os.utime(p, (OLD, OLD), follow_symlinks=False)
    assert remove_stale_temps(cache, "utk", now=time.time()) == []
    assert link.is_symlink() and folder.is_dir() and target.read_text() == "keep"

"""Issue 36 item 5: a labelled photo set evaluated on several processes (torchrun, gloo on the CPU) gives the
predictions file one process gives, every rank detecting its share and rank 0 writing the crop cache once; and
scoring reads a memory-mapped cache a batch at a time, so memory does not grow with the set.

Run as a module (python -m tests.evaluation.test_photo_ranks ARGS), this file is the evaluate command with
small parts and batches (so that two processes see several rounds and several scoring batches) and recorders:
each rank notes how many photos it detected and each cache file it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.data.datasets import Dataset, Record, read_dataset
from agegender.evaluation import evalset, evaluate
from agegender.evaluation.evalset import Crops
from agegender.models.checkpoint import load_checkpoint

from ..conftest import ROOT
from .test_evalset import blank, fairface_like, padded_crop

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RECORD = "PHOTO_RANKS_RECORD"  # the folder the recorders write to
CHUNK, SCORE_BATCH = 5, 4  # 40 records: 4 rounds of 5 per rank; about 30 faces: 8 scoring batches


def photo_set(folder: Path) -> Path:
    """fairface_like's nine files (six real faces, two blank photos, one corrupt file) and 31 more: Grace Hopper
    padded, turned and resized in several ways, and blank photos, in two sizes (detection batches by size)."""
    labels = fairface_like(folder)
    rows = []
    for i in range(9, 40):
        im = padded_crop(1.5 + (i % 5) / 5, side=224 if i % 2 else 200, mirror=i % 3 == 0) if i % 4 else blank(seed=i)
        im.save(folder / "val" / f"{i}.jpg", quality=90)
        rows.append({"file": f"val/{i}.jpg", "age": ["20-29", "30-39", "50-59"][i % 3],
                     "gender": "Female" if i % 2 else "Male", "race": "White", "service_test": "False"})
    pd.concat([labels, pd.DataFrame(rows)]).to_csv(folder / "fairface_label_val.csv", index=False)
    return folder


def run(n: int, ckpt: Path, data: Path, out: Path, cache: Path, record: Path) -> subprocess.CompletedProcess:
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n else []
    cmd = [sys.executable, *launch, "-m", "tests.evaluation.test_photo_ranks", "--checkpoint", str(ckpt),
           "--data", str(data), "--out", str(out), "--cache-dir", str(cache), "--threads", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**ENV, RECORD: str(record)})


def counts(record: Path, what: str) -> dict[int, int]:
    """rank -> the sum of what the rank recorded of ``what``."""
    return {int(p.name.split("-")[0][4:]): sum(int(v) for v in p.read_text().split())
            for p in record.glob(f"rank*-{what}.txt")}


def test_two_ranks_share_detection_write_the_cache_once_and_give_one_process_file(tiny_checkpoint, tmp_path):
    data = photo_set(tmp_path / "FairFace")
    solo, duo = tmp_path / "solo", tmp_path / "duo"
    r = run(0, tiny_checkpoint, data, solo / "p.csv", solo / "cache", solo / "record")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(2, tiny_checkpoint, data, duo / "p.csv", duo / "cache", duo / "record")
    assert r.returncode == 0, r.stderr[-3000:]
    # The same bytes: each rank detects a photo alone or with others of its size, and MTCNN's figures for
    # a photo do not depend on its batch here; the ranks score the very batches one process scores. With the
    # same threads per process: a CPU convolution splits its sums by thread count, and one process on 2
    # threads against ranks on 1 (the command's default) moved one score by one unit of its last digit.
    assert (duo / "p.csv").read_bytes() == (solo / "p.csv").read_bytes()
    df = pd.read_csv(duo / "p.csv")
    assert len(df) == 39 and df["found"].sum() >= 25  # the corrupt file dropped; the blanks are rows, not found
    readable = 39
    detected = counts(duo / "record", "detected")
    assert set(detected) == {0, 1} and min(detected.values()) >= readable // 2 - 1  # an interleaved share each
    assert sum(detected.values()) == readable == sum(counts(solo / "record", "detected").values())
    assert counts(duo / "record", "writes") == {0: 2}  # rank 0 alone wrote the cache once: a .npy and a .npz
    cache = sorted(p.name for p in (duo / "cache").iterdir())
    assert [Path(c).suffix for c in cache] == [".npy", ".npz"]  # and no temporary file left behind
    npy = duo / "cache" / cache[0]
    before = npy.stat()

    again = duo / "again"
    again.mkdir()
    r = run(2, tiny_checkpoint, data, again / "p.csv", duo / "cache", again / "record")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (again / "p.csv").read_bytes() == (solo / "p.csv").read_bytes()
    assert counts(again / "record", "detected") == {} and counts(again / "record", "writes") == {}
    after = npy.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # read, not rewritten


def test_a_damaged_crop_cache_is_rebuilt_without_hanging(tmp_path, caplog):
    """The crop cache's .npy cut short, rewritten at another crop size, or its index replaced by a FIFO (a read
    would wait for a writer for ever): each is rebuilt to the same crops, with one line naming the cache."""
    fairface_like(tmp_path / "FairFace")
    ds = read_dataset(tmp_path / "FairFace")
    cache = tmp_path / "cache"
    first = np.array(evalset.dataset_crops(ds, 32, cache).pixels)
    npy, index = sorted(cache.iterdir())

    def cut():
        npy.write_bytes(npy.read_bytes()[:-100])

    def resized():
        np.save(npy, np.zeros((len(first), 16, 16, 3), np.uint8))

    def fifo():
        index.unlink()
        os.mkfifo(index)

    for damage in (cut, resized, fifo):
        caplog.clear()
        damage()
        got = []
        t = threading.Thread(target=lambda out=got: out.append(evalset.dataset_crops(ds, 32, cache)), daemon=True)
        t.start()
        t.join(120)
        assert got, f"{damage.__name__}: still reading after 120 s"
        assert not got[0].from_cache and np.array_equal(got[0].pixels, first), damage.__name__
        assert ("ignoring a damaged crop cache" in caplog.text) == (damage is not fifo), damage.__name__
        assert evalset.dataset_crops(ds, 32, cache).from_cache  # and the rebuilt cache reads back


def resident() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmRSS")).split()[1]) * 1024


def fake_predictions(batches: list[int]):
    """predict_distribution without a model, noting each batch's size: only the reading is measured."""
    def predict(ckpt, pixels, tta=True, batch_size=256, precision="auto"):
        batches.append(len(pixels))
        n = len(pixels)
        return np.asarray(pixels[:, 0, 0, 0], np.float64), np.full(n, 0.5), None
    return predict


def test_scoring_a_memory_mapped_cache_reads_it_a_batch_at_a_time(tiny_checkpoint, tmp_path, monkeypatch):
    n, size = 3000, 144  # 187 MB of crops
    path = tmp_path / "crops.npy"
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    pixels[::7] = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    pixels.flush()
    del pixels
    files = [f"{i}.jpg" for i in range(n)]
    found = np.arange(n) % 5 != 0
    records = tuple(Record(f, float(20 + i % 50), None, i % 2, {"race": "White"}) for i, f in enumerate(files))
    ds = Dataset(records, "photos", "csv", ("race",), {}, "0" * 64, tmp_path)
    crops = Crops(files, np.load(path, mmap_mode="r"), found, np.full(n, 0.99), np.full((n, 4), 10.0),
                  np.zeros((n, 5, 2)), {})
    batches: list[int] = []
    monkeypatch.setattr(evaluate, "predict_distribution", fake_predictions(batches))
    ckpt = load_checkpoint(tiny_checkpoint)
    total = n * size * size * 3
    few = Crops(files[:50], np.array(crops.pixels[:50]), found[:50], crops.confidence[:50], crops.box[:50],
                crops.landmarks[:50], {})
    evaluate.dataset_frame(ckpt, ds, few)  # the libraries a first call pages in are not the mapping's pages
    before = resident()
    evaluate.dataset_frame(ckpt, ds, crops)
    # the mapping's pages read are not left counted in the process's memory (evalset.release)
    assert resident() - before < total / 8, f"{(resident() - before) / 1e6:.0f} MB more resident"
    tracemalloc.start()
    try:
        df = evaluate.dataset_frame(ckpt, ds, crops)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < total / 8, f"peak {peak / 1e6:.1f} MB for {total / 1e6:.0f} MB of crops"
    assert max(batches) <= evaluate.SCORE_BATCH and sum(batches) == 2 * found.sum() + found[:50].sum()
    assert len(df) == n and df["found"].sum() == found.sum()
    first = np.flatnonzero(found)[:3]
    assert list(df["pred_age"].iloc[first]) == [float(np.load(path, mmap_mode="r")[i, 0, 0, 0]) for i in first]
    assert df["sharpness"].notna().sum() == found.sum()


def _recorded(name: str, value: int) -> None:
    folder = Path(os.environ[RECORD])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"rank{os.environ.get('RANK', '0')}-{name}.txt", "a") as f:
        f.write(f"{value}\n")


def _main() -> int:
    evalset.CHUNK, evaluate.SCORE_BATCH = CHUNK, SCORE_BATCH
    detect_many, atomic_write = evalset.FaceDetector.detect_many, evalset.atomic_write

    def detected(self, photos, batch_size=32):
        _recorded("detected", len(photos))
        return detect_many(self, photos, batch_size)

    def written(path):
        _recorded("writes", 1)
        return atomic_write(path)

    evalset.FaceDetector.detect_many, evalset.atomic_write = detected, written
    return evaluate.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_main())

"""Face descriptors of a whole source, and the nearest-neighbour search over them (issue 33's speed targets):

    python -m benchmarks.descriptors [--data UTKFACE] [--limit N] [--threads 2] [--runs 3]

1. The network alone: median images/s over --runs batches of 256 chips at 150 px.
2. UTKFace (or its first --limit chips) the first time: scan, decode at 150 px and describe, into an empty
   cache folder (timed once: it is minutes on 2 cores), with the process's CPU seconds (wall time / CPU
   seconds shows how much a busy machine slowed it); then cached: scan + the cache read, median of --runs.
3. leakage.nearest on random dlib-scale descriptors: 2,000 x 17,000 and 21,000 x 21,000, median of --runs.

Targets: the first run <= 180 s and cached <= 5 s for 20,983 chips on 2 cores; the search <= 10 s.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agegender.data.utkface import scan
from agegender.evaluation import leakage
from agegender.evaluation.descriptors import utkface_descriptors
from agegender.models import facerec
from agegender.models.catalog import default_data_path
from agegender.models.runtime import set_threads

from .common import median_s, parser

SHARED_UTKFACE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "UTKFace"
SEARCHES = ((2_000, 17_000), (21_000, 21_000))


def network_rate(runs: int) -> float:
    pixels = np.random.default_rng(0).integers(0, 256, (256, 150, 150, 3), dtype=np.uint8)
    net = facerec.shipped_network()
    return len(pixels) / median_s(lambda: facerec.descriptors(pixels, net), runs=runs, warmup=1)


def first_and_cached(data: Path, limit: int, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = data
        if limit:  # a subset as its own dataset (copies: the scan skips links): its own fingerprint and cache
            src = Path(tmp) / "subset"
            src.mkdir()
            for p in sorted(data.glob("*.jpg"))[:limit]:
                shutil.copyfile(p, src / p.name)
        cache = Path(tmp) / "cache"
        t, cpu = time.perf_counter(), time.process_time()
        d = utkface_descriptors(scan(src), cache)
        first, cpu = time.perf_counter() - t, time.process_time() - cpu

        def cached() -> None:
            assert utkface_descriptors(scan(src), cache).from_cache
        again = median_s(cached, runs=runs, warmup=0)
        shutil.rmtree(cache, ignore_errors=True)
    return {"chips": len(d.files), "first_s": round(first, 1), "cached_s": round(again, 2),
            "first_chips_per_s": round(len(d.files) / first, 1),
            # on a shared machine the wall time says how busy it was; the process's CPU seconds do not
            "first_cpu_s": round(cpu, 1)}


def search_times(runs: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for nq, nr in SEARCHES:
        q = rng.normal(0, 0.09, (nq, 128)).astype(np.float32)
        r = rng.normal(0, 0.09, (nr, 128)).astype(np.float32)
        out[f"nearest_{nq}x{nr}_s"] = round(median_s(lambda q=q, r=r: leakage.nearest(q, r), runs=runs, warmup=0), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("descriptors", __doc__, checkpoint=False)
    p.add_argument("--data", help="UTKFace chips folder (default: $AGEGENDER_UTKFACE, then ../shared/datasets)")
    p.add_argument("--limit", type=int, default=0, help="only the first N chips (0: all)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[], choices=["network", "dataset", "search"])
    args = p.parse_args(argv)
    set_threads(args.threads)
    result: dict = {"threads": args.threads or "all"}
    if "network" not in args.skip:
        result["network_chips_per_s"] = round(network_rate(args.runs), 1)
        print(f"network: {result['network_chips_per_s']} chips/s", flush=True)
    if "dataset" not in args.skip:
        data = Path(args.data or default_data_path() or SHARED_UTKFACE)
        if not any(data.glob("*.jpg")):
            print(f"no UTKFace chips in {data}: pass --data", file=sys.stderr)
            return 2
        result.update(first_and_cached(data, args.limit, args.runs))
        print(f"dataset: {result['chips']} chips, first {result['first_s']} s, cached {result['cached_s']} s",
              flush=True)
    if "search" not in args.skip:
        result.update(search_times(args.runs))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The photo evaluation on one process against several (torchrun), each from an empty crop cache, as
`python -m agegender.evaluate --labels` runs it: wall time of the whole command on FairFace-sample (detection
is most of it), and the peak resident memory of the largest process on a generated set of many small photos.

    python -m benchmarks.evalset_ranks [--data ../shared/datasets/FairFace-sample] [--ranks 2] [--runs 2]
        [--photos 20000] [--side 96]

The generated set goes to a temporary folder under /tmp (never the repository) and is removed afterwards.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
from PIL import Image

from .common import checkpoint_path, parser
from .evalset import DEFAULT_DATA

ROOT = Path(__file__).resolve().parents[1]
HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
# Runs the command it is given and prints the largest resident set of its descendants (torchrun's ranks are
# its children's children; RUSAGE_CHILDREN holds the largest of every process waited for below this one).
MAXRSS = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
          "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r)")


def command(ranks: int, ckpt: Path, data: Path, out: str) -> list[str]:
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    return [sys.executable, *launch, "-m", "agegender.evaluate", "--checkpoint", str(ckpt), "--data", str(data),
            "--out", out]


def timed(ranks: int, ckpt: Path, data: Path) -> tuple[float, float]:
    """Seconds and the peak resident MB of the largest process, from an empty crop cache."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", MAXRSS, *command(ranks, ckpt, data, f"{tmp}/p.csv")]
        env = {**os.environ, "AGEGENDER_CACHE": tmp}
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if r.returncode:
            raise SystemExit(f"{' '.join(cmd[3:])} failed:\n{r.stderr[-3000:]}")
        kb = int(r.stdout.split("maxrss_kb")[-1])
        return seconds, kb / 1024


def generated(folder: Path, n: int, side: int) -> Path:
    """``n`` photos of ``side`` px: Grace Hopper's face, shifted and dimmed a little each time, every fifth one
    blank; FairFace's label CSV for them."""
    rng = np.random.default_rng(0)
    face = Image.open(HOPPER).convert("RGB").crop((85, 50, 445, 410)).resize((side, side))
    (folder / "val").mkdir(parents=True)
    lines = ["file,age,gender,race,service_test"]
    for i in range(n):
        if i % 5 == 4:
            im = Image.fromarray(rng.integers(90, 110, (side, side, 3), dtype=np.uint8))
        else:
            px = np.asarray(face, np.int16) + rng.integers(-8, 9)
            im = Image.fromarray(np.clip(np.roll(px, rng.integers(-3, 4), axis=1), 0, 255).astype(np.uint8))
        im.save(folder / "val" / f"{i}.jpg", quality=85)
        lines.append(f"val/{i}.jpg,{['20-29', '30-39', '50-59'][i % 3]},{'Female' if i % 2 else 'Male'},White,False")
    (folder / "fairface_label_val.csv").write_text("\n".join(lines) + "\n")
    return folder


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = parser("evalset_ranks", __doc__, threads=False)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a labelled photo set agegender.data.datasets reads")
    p.add_argument("--ranks", type=int, default=2, help="processes under torchrun, against one")
    p.add_argument("--runs", type=int, default=2, help="runs of each, from an empty crop cache (0: no timing)")
    p.add_argument("--photos", type=int, default=20000, help="photos in the generated set (0: skip it)")
    p.add_argument("--side", type=int, default=96, help="their side in pixels")
    args = p.parse_args(argv)
    ckpt, data = checkpoint_path(args.checkpoint), Path(args.data)
    if not data.exists():
        print(f"error: no dataset at {data}: pass --data", file=sys.stderr)
        return 2
    print(f"{data.name}, {os.cpu_count()} cores; {load()}")
    times: dict[int, list[float]] = {1: [], args.ranks: []}
    for _ in range(args.runs):
        for ranks in times:  # alternated, so a change in the machine's load falls on both
            times[ranks].append(timed(ranks, ckpt, data)[0])
            print(f"  {ranks} process(es): {times[ranks][-1]:.1f} s; {load()}", flush=True)
    if args.runs:
        one, many = statistics.median(times[1]), statistics.median(times[args.ranks])
        print(f"median of {args.runs}: one process {one:.1f} s, {args.ranks} processes {many:.1f} s: "
              f"{one / many:.2f}x (target >= 1.6x); {load()}")
    if args.photos:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            folder = generated(Path(tmp) / "photos", args.photos, args.side)
            for ranks in (args.ranks, 1):
                s, mb = timed(ranks, ckpt, folder)
                print(f"{args.photos} photos of {args.side} px, {ranks} process(es): {s:.0f} s, peak resident "
                      f"{mb:.0f} MB in the largest process (target <= 2048 MB); {load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

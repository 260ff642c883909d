"""Derive agegender/face_depth.json, the mean face's depth on the chips' grid, from MediaPipe's canonical face
mesh (google/mediapipe, Apache-2.0), for agegender.models.turn:

    git -C MEDIAPIPE show "$COMMIT:$MESH" > /tmp/canonical_face_model.obj   # SOURCE's commit and path
    python -m benchmarks.face_depth --obj /tmp/canonical_face_model.obj

The mesh (468 vertices, 898 triangles, in centimetres, the face looking along +z, y up, x to the subject's
left) is placed on the chip by the 5-point template: the scale and shift (no rotation: the mesh is level and
frontal, as the mean chip is) that take the mesh's eye centres, nose tip and mouth corners onto the template's
landmarks, the template first made symmetric about the chip's centre column so that a turn to the left is the
mirror of a turn to the right. Depth keeps the same scale as x and y (an orthographic view of the mesh).

Where the mesh ends (hair, ears, neck, background) the depth goes on as the harmonic (Laplace) extension of
the mesh's depth, pinned to the depth of the mesh's sides (the ears' plane) far out, at the edge of a grid
half again as wide as the chip: smooth across the mesh's outline, no bumps of its own, falling off towards
the side of the head. Depth is measured from the head's vertical axis of turn, taken at the mesh's origin
(7.6 cm behind the nose tip, level with the temples), in half chip widths (1 = 100 px on a 200 px chip).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve

from agegender.faces.detect import CHIP_SIZE, load_template
from agegender.models.turn import DEPTH_FILE

SOURCE = {
    "repository": "https://github.com/google/mediapipe",
    "path": "mediapipe/modules/face_geometry/data/canonical_face_model.obj",
    "commit": "9d8807788567c01dbd998c0a3d0f730b9686912d",
    "last_changed_in": "a908d668c730da128dfa8d9f6bd25d519d006692",
    "sha256": "8bac80443397e113f41a8b565ea72c59390bc031d9defab289dba7bc0c54e618",
    "licence": "Apache-2.0 (the repository's LICENSE)",
}
# MediaPipe face-mesh vertices standing in for MTCNN's five points: each eye's contour ring (its mean is the
# eye's centre, where MTCNN puts the eye), the nose tip (the mesh's most forward vertex) and the mouth
# corners; image left first, as MTCNN orders them.
EYE_RINGS = ((33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
             (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466))
NOSE_TIP, MOUTH = 4, (61, 291)
HOW = ("python -m benchmarks.face_depth: the mesh scaled and shifted so that its eye centres, nose tip and mouth "
       "corners fall on the 5-point template made symmetric about the chip's centre; depth rasterised (nearest "
       "triangle) on the chip's grid and continued off the mesh by the harmonic extension pinned to the depth of "
       "the mesh's sides; measured from the mesh's origin (the axis of turn)")
CELLS = 100  # the depth map's cells across the chip: 2 px each on a 200 px chip
MARGIN = 0.5  # the extension's grid reaches this far beyond the chip, each side, in half chip widths


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V x 3) and triangles (F x 3, 0-based) of an OBJ file."""
    verts, faces = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            verts.append([float(t) for t in parts[1:4]])
        elif parts and parts[0] == "f":
            faces.append([int(t.split("/")[0]) - 1 for t in parts[1:4]])
    return np.asarray(verts), np.asarray(faces)


def mesh_points(verts: np.ndarray) -> np.ndarray:
    """The five landmarks of the mesh, 5 x 3 (x to image right, y up, z forward; cm)."""
    eyes = [verts[list(ring)].mean(0) for ring in EYE_RINGS]
    return np.stack([*eyes, verts[NOSE_TIP], verts[MOUTH[0]], verts[MOUTH[1]]])


def symmetric_template() -> np.ndarray:
    """The chips' mean landmarks in half chip widths about the centre (x right, y down), averaged with their
    mirror image (left eye with the mirrored right eye, and so on)."""
    t = (load_template() + 0.5) / CHIP_SIZE * 2 - 1
    mirrored = t[[1, 0, 2, 4, 3]] * np.array([-1.0, 1.0])
    return (t + mirrored) / 2


def fit(mesh5: np.ndarray, template: np.ndarray) -> tuple[float, np.ndarray]:
    """Scale and shift (least squares) taking the mesh's landmarks, seen from the front (y flipped to point
    down), onto the template's."""
    src = mesh5[:, :2] * np.array([1.0, -1.0])
    sc, dc = src - src.mean(0), template - template.mean(0)
    s = float((sc * dc).sum() / (sc**2).sum())
    return s, template.mean(0) - s * src.mean(0)


def rasterise(pts: np.ndarray, faces: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Nearest depth of the triangles over each grid cell centre (z-buffer), NaN off the mesh. ``pts``: V x 3 in
    grid units (x, y down, depth); ``centres``: the cells' coordinates along each axis."""
    n = len(centres)
    step = centres[1] - centres[0]
    depth = np.full((n, n), -np.inf)
    for tri in faces:
        p = pts[tri]
        lo = np.searchsorted(centres, p[:, :2].min(0) - step / 2)
        hi = np.searchsorted(centres, p[:, :2].max(0) + step / 2)
        xs, ys = np.meshgrid(centres[lo[0]:hi[0]], centres[lo[1]:hi[1]])
        (x0, y0), (x1, y1), (x2, y2) = p[:, :2]
        det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
        if abs(det) < 1e-12:
            continue
        a = ((y1 - y2) * (xs - x2) + (x2 - x1) * (ys - y2)) / det
        b = ((y2 - y0) * (xs - x2) + (x0 - x2) * (ys - y2)) / det
        c = 1 - a - b
        inside = (a >= -1e-9) & (b >= -1e-9) & (c >= -1e-9)
        z = a * p[0, 2] + b * p[1, 2] + c * p[2, 2]
        block = depth[lo[1]:hi[1], lo[0]:hi[0]]
        block[inside] = np.maximum(block[inside], z[inside])
    depth[~np.isfinite(depth)] = np.nan
    return depth


def harmonic_fill(depth: np.ndarray, edge: float) -> np.ndarray:
    """NaN cells filled by the solution of Laplace's equation, the known cells and the grid's border (at
    ``edge``) held fixed: the smoothest surface that meets the mesh."""
    n = depth.shape[0]
    known = np.isfinite(depth)
    fixed = known.copy()
    fixed[[0, -1], :] = fixed[:, [0, -1]] = True
    values = np.where(known, depth, edge)
    unknown = np.flatnonzero(~fixed)
    index = -np.ones(n * n, int)
    index[unknown] = np.arange(len(unknown))
    a = lil_matrix((len(unknown), len(unknown)))
    rhs = np.zeros(len(unknown))
    flat = values.ravel()
    for k, cell in enumerate(unknown):
        a[k, k] = 4.0
        for nb in (cell - 1, cell + 1, cell - n, cell + n):
            if index[nb] >= 0:
                a[k, index[nb]] = -1.0
            else:
                rhs[k] += flat[nb]
    out = values.copy().ravel()
    out[unknown] = spsolve(a.tocsr(), rhs)
    return out.reshape(n, n)


def derive(obj: Path) -> dict:
    raw = obj.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if sha != SOURCE["sha256"]:
        raise SystemExit(f"{obj} is not the recorded mesh (sha256 {sha}, expected {SOURCE['sha256']})")
    verts, faces = read_obj(obj)
    template = symmetric_template()
    s, shift = fit(mesh_points(verts), template)
    pts = np.column_stack([verts[:, 0] * s + shift[0], -verts[:, 1] * s + shift[1], verts[:, 2] * s])
    step = 2 / CELLS
    pad = round(MARGIN / step)
    centres = -1 - MARGIN + step / 2 + step * np.arange(CELLS + 2 * pad)
    mesh = rasterise(pts, faces, centres)
    mesh = np.fmax(mesh, mesh[:, ::-1])  # the mesh is symmetric; this removes rounding's last 1e-7
    full = harmonic_fill(mesh, edge=float(pts[:, 2].min()))
    chip = (slice(pad, pad + CELLS),) * 2
    depth, covered = full[chip], np.isfinite(mesh[chip])
    depth = (depth + depth[:, ::-1]) / 2
    landmarks_z = [float(v) for v in mesh_points(verts)[:, 2] * s]
    return {
        "source": SOURCE,
        "how": HOW,
        "units": "half chip widths (1 = 100 px on a 200 px chip); x right, y down, depth towards the camera",
        "cells": CELLS,
        "scale_per_cm": round(s, 5),
        "template_symmetric": np.round(template, 4).tolist(),
        "landmark_depth": [round(v, 4) for v in landmarks_z],
        "mesh_covers": round(float(covered.mean()), 4),
        "depth": np.round(depth, 3).tolist(),
        "covered": ["".join("1" if c else "0" for c in row) for row in covered],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.face_depth", description=__doc__.split("\n")[0])
    p.add_argument("--obj", required=True, type=Path, help="canonical_face_model.obj at the recorded commit")
    p.add_argument("--out", type=Path, default=DEPTH_FILE)
    args = p.parse_args(argv)
    d = derive(args.obj)
    args.out.write_text(json.dumps(d, separators=(",", ":")) + "\n")
    dm = np.asarray(d["depth"])
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} kB; scale {d['scale_per_cm']} half widths per cm; "
          f"mesh covers {d['mesh_covers']:.0%} of the chip; depth {dm.min():.2f} .. {dm.max():.2f}; "
          f"landmark depths {d['landmark_depth']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

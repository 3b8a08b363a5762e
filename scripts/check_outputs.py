#!/usr/bin/env python3
"""Opens what `dcl count --out` writes with the readers of the tools people use, and checks the
points and sums against dcl's own x,y,score CSV and counts.csv:

- napari's builtin points reader (`napari_builtins.io.csv_to_layer_data`) on points/IMAGE.napari.csv;
- roifile (the ImageJ ROI reader of the Python world) on points/IMAGE.roi (or the RoiSet .zip);
- shapely (`shapely.geometry.shape`) on every feature of points/IMAGE.geojson, plus QuPath's
  reading rules (objectType, classification {name, color}, numbers under measurements);
- tifffile on density/IMAGE.tif: 2-D float32 whose sum is the image's count.

Usage: python3 scripts/check_outputs.py [--dcl target/debug/dcl] [--venv target/check-venv]
           [--keep DIR]
It creates the virtual environment on first use (pip install napari roifile tifffile shapely
from PyPI) and re-runs itself there. The inputs are the VGG fixtures (tests/fixtures/vgg) and
the fixture counter and localizer, counted twice (Point detections; one MultiPoint annotation
per image). Exits 1 on the first mismatch, naming the file.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ["napari", "roifile", "tifffile", "shapely", "numpy"]


def in_venv(venv):
    return os.path.realpath(sys.prefix) == os.path.realpath(venv)


def bootstrap(venv):
    """Creates the venv (once) and re-executes this script inside it."""
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        print(f"check_outputs: creating {venv} and installing {' '.join(PACKAGES)}", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call(
            [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES]
        )
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def close(a, b, tol, what):
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        fail(f"{what}: shape {a.shape} != {b.shape}")
    if a.size and np.max(np.abs(a - b)) > tol:
        fail(f"{what}: differs by {np.max(np.abs(a - b)):.4g} (> {tol})")


def read_points(path):
    """dcl's own x,y,score CSV: (N, 2) continuous coordinates and (N,) scores."""
    import numpy as np

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    xy = np.array([[float(r["x"]), float(r["y"])] for r in rows]).reshape(-1, 2)
    score = np.array([float(r["score"]) for r in rows])
    return xy, score


def check_napari(path, xy, score):
    from napari_builtins.io import csv_to_layer_data

    data, meta, kind = csv_to_layer_data(path, require_type="points")
    if kind != "points":
        fail(f"{path}: napari reads a {kind} layer, not points")
    # napari: (row, column) with pixel centres at integers
    close(data, xy[:, ::-1] - 0.5, 0.006, f"{path}: napari points vs x,y CSV")
    close(meta["properties"]["score"], score, 1e-5, f"{path}: napari score feature")


def check_roi(points_dir, name, xy):
    import numpy as np
    import roifile

    roi_path = os.path.join(points_dir, f"{name}.roi")
    zip_path = os.path.join(points_dir, f"{name}.zip")
    path = roi_path if os.path.exists(roi_path) else zip_path
    rois = roifile.roiread(path)
    if not isinstance(rois, list):
        rois = [rois]
    coords = []
    for r in rois:
        if r.roitype != roifile.ROI_TYPE.POINT:
            fail(f"{path}: ROI type {r.roitype!r}, not POINT")
        if not r.subpixelresolution:
            fail(f"{path}: no sub-pixel coordinates")
        coords.append(np.asarray(r.coordinates(), dtype=float).reshape(-1, 2))
    coords = np.concatenate(coords) if coords else np.zeros((0, 2))
    # ImageJ point selections: pixel centres at integers
    close(coords, xy - 0.5, 1e-4, f"{path}: ImageJ points vs x,y CSV")
    if len(rois) == 1 and rois[0].name != name:
        fail(f"{path}: ROI named {rois[0].name!r}, not {name!r}")


def check_geojson(path, xy, score, count, object_type, multipoint):
    import numpy as np
    from shapely.geometry import MultiPoint, Point, shape

    with open(path) as f:
        fc = json.load(f)
    if fc.get("type") != "FeatureCollection":
        fail(f"{path}: not a FeatureCollection")
    feats = fc["features"]
    pts, scores = [], []
    for ft in feats:
        if ft.get("type") != "Feature":
            fail(f"{path}: a feature of type {ft.get('type')!r}")
        g = shape(ft["geometry"])
        if not g.is_valid:
            fail(f"{path}: invalid geometry {g.wkt[:80]}")
        props = ft["properties"]
        # QuPath's reading rules (PathObjectTypeAdapters.PathObjectTypeAdapter.read, v0.4+):
        # objectType names the object, classification is {name, color: [r, g, b]}, numbers
        # live under measurements (a map name -> number); anything else would be dropped.
        extra = set(props) - {"objectType", "classification", "measurements"}
        if extra:
            fail(f"{path}: properties QuPath drops: {sorted(extra)}")
        if props["objectType"] != object_type:
            fail(f"{path}: objectType {props['objectType']!r}, expected {object_type!r}")
        c = props["classification"]
        if c.get("name") != "Cell" or len(c.get("color", [])) != 3 or not all(
            isinstance(v, int) and 0 <= v <= 255 for v in c["color"]
        ):
            fail(f"{path}: classification {c!r} is not {{name, color: [r, g, b]}}")
        m = props["measurements"]
        if not isinstance(m, dict) or not all(isinstance(v, (int, float)) for v in m.values()):
            fail(f"{path}: measurements {m!r} is not a map of numbers")
        if multipoint:
            if not isinstance(g, MultiPoint):
                fail(f"{path}: {g.geom_type}, expected MultiPoint")
            pts.extend((p.x, p.y) for p in g.geoms)
            if m["cells"] != len(g.geoms) or abs(m["count"] - count) > 1e-3:
                fail(f"{path}: measurements {m!r} vs {len(g.geoms)} points, count {count}")
        else:
            if not isinstance(g, Point):
                fail(f"{path}: {g.geom_type}, expected Point")
            pts.append((g.x, g.y))
            scores.append(m["score"])
    if multipoint and len(feats) != (1 if len(xy) else 0):
        fail(f"{path}: {len(feats)} features, expected one MultiPoint")
    close(np.array(pts).reshape(-1, 2), xy, 0.006, f"{path}: GeoJSON points vs x,y CSV")
    if not multipoint:
        close(scores, score, 1e-5, f"{path}: GeoJSON scores")


def check_density(path, count):
    import numpy as np
    import tifffile

    a = tifffile.imread(path)
    if a.dtype != np.float32 or a.ndim != 2:
        fail(f"{path}: {a.dtype} {a.shape}, expected a 2-D float32 map")
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        if (page.imagelength, page.imagewidth) != a.shape:
            fail(f"{path}: page shape {(page.imagelength, page.imagewidth)} != {a.shape}")
    s = float(a.astype(np.float64).sum())
    if abs(s - count) > 1e-3 * max(1.0, abs(count)):
        fail(f"{path}: sums to {s:.4f}, counts.csv says {count:.3f}")
    return a.shape


def count_into(dcl, out, extra):
    models = os.path.join(ROOT, "models", "vgg-cells")
    cmd = [
        dcl, "count", "--quiet",
        "--counter", os.path.join(models, "counter.safetensors"),
        "--localizer", os.path.join(models, "localizer.safetensors"),
        "--out", out, *extra, os.path.join(ROOT, "tests", "fixtures", "vgg"),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def check_folder(out, object_type, multipoint):
    with open(os.path.join(out, "counts.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        fail(f"{out}/counts.csv has no rows")
    total = 0
    for r in rows:
        name = os.path.splitext(os.path.basename(r["image"]))[0]
        count = float(r["count"])
        pdir = os.path.join(out, "points")
        xy, score = read_points(os.path.join(pdir, f"{name}.csv"))
        check_napari(os.path.join(pdir, f"{name}.napari.csv"), xy, score)
        check_roi(pdir, name, xy)
        check_geojson(os.path.join(pdir, f"{name}.geojson"), xy, score, count, object_type, multipoint)
        shape = check_density(os.path.join(out, "density", f"{name}.tif"), count)
        print(f"ok  {name}: {len(xy)} points (napari, ImageJ, QuPath/shapely), density {shape} sums to {count:.3f}")
        total += len(xy)
    return len(rows), total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dcl", help="the dcl binary (default: target/release/dcl, else target/debug/dcl)")
    ap.add_argument("--venv", default=os.path.join(ROOT, "target", "check-venv"))
    ap.add_argument("--keep", help="write the outputs here (default: a temporary folder)")
    a = ap.parse_args()
    if not in_venv(a.venv):
        bootstrap(a.venv)
    dcl = a.dcl
    if dcl is None:
        for c in ("release", "debug"):
            p = os.path.join(ROOT, "target", c, "dcl")
            if os.path.exists(p):
                dcl = p
                break
        else:
            fail("no dcl binary: run `cargo build` first or give --dcl")
    import napari
    import roifile
    import shapely
    import tifffile

    print(f"napari {napari.__version__}, roifile {roifile.__version__}, "
          f"tifffile {tifffile.__version__}, shapely {shapely.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        base = a.keep or tmp
        for sub, object_type, multipoint, extra in [
            ("points", "detection", False, []),
            ("multipoint", "annotation", True,
             ["--geojson-multipoint", "--geojson-object-type", "annotation"]),
        ]:
            out = os.path.join(base, sub)
            count_into(dcl, out, extra)
            n, pts = check_folder(out, object_type, multipoint)
            print(f"ok  {out}: {n} images, {pts} points ({object_type}, "
                  f"{'one MultiPoint per image' if multipoint else 'one Point per cell'})")
    print("all outputs open in napari, roifile, shapely and tifffile with the same points and sums")


if __name__ == "__main__":
    main()

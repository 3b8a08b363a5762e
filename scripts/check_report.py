#!/usr/bin/env python3
"""Loads the report.html of `dcl count --out`, `dcl eval --out` and `dcl merge` in headless
Chromium, reads the rendered DOM and checks it: every image of counts.csv / per_image.csv is listed with its
count (and for eval its true count and error), the table sorts (the page opened as
report.html#sort=-count lists the counts in descending order, done by the page's own script),
every thumbnail and link points to a file in the folder, and nothing is fetched from the
network. Takes a screenshot of each page (look at them: --keep DIR keeps them).

Usage: python3 scripts/check_report.py [--dcl target/debug/dcl] [--chromium chromium]
           [--keep DIR]
Standard library only. Chromium: Debian's `chromium` package (apt-get install chromium).
"""
import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from urllib.parse import unquote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models", "vgg-cells")
COUNTER = os.path.join(MODELS, "counter.safetensors")
LOCALIZER = os.path.join(MODELS, "localizer.safetensors")
VGG = os.path.join(ROOT, "tests", "fixtures", "vgg")


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


class Table(HTMLParser):
    """The rendered page's table#images: header titles and rows of (text, data-v) cells, plus
    every src/href in the page."""

    def __init__(self):
        super().__init__()
        self.headers, self.rows, self.links = [], [], []
        self.in_table = self.in_th = self.in_td = False
        self.cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a:
                self.links.append(a[k])
        if tag == "table" and a.get("id") == "images":
            self.in_table = True
        elif self.in_table and tag == "tr":
            self.row = []
        elif self.in_table and tag == "th":
            self.in_th, self.cell = True, ""
        elif self.in_table and tag == "td":
            self.in_td, self.cell = True, {"text": "", "v": a.get("data-v"), "img": None}
        elif self.in_td and tag == "img":
            self.cell["img"] = a.get("src")

    def handle_endtag(self, tag):
        if tag == "table" and self.in_table:
            self.in_table = False
        elif self.in_th and tag == "th":
            self.headers.append(self.cell.strip())
            self.in_th = False
        elif self.in_td and tag == "td":
            self.row.append(self.cell)
            self.in_td = False
        elif self.in_table and tag == "tr" and self.row:
            self.rows.append(self.row)

    def handle_data(self, data):
        if self.in_th:
            self.cell += data
        elif self.in_td:
            self.cell["text"] += data


def chromium_dom(chromium, url):
    r = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
         "--virtual-time-budget=3000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    if r.returncode != 0 or "<table" not in r.stdout:
        fail(f"chromium could not render {url}: {r.stderr[-800:]}")
    t = Table()
    t.feed(r.stdout)
    return t, r.stdout


def screenshot(chromium, url, png):
    r = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--virtual-time-budget=3000", "--window-size=1280,1700", f"--screenshot={png}", url],
        capture_output=True, text=True, timeout=120,
    )
    if r.returncode != 0 or not os.path.exists(png):
        fail(f"no screenshot of {url}: {r.stderr[-800:]}")


def check_links(folder, t, html):
    if re.search(r"(src|href)=\"(https?:)?//", html):
        fail(f"{folder}/report.html fetches from the network")
    for link in t.links:
        if link.startswith("#"):
            continue
        path = os.path.join(folder, unquote(link))
        if not os.path.isfile(path):
            fail(f"{folder}/report.html links to {link}, which is not there")


def col(t, title):
    if title not in t.headers:
        fail(f"no column {title!r} in {t.headers}")
    return t.headers.index(title)


def check_page(chromium, folder, expected, numeric_checks, shot):
    """expected: image -> {column title: value}; the rendered table must list exactly these."""
    url = "file://" + os.path.join(folder, "report.html")
    t, html = chromium_dom(chromium, url)
    check_links(folder, t, html)
    img = col(t, "image")
    seen = {}
    for r in t.rows:
        seen[r[img]["text"]] = r
    if sorted(seen) != sorted(expected):
        fail(f"{url}: lists {sorted(seen)}, expected {sorted(expected)}")
    thumbs = col(t, "overlay")
    for name, want in expected.items():
        r = seen[name]
        for title, value in want.items():
            got = float(r[col(t, title)]["text"])
            if abs(got - value) > 0.051:
                fail(f"{url}: {name}: {title} {got}, expected {value}")
        if not r[thumbs]["img"]:
            fail(f"{url}: {name} has no overlay thumbnail")
    # the page's own script sorts: opened with #sort=-<column>, descending
    for title in numeric_checks:
        key = re.sub(r"[^0-9a-z]", "-", title.lower())
        t2, _ = chromium_dom(chromium, f"{url}#sort=-{key}")
        vals = [float(r[col(t2, title)]["v"]) for r in t2.rows]
        if vals != sorted(vals, reverse=True):
            fail(f"{url}#sort=-{key}: not in descending order: {vals}")
    screenshot(chromium, url, shot)
    print(f"ok  {url}: {len(t.rows)} images with their values; sorted by {', '.join(numeric_checks)}; "
          f"{len(t.links)} links resolve; screenshot {shot}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dcl")
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    ap.add_argument("--keep", help="write the outputs and screenshots here")
    a = ap.parse_args()
    if not a.chromium:
        fail("no chromium: apt-get install chromium (Debian), or give --chromium")
    dcl = a.dcl or next(
        (p for p in (os.path.join(ROOT, "target", c, "dcl") for c in ("release", "debug"))
         if os.path.exists(p)), None)
    if not dcl:
        fail("no dcl binary: cargo build first, or give --dcl")
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.abspath(a.keep or tmp)
        os.makedirs(base, exist_ok=True)
        count_dir, eval_dir = os.path.join(base, "count"), os.path.join(base, "eval")
        subprocess.run([dcl, "count", "--quiet", "--counter", COUNTER, "--localizer", LOCALIZER,
                        "--out", count_dir, VGG], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(count_dir, "counts.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        expected = {r["image"]: {"count": float(r["count"]), "width": float(r["width"]),
                                 "height": float(r["height"])} for r in rows}
        check_page(a.chromium, count_dir, expected, ["count"], os.path.join(base, "count.png"))

        subprocess.run([dcl, "eval", "--counter", COUNTER, "--localizer", LOCALIZER,
                        "--data", VGG, "--out", eval_dir], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(eval_dir, "per_image.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        expected = {r["image"]: {"true count": float(r["true"]), "predicted": float(r["predicted"]),
                                 "error": float(r["error"])} for r in rows}
        check_page(a.chromium, eval_dir, expected, ["abs error", "true count"],
                   os.path.join(base, "eval.png"))

        # two shards counted with the shipped model (the same networks), then merged: the
        # merged page lists every image with the unsharded counts, its links reach the shards
        shards = [os.path.join(base, f"shard{k}") for k in range(2)]
        for k, d in enumerate(shards):
            subprocess.run([dcl, "count", "--quiet", "--model", "vgg-cells", "--shard", f"{k}/2",
                            "--out", d, VGG], check=True, stdout=subprocess.DEVNULL)
        merged = os.path.join(base, "merged")
        subprocess.run([dcl, "merge", "--out", merged, *shards], check=True,
                       stderr=subprocess.DEVNULL)
        with open(os.path.join(count_dir, "counts.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        expected = {r["image"]: {"count": float(r["count"])} for r in rows}
        check_page(a.chromium, merged, expected, ["count"], os.path.join(base, "merged.png"))
    print("the count, eval and merged reports render in Chromium with every image and its numbers")


if __name__ == "__main__":
    main()

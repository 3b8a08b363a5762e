//! `report.html` of `dcl count --out` and `dcl eval --out` (the page itself: `report::html`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cli::outputs::Owner;
use crate::cli::parse_csv;
use crate::fsutil::{atomic_write, read_own_file, OUTPUT_MARKER};
use crate::report::html::{render, utc_now, Cell, Column, Page};

/// Where a counts row's per-image outputs are, seen from a page: the folder that holds them
/// (`overlays/`, `thumbs/`, `points/`), its path relative to the page's folder, and the
/// image's outputs name.
struct Files<'a> {
    dir: &'a Path,
    rel: &'a str,
    name: &'a str,
}

impl Files<'_> {
    /// `sub/NAME.ext` as the page links it, when the file exists.
    fn link(&self, sub: &str, ext: &str) -> Option<String> {
        let file = format!("{sub}/{}.{ext}", self.name);
        self.dir
            .join(&file)
            .is_file()
            .then(|| format!("{}{file}", self.rel))
    }

    /// Its overlay cell: the thumbnail (or, from a folder written before thumbnails, the
    /// overlay itself) linking to the full-size overlay.
    fn overlay_cell(&self) -> Cell {
        match self.link("overlays", "png") {
            None => Cell::Empty,
            Some(full) => Cell::Thumb {
                src: self.link("thumbs", "png").unwrap_or_else(|| full.clone()),
                href: full,
                alt: self.name.to_string(),
            },
        }
    }

    /// Rows (data lines) of its points CSV, None when it does not exist.
    fn located(&self) -> Option<usize> {
        let path = self.dir.join("points").join(format!("{}.csv", self.name));
        let text = std::fs::read_to_string(path).ok()?;
        Some(text.lines().count().saturating_sub(1))
    }
}

/// A count folder's rows of counts.csv (header left out).
fn folder_rows(dir: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    let csv = read_own_file(&dir.join("counts.csv"))?.unwrap_or_default();
    let (records, _) = parse_csv(&String::from_utf8_lossy(&csv)).map_err(anyhow::Error::msg)?;
    Ok(records
        .into_iter()
        .skip(1)
        .filter(|r| r.len() == 5)
        .collect())
}

/// From a count folder's output marker: the outputs name of each counted image (by its
/// counts.csv image field).
fn output_names(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let marker: serde_json::Value = read_own_file(&dir.join(OUTPUT_MARKER))?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let index: BTreeMap<String, Owner> =
        serde_json::from_value(marker["names"].clone()).unwrap_or_default();
    Ok(index.into_iter().map(|(name, o)| (o.row, name)).collect())
}

/// `to` relative to the folder `from` (both absolute), as a URL path ending in '/'.
fn relative_dir(from: &Path, to: &Path) -> String {
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut rel = "../".repeat(f.len() - common);
    for c in &t[common..] {
        rel += &c.as_os_str().to_string_lossy();
        rel.push('/');
    }
    rel
}

/// The table of a counts page, its summary and its histogram, from counts.csv rows (image,
/// count, width, height, counter hash) and where each row's outputs are.
fn counts_page(
    out: &Path,
    rows: &[(&Vec<String>, Option<Files>)],
    title: String,
    settings: Vec<(String, String)>,
    note: &str,
) -> anyhow::Result<()> {
    let with_points = rows
        .iter()
        .any(|(_, f)| f.as_ref().is_some_and(|f| f.located().is_some()));
    let mut columns = vec![
        Column::text("image"),
        Column::num("count"),
        Column::num("width"),
        Column::num("height"),
    ];
    if with_points {
        columns.push(Column::num("cells located"));
    }
    columns.push(Column::text("counter hash"));
    columns.push(Column::text("overlay"));
    let (mut counts, mut total_located) = (Vec::new(), 0usize);
    let mut table = Vec::new();
    for (r, files) in rows {
        let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
        let count = num(&r[1]);
        counts.push(count);
        let mut row = vec![
            Cell::Text(r[0].clone()),
            Cell::num(count, 1),
            Cell::num(num(&r[2]), 0),
            Cell::num(num(&r[3]), 0),
        ];
        if with_points {
            match files.as_ref().and_then(Files::located) {
                Some(k) => {
                    total_located += k;
                    row.push(Cell::num(k as f64, 0));
                }
                None => row.push(Cell::Empty),
            }
        }
        row.push(Cell::Text(r[4].clone()));
        row.push(files.as_ref().map_or(Cell::Empty, Files::overlay_cell));
        table.push(row);
    }
    let total: f64 = counts.iter().filter(|c| c.is_finite()).sum();
    let mut summary = vec![
        ("images".to_string(), rows.len().to_string()),
        ("cells counted".to_string(), format!("{total:.1}")),
        (
            "mean per image".to_string(),
            format!("{:.1}", total / rows.len().max(1) as f64),
        ),
    ];
    if with_points {
        summary.push(("cells located".into(), total_located.to_string()));
    }
    let plots: Vec<(String, String)> = histogram_plot(
        out,
        "counts_histogram.png",
        "counts per image",
        "count (cells)",
        &counts,
    )
    .map(|f| ("counts per image".to_string(), f))
    .into_iter()
    .collect();
    let page = Page {
        title,
        summary,
        plots,
        columns,
        rows: table,
        settings,
        note: note.into(),
    };
    atomic_write(&out.join("report.html"), render(&page).as_bytes())?;
    Ok(())
}

/// The first settings of every page: when, which dcl, and the command that wrote it.
fn run_settings() -> Vec<(String, String)> {
    vec![
        ("generated".to_string(), utc_now()),
        ("dcl".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("command".to_string(), command_line()),
    ]
}

fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.contains([' ', '"', '\'']) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A histogram of `values` saved as `out/file` for the page; None when there are none.
fn histogram_plot(out: &Path, file: &str, title: &str, x: &str, values: &[f64]) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let img = crate::report::plot::histogram(title, x, values, 20);
    crate::report::plot::save_png(&img, &out.join(file)).ok()?;
    Some(file.to_string())
}

const COUNT_NOTE: &str = "Click a column to sort, a thumbnail for the full-size overlay (located \
     cells ringed); points/ holds each image's cells for napari (.napari.csv), QuPath (.geojson) \
     and ImageJ (.roi), density/ its density map (float TIFF).";

/// Writes `out/report.html` for a count folder: every row of its counts.csv (this run's and
/// earlier runs'), with its overlay, and this run's settings (`tile_overlap` in network pixels,
/// the device as given).
pub fn count_report(
    out: &Path,
    tile_overlap: (usize, usize),
    device: &str,
    chosen: &crate::cli::models::Chosen,
    threshold: f32,
    min_distance: f32,
) -> anyhow::Result<()> {
    let (records, name_of) = (folder_rows(out)?, output_names(out)?);
    let rows: Vec<_> = records
        .iter()
        .map(|r| {
            let files = name_of.get(&r[0]).map(|name| Files {
                dir: out,
                rel: "",
                name,
            });
            (r, files)
        })
        .collect();
    let mut settings = run_settings();
    settings.push(("counter".to_string(), chosen.counter_setting()));
    if let Some(l) = chosen.localizer_setting() {
        settings.push(("localizer".into(), l));
        settings.push(("point threshold (cells/px)".into(), threshold.to_string()));
        settings.push(("min distance (network px)".into(), min_distance.to_string()));
    }
    settings.push((
        "tile / overlap (network px)".into(),
        format!("{} / {}", tile_overlap.0, tile_overlap.1),
    ));
    settings.push(("device".into(), device.to_string()));
    counts_page(
        out,
        &rows,
        format!("dcl count: {}", out.display()),
        settings,
        &format!("Rows of every run into this folder (counts.csv). {COUNT_NOTE}"),
    )
}

/// Writes `out/report.html` for merged shards: the merged rows (`rows`, image first), each
/// with the overlay in the shard folder that counted it (`shard_dirs`, absolute, linked
/// relative to `out`), and the shards' common settings.
pub fn merge_report(
    out: &Path,
    rows: &[Vec<String>],
    shard_dirs: &[PathBuf],
    shards: usize,
    settings: &serde_json::Value,
) -> anyhow::Result<()> {
    let out_abs = std::path::absolute(out)?;
    let rels: Vec<String> = shard_dirs
        .iter()
        .map(|d| relative_dir(&out_abs, d))
        .collect();
    let mut files_of: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (k, d) in shard_dirs.iter().enumerate() {
        for (image, name) in output_names(d)? {
            files_of.insert(image, (k, name));
        }
    }
    let table: Vec<_> = rows
        .iter()
        .map(|r| {
            let files = files_of.get(&r[0]).map(|(k, name)| Files {
                dir: &shard_dirs[*k],
                rel: &rels[*k],
                name,
            });
            (r, files)
        })
        .collect();
    let mut list = run_settings();
    list.push((
        "shards".to_string(),
        format!("{} of {shards}", shard_dirs.len()),
    ));
    if let Some(map) = settings.as_object() {
        for (k, v) in map {
            let shown = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "the model's own".into(),
                v => v.to_string(),
            };
            list.push((k.replace('_', " "), shown));
        }
    }
    counts_page(
        out,
        &table,
        format!("dcl merge: {}", out.display()),
        list,
        &format!("The merged rows of the shards (counts.csv); each image's outputs stay in the shard folder that counted it. {COUNT_NOTE}"),
    )
}

/// One evaluated image, for the eval report.
pub struct EvalRow {
    pub image: String,
    /// Its outputs' name (overlays/NAME.png).
    pub name: String,
    pub predicted: f64,
    pub truth: f64,
    pub width: usize,
    pub height: usize,
    /// Cells located (with a localizer).
    pub located: Option<usize>,
}

/// Writes `out/report.html` for an evaluation: metrics, the scatter and error plots (already
/// in `out`), a row per image and the settings.
pub fn eval_report(
    out: &Path,
    rows: &[EvalRow],
    summary: Vec<(String, String)>,
    mut settings: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let with_points = rows.iter().any(|r| r.located.is_some());
    let mut columns = vec![
        Column::text("image"),
        Column::num("true count"),
        Column::num("predicted"),
        Column::num("error"),
        Column::num("abs error"),
        Column::num("width"),
        Column::num("height"),
    ];
    if with_points {
        columns.push(Column::num("cells located"));
    }
    columns.push(Column::text("overlay"));
    let table = rows
        .iter()
        .map(|r| {
            let e = r.predicted - r.truth;
            let mut row = vec![
                Cell::Text(r.image.clone()),
                Cell::num(r.truth, 0),
                Cell::num(r.predicted, 1),
                Cell::num(e, 1),
                Cell::num(e.abs(), 1),
                Cell::num(r.width as f64, 0),
                Cell::num(r.height as f64, 0),
            ];
            if with_points {
                row.push(r.located.map_or(Cell::Empty, |k| Cell::num(k as f64, 0)));
            }
            let files = Files {
                dir: out,
                rel: "",
                name: &r.name,
            };
            row.push(files.overlay_cell());
            row
        })
        .collect();
    let plots = [
        ("predicted vs true counts", "scatter.png"),
        ("count errors (predicted - true)", "errors.png"),
    ]
    .into_iter()
    .filter(|(_, f)| out.join(f).is_file())
    .map(|(c, f)| (c.to_string(), f.to_string()))
    .collect();
    settings.splice(0..0, run_settings());
    let page = Page {
        title: format!("dcl eval: {}", out.display()),
        summary,
        plots,
        columns,
        rows: table,
        settings,
        note: "Click a column to sort, a thumbnail for the full-size overlay (located cells \
               ringed; predicted and true counts in the corner). per_image.csv and \
               summary.json hold the same numbers."
            .into(),
    };
    atomic_write(&out.join("report.html"), render(&page).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::relative_dir;
    use std::path::Path;

    #[test]
    fn relative_dirs_climb_to_the_common_folder() {
        let rel = |a: &str, b: &str| relative_dir(Path::new(a), Path::new(b));
        assert_eq!(rel("/w/counts/all", "/w/counts/shard-3"), "../shard-3/");
        assert_eq!(rel("/w/a", "/w/a"), "");
        assert_eq!(rel("/w/a/b", "/x"), "../../../x/");
    }
}

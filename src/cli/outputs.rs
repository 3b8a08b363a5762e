//! Files `dcl count --out` writes per image: points as CSV (x,y,score and napari's layout),
//! QuPath GeoJSON and an ImageJ ROI (`report::exchange`), an overlay PNG and its thumbnail for
//! the report, and the density map as 32-bit float TIFF. Every file is written atomically.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::cli::{csv_field, parse_csv};
use crate::data::image_io::{write_png_rgb8, write_tiff_f32};
use crate::fsutil::{
    atomic_write, atomic_write_with, marker_json, open_append, prepare_output_dir, prepare_subdir,
    read_own_file, DirLock, OUTPUT_MARKER,
};
use crate::infer::image_density::image_density;
use crate::infer::points::Point;
use crate::infer::{Map, Prediction};
use crate::report::exchange::{self, ObjectType};

/// Creates the sub-folders of `dcl count --out` (refusing links), before any work is done.
pub fn prepare(out: &Path, with_points: bool) -> anyhow::Result<()> {
    let mut dirs = vec![
        out.join("overlays"),
        out.join("thumbs"),
        out.join("density"),
    ];
    if with_points {
        dirs.push(out.join("points"));
    }
    dirs.iter().try_for_each(|d| Ok(prepare_subdir(d)?))
}

/// The columns of counts.csv.
pub const COUNTS_HEADER: &str = "image,count,width,height,counter_hash";
const COUNTS_CSV: &str = "counts.csv";
/// Rows of a run in progress, one line each as its image's outputs are written, so a run that
/// is killed or cannot write counts.csv loses none: the next run into the folder merges them.
const JOURNAL: &str = ".counts.journal.csv";

/// One row of counts.csv, as fields.
pub type CountsRecord = Vec<String>;

/// An image's entry in the output folder's index: the file it was counted from and its row's
/// `image` field. The index (kept in the folder's `.dcl-output` marker) says which image
/// owns the outputs named `NAME.*`, so a later run never overwrites another image's outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    /// Absolute path of the counted file.
    pub path: PathBuf,
    /// Its `image` field in counts.csv.
    pub row: String,
}

/// `dcl count --out DIR` while it runs: the folder locked against a second run, its existing
/// rows and index, and the journal of this run's rows. Successive runs into one folder merge
/// their rows (an image counted again replaces its row); concurrent ones are refused.
pub struct CountsFolder {
    out: PathBuf,
    _lock: DirLock,
    rows: Vec<CountsRecord>,
    index: BTreeMap<String, Owner>,
    journal: Mutex<Option<std::fs::File>>,
    journal_failed: AtomicBool,
    /// `image` fields of rows that this run's rows replace (the same files, named otherwise).
    replaced: Vec<String>,
}

/// The records of one of our CSV files; None when it does not exist. `journal`: a file that
/// a killed run may have left in the middle of a line, whose incomplete tail is left out;
/// otherwise a last line without its line end is kept.
fn read_records(
    path: &Path,
    what: &str,
    journal: bool,
) -> anyhow::Result<Option<Vec<CountsRecord>>> {
    let Some(bytes) = read_own_file(path)? else {
        return Ok(None);
    };
    let mut text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) if journal => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        Err(_) => anyhow::bail!(
            "{}: not a {what}: not UTF-8 text; move it away",
            path.display()
        ),
    };
    if !journal && !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    loop {
        match parse_csv(&text) {
            Ok((recs, _)) => return Ok(Some(recs)),
            // a cut inside a quoted field: drop the unfinished last line
            Err(_) if journal => {
                let end = text.trim_end_matches('\n').rfind('\n');
                text.truncate(end.map_or(0, |e| e + 1));
            }
            Err(e) => anyhow::bail!("{}: not a {what}: {e}; move it away", path.display()),
        }
    }
}

impl CountsFolder {
    /// Prepares, marks and locks `out`, merges the rows a crashed run left in its journal, and
    /// reads the folder's rows and index.
    pub fn open(out: &Path) -> anyhow::Result<CountsFolder> {
        prepare_output_dir(out, "count")?;
        let lock = DirLock::acquire(out)?;
        let csv = out.join(COUNTS_CSV);
        let rows = match read_records(&csv, "dcl counts file", false)? {
            None => Vec::new(),
            Some(mut recs) => {
                let header = recs.first().map(|r| r.join(","));
                if header.as_deref() != Some(COUNTS_HEADER)
                    || recs
                        .iter()
                        .any(|r| r.len() != COUNTS_HEADER.split(',').count())
                {
                    anyhow::bail!(
                        "{}: not a dcl counts file (expected the columns {COUNTS_HEADER}); move \
                         it away or choose another --out",
                        csv.display()
                    );
                }
                recs.remove(0);
                recs
            }
        };
        let marker: serde_json::Value = read_own_file(&out.join(OUTPUT_MARKER))?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let index: BTreeMap<String, Owner> =
            serde_json::from_value(marker["names"].clone()).unwrap_or_default();
        let mut folder = CountsFolder {
            out: out.to_path_buf(),
            _lock: lock,
            rows,
            index,
            journal: Mutex::new(None),
            journal_failed: AtomicBool::new(false),
            replaced: Vec::new(),
        };
        folder.recover()?;
        Ok(folder)
    }

    /// Merges the journal of an earlier run that ended before writing counts.csv.
    fn recover(&mut self) -> anyhow::Result<()> {
        let path = self.out.join(JOURNAL);
        let Some(recs) = read_records(&path, "dcl counts journal", true)? else {
            return Ok(());
        };
        let n = COUNTS_HEADER.split(',').count();
        let recs: Vec<CountsRecord> = recs.into_iter().filter(|r| r.len() == n).collect();
        if !recs.is_empty() {
            eprintln!(
                "note: {} rows of an earlier run that ended early, kept in {}, are merged into \
                 {}",
                recs.len(),
                path.display(),
                self.out.join(COUNTS_CSV).display()
            );
            merge(&mut self.rows, recs, &[]);
            self.write_csv()?;
        }
        std::fs::remove_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: cannot remove: {e}", path.display()))?;
        Ok(())
    }

    /// Checks that this run's inputs do not take names owned by other images, records them in
    /// the index, and starts the journal. Before any work: a conflict leaves the folder as is.
    pub fn reserve(&mut self, files: &[(PathBuf, String)]) -> anyhow::Result<()> {
        for (path, name) in files {
            let (abs, row) = (absolute(path), path.display().to_string());
            let conflict = |what: String, owner: &Owner| {
                anyhow::anyhow!(
                    "{}: {what}, which {} already holds for {}; count it into another --out",
                    path.display(),
                    self.out.display(),
                    owner.path.display()
                )
            };
            if let Some(owner) = self.index.get(name) {
                if !same_file(&owner.path, &abs) {
                    return Err(conflict(
                        format!("its outputs would be named '{name}'"),
                        owner,
                    ));
                }
            }
            for owner in self.index.values() {
                if same_file(&owner.path, &abs) {
                    // the same image counted again (maybe by another path): its row is replaced
                    self.replaced.push(owner.row.clone());
                } else if owner.row == row {
                    return Err(conflict(format!("its row would read '{row}'"), owner));
                }
            }
        }
        for (path, name) in files {
            let row = path.display().to_string();
            self.index.insert(
                name.clone(),
                Owner {
                    path: absolute(path),
                    row,
                },
            );
        }
        let mut marker: serde_json::Value = serde_json::from_str(&marker_json("count"))?;
        marker["names"] = serde_json::to_value(&self.index)?;
        atomic_write(&self.out.join(OUTPUT_MARKER), marker.to_string().as_bytes())?;
        *self.journal.lock().expect("journal lock") = Some(open_append(&self.out.join(JOURNAL))?);
        Ok(())
    }

    /// Records one finished image's row in the journal (best effort: a failure is reported
    /// once and the run goes on; counts.csv is still written at the end).
    pub fn journal(&self, record: &[String]) {
        let line = record
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",")
            + "\n";
        let mut j = self.journal.lock().expect("journal lock");
        let Some(f) = j.as_mut() else {
            return;
        };
        if let Err(e) = f.write_all(line.as_bytes()) {
            if !self.journal_failed.swap(true, Ordering::SeqCst) {
                eprintln!(
                    "warning: {}: cannot record rows as they are made: {e}",
                    self.out.join(JOURNAL).display()
                );
            }
        }
    }

    fn csv_text(&self) -> String {
        let mut text = format!("{COUNTS_HEADER}\n");
        for r in &self.rows {
            text += &r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",");
            text.push('\n');
        }
        text
    }

    fn write_csv(&self) -> crate::Result<()> {
        atomic_write(&self.out.join(COUNTS_CSV), self.csv_text().as_bytes())
    }

    /// Merges this run's rows into counts.csv (a row of an image counted again is replaced)
    /// and removes the journal. Nothing is written when there is nothing to record (a run
    /// whose every image failed leaves no header-only file). When counts.csv cannot be
    /// written, the rows are saved to a new file in the system's temporary folder and kept in
    /// the journal (the next run merges them), and the error says where.
    pub fn finish(mut self, new: Vec<CountsRecord>) -> anyhow::Result<()> {
        *self.journal.lock().expect("journal lock") = None;
        let journal = self.out.join(JOURNAL);
        let csv = self.out.join(COUNTS_CSV);
        if new.is_empty() {
            let _ = std::fs::remove_file(&journal);
            return Ok(());
        }
        let n = new.len();
        let fallback_text = {
            let mut t = format!("{COUNTS_HEADER}\n");
            for r in &new {
                t += &r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",");
                t.push('\n');
            }
            t
        };
        let replaced = std::mem::take(&mut self.replaced);
        merge(&mut self.rows, new, &replaced);
        match self.write_csv() {
            Ok(()) => {
                let _ = std::fs::remove_file(&journal);
                Ok(())
            }
            Err(e) => {
                let saved = crate::fsutil::write_new_file(
                    &std::env::temp_dir(),
                    "dcl-counts-",
                    ".csv",
                    fallback_text.as_bytes(),
                );
                let mut where_ = vec!["printed above on stdout".to_string()];
                if let Ok(p) = &saved {
                    where_.push(format!("saved to {}", p.display()));
                }
                if journal.exists() && !self.journal_failed.load(Ordering::SeqCst) {
                    where_.push(format!(
                        "kept in {} (merged into {} by the next run there)",
                        journal.display(),
                        csv.display()
                    ));
                }
                anyhow::bail!("{e}; this run's {n} counts are {}", where_.join(", "))
            }
        }
    }
}

/// Replaces the rows whose `image` field is in `replaced` or equals a new row's, then appends
/// the new rows (in their order).
fn merge(rows: &mut Vec<CountsRecord>, new: Vec<CountsRecord>, replaced: &[String]) {
    rows.retain(|r| {
        let image = r.first().map(String::as_str).unwrap_or_default();
        !replaced.iter().any(|x| x == image) && !new.iter().any(|n| n.first() == r.first())
    });
    rows.extend(new);
}

fn absolute(p: &Path) -> PathBuf {
    p.canonicalize()
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Whether two absolute paths name the same file (also through links).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

/// Creates one output folder of kind `kind` (`--density-dir`): checked, marked and cleaned.
pub fn prepare_dir(d: &Path, kind: &str) -> anyhow::Result<()> {
    Ok(prepare_output_dir(d, kind)?)
}

/// Writes a map as a single-channel 32-bit float TIFF, atomically (the data module's writer).
fn write_map(path: &Path, map: &Map) -> anyhow::Result<()> {
    Ok(write_tiff_f32(path, map.width, map.height, &map.data)?)
}

pub fn write_density(dir: &Path, name: &str, p: &Prediction) -> anyhow::Result<()> {
    write_map(&dir.join(format!("{name}.coarse.tif")), &p.coarse)?;
    if let Some(d) = &p.density {
        write_map(&dir.join(format!("{name}.density.tif")), d)?;
    }
    Ok(())
}

/// dcl's own points CSV (`x,y,score`, image pixels), written row by row to `out`.
pub fn write_points_csv(out: &mut dyn Write, points: &[Point]) -> std::io::Result<()> {
    out.write_all(b"x,y,score\n")?;
    for p in points {
        writeln!(out, "{:.2},{:.2},{:.6}", p.x, p.y, p.score)?;
    }
    Ok(())
}

/// How located cells are written for QuPath (`dcl count --out` with a localizer).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PointOptions {
    /// QuPath object type of each located cell in points/IMAGE.geojson.
    #[arg(long, value_enum, default_value_t = ObjectType::Detection)]
    pub geojson_object_type: ObjectType,
    /// One MultiPoint feature per image in points/IMAGE.geojson instead of one Point feature
    /// per cell (lighter for QuPath with thousands of cells).
    #[arg(long)]
    pub geojson_multipoint: bool,
}

/// An image's located cells in DIR: NAME.csv (x,y,score), NAME.napari.csv, NAME.geojson
/// (QuPath) and NAME.roi or NAME.zip (ImageJ). Images held whole and whole slides alike.
pub fn write_point_files(
    dir: &Path,
    name: &str,
    pts: &[Point],
    count: f64,
    opts: &PointOptions,
) -> anyhow::Result<()> {
    // written as they are made: a whole-slide image has millions of cells
    atomic_write_with(&dir.join(format!("{name}.csv")), |w| {
        write_points_csv(w, pts)
    })?;
    atomic_write_with(&dir.join(format!("{name}.napari.csv")), |w| {
        exchange::write_napari_csv(w, pts)
    })?;
    atomic_write_with(&dir.join(format!("{name}.geojson")), |w| {
        exchange::write_qupath_geojson(
            w,
            pts,
            opts.geojson_object_type,
            opts.geojson_multipoint,
            count,
        )
    })?;
    let ext = exchange::imagej_extension(pts.len());
    // the other kind of an earlier run (fewer or more cells) would be stale
    let other = if ext == "roi" { "zip" } else { "roi" };
    let _ = std::fs::remove_file(dir.join(format!("{name}.{other}")));
    atomic_write_with(&dir.join(format!("{name}.{ext}")), |w| {
        exchange::write_imagej_points(w, pts, name)
    })?;
    Ok(())
}

/// The largest side of the thumbnails in `thumbs/`.
pub const THUMB_SIDE: u32 = 160;

/// Writes `thumbs/NAME.png`, the overlay scaled down for the report's table.
pub fn write_thumbnail(out: &Path, name: &str, overlay: &image::RgbImage) -> anyhow::Result<()> {
    let (w, h) = overlay.dimensions();
    let k = (THUMB_SIDE as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * k).round() as u32).max(1),
        ((h as f64 * k).round() as u32).max(1),
    );
    let thumb = image::imageops::thumbnail(overlay, tw, th);
    write_png(&out.join("thumbs").join(format!("{name}.png")), &thumb)
}

/// Writes an RGB image as a PNG file, atomically (the data module's writer).
pub fn write_png(path: &Path, img: &image::RgbImage) -> anyhow::Result<()> {
    let (w, h) = img.dimensions();
    Ok(write_png_rgb8(path, w as usize, h as usize, img.as_raw())?)
}

pub fn write_image_outputs(
    out: &Path,
    name: &str,
    img: &image::DynamicImage,
    p: &Prediction,
    points: Option<&[Point]>,
    opts: &PointOptions,
) -> anyhow::Result<()> {
    if let Some(pts) = points {
        write_point_files(&out.join("points"), name, pts, p.count, opts)?;
    }
    let ov = crate::report::overlay::overlay(img, points, p.count);
    write_png(&out.join("overlays").join(format!("{name}.png")), &ov)?;
    write_thumbnail(out, name, &ov)?;
    write_map(
        &out.join("density").join(format!("{name}.tif")),
        &image_density(p),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When counts.csv cannot be written at the end (here a folder stands in its way; a full
    /// disk does the same), the error says where the counts are: a new file in the temporary
    /// folder, and the journal, which the next run merges.
    #[test]
    fn a_failed_final_write_keeps_the_counts_and_says_where() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let img = d.path().join("a.png");
        std::fs::write(&img, b"").unwrap();
        let record: CountsRecord = vec![
            img.display().to_string(),
            "12.500".into(),
            "40".into(),
            "24".into(),
            "abc".into(),
        ];
        let mut f = CountsFolder::open(&out).unwrap();
        f.reserve(&[(img.clone(), "a".into())]).unwrap();
        f.journal(&record);
        std::fs::create_dir(out.join(COUNTS_CSV)).unwrap();
        let e = f.finish(vec![record.clone()]).unwrap_err().to_string();
        assert!(
            e.contains("counts.csv") && e.contains("1 counts are printed above on stdout"),
            "{e}"
        );
        let saved = e
            .split("saved to ")
            .nth(1)
            .and_then(|s| s.split(", kept").next())
            .unwrap();
        let text = std::fs::read_to_string(saved).unwrap();
        assert!(
            text.starts_with(COUNTS_HEADER) && text.contains("12.500"),
            "{text}"
        );
        std::fs::remove_file(saved).unwrap();
        assert!(e.contains(JOURNAL), "{e}");
        // the next run merges the journal
        std::fs::remove_dir(out.join(COUNTS_CSV)).unwrap();
        let f = CountsFolder::open(&out).unwrap();
        assert_eq!(f.rows, vec![record]);
        assert!(!out.join(JOURNAL).exists());
        let text = std::fs::read_to_string(out.join(COUNTS_CSV)).unwrap();
        assert!(text.contains("12.500"), "{text}");
    }

    /// A journal cut in the middle of a line (a kill during its write, even inside a quoted
    /// name) still gives back its complete rows.
    #[test]
    fn a_journal_cut_mid_line_keeps_its_complete_rows() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        crate::fsutil::prepare_output_dir(&out, "count").unwrap();
        let row = "in/a.png,3.000,4,4,ab\n";
        for tail in ["", "in/b.png,1.0", "\"in/x\ny.png,2.0", "\"in/c"] {
            std::fs::write(out.join(JOURNAL), format!("{row}{tail}")).unwrap();
            let f = CountsFolder::open(&out).unwrap();
            assert_eq!(f.rows.len(), 1, "{tail:?}");
            assert_eq!(f.rows[0][0], "in/a.png");
            assert!(!out.join(JOURNAL).exists());
        }
        // counts.csv edited by hand without its last line end: the row is kept
        std::fs::write(
            out.join(COUNTS_CSV),
            format!("{COUNTS_HEADER}\nin/z.png,1.000,4,4,ab"),
        )
        .unwrap();
        let f = CountsFolder::open(&out).unwrap();
        assert_eq!(f.rows.len(), 1);
        assert_eq!(f.rows[0][0], "in/z.png");
    }
}

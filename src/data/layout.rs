//! Folder layouts: detecting which one a folder uses and pairing each image with its annotation.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::data::image_io::{is_image_file, read_dots_image, read_image_rgb, read_points_csv};
use crate::data::{DotRule, Format, RgbImage};
use crate::error::{Error, Result};

/// Where an image's cells are marked.
#[derive(Clone, Debug, PartialEq)]
pub enum Annotation {
    Dots { path: PathBuf, rule: DotRule },
    Csv(PathBuf),
}

impl Annotation {
    pub fn path(&self) -> &Path {
        match self {
            Annotation::Dots { path, .. } | Annotation::Csv(path) => path,
        }
    }
}

/// An image and its annotation.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub image: PathBuf,
    pub annotation: Annotation,
    /// The image file's stem (sample names derive from it).
    pub stem: String,
}

/// A scanned folder: its layout, the complete pairs (sorted by image path) and the files that
/// could not be paired (annotation missing, annotation without image), which are errors unless
/// skipped.
#[derive(Debug)]
pub struct Scan {
    pub format: Format,
    pub items: Vec<Item>,
    pub problems: Vec<(PathBuf, String)>,
}

/// Suffixes tried, in order, when detecting a `dots` layout.
const DOT_SUFFIXES: [&str; 5] = ["_dots", "-dots", "_dot", "dots", "_ann"];

pub(super) fn stem_of(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Sorted plain files of a folder whose names are UTF-8 (see `non_utf8_files`).
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot read folder: {e}")))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::file(dir, format!("cannot read folder: {e}")))?;
        let p = e.path();
        if p.is_file() && e.file_name().to_str().is_some() {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Image and CSV files of a folder whose names are not UTF-8: they are problems (errors, or
/// skipped with `skip_bad`), since sample names, outputs and CSV rows could not name them
/// losslessly (two such names could even collide).
fn non_utf8_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, String)> = rd
        .flatten()
        .filter(|e| e.file_name().to_str().is_none())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && (is_image_file(p)
                    || p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")))
        })
        .map(|p| {
            (
                p,
                "file name is not valid UTF-8; rename it (outputs and CSV rows could not name \
                 it exactly)"
                    .to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Images of a folder, keyed by stem (several extensions of one stem: the first, sorted).
fn images_by_stem(files: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    let mut m = BTreeMap::new();
    for f in files.iter().filter(|f| is_image_file(f)) {
        m.entry(stem_of(f)).or_insert_with(|| f.clone());
    }
    m
}

/// `_dots_NNN` in an MBM annotation stem: (prefix, k).
fn mbm_annotation_parts(stem: &str) -> Option<(&str, &str)> {
    let (pre, k) = stem.rsplit_once("_dots_")?;
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())).then_some((pre, k))
}

/// Detects the layout of `dir` from its file names.
pub fn detect(dir: &Path) -> Result<Format> {
    if dir.join("images").is_dir() && dir.join("annotations").is_dir() {
        return Ok(Format::Adi);
    }
    let files = list_files(dir)?;
    let imgs = images_by_stem(&files);
    if imgs.is_empty() {
        let parts: Vec<&str> = ["train", "val", "test"]
            .into_iter()
            .filter(|p| dir.join(p).is_dir())
            .collect();
        let hint = if parts.is_empty() {
            String::new()
        } else {
            format!(" (it holds {}/: give one of those)", parts.join("/, "))
        };
        return Err(Error::file(
            dir,
            format!(
                "empty folder: no PNG, JPEG or TIFF images (and no images/ + annotations/ folders){hint}"
            ),
        ));
    }
    let has = |s: &str| imgs.contains_key(s);
    if imgs.keys().any(|s| {
        s.strip_suffix("cell")
            .is_some_and(|p| has(&format!("{p}dots")))
    }) {
        return Ok(Format::Vgg);
    }
    if imgs
        .keys()
        .any(|s| mbm_annotation_parts(s).is_some_and(|(p, k)| has(&format!("{p}_{k}"))))
    {
        return Ok(Format::Mbm);
    }
    let csvs: BTreeSet<String> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")))
        .map(|f| stem_of(f))
        .collect();
    if imgs.keys().any(|s| csvs.contains(s)) {
        return Ok(Format::PointsCsv);
    }
    for suffix in DOT_SUFFIXES {
        if imgs.keys().any(|s| has(&format!("{s}{suffix}"))) {
            return Ok(Format::Dots {
                suffix: suffix.to_string(),
            });
        }
    }
    Err(Error::file(
        dir,
        format!(
            "unknown layout: {} images but none matches vgg (NNNcell + NNNdots), adi (images/ + \
             annotations/), mbm (*_NNN + *_dots_NNN), points-csv (STEM.csv beside each image) or \
             dots (STEM + STEM<suffix>, suffixes tried: {}); name the layout with --format",
            imgs.len(),
            DOT_SUFFIXES.join(", ")
        ),
    ))
}

/// Scans `dir` in `format` (detected when None), pairing images with annotations.
pub fn scan(dir: &Path, format: Option<&Format>, rule: Option<DotRule>) -> Result<Scan> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "not a folder"));
    }
    let format = match format {
        Some(f) => f.clone(),
        None => detect(dir)?,
    };
    let rule = rule.unwrap_or_else(|| format.default_dot_rule());
    let dots = |path: PathBuf| Annotation::Dots { path, rule };
    let mut items = Vec::new();
    let mut problems = Vec::new();
    let missing = |img: &Path, ann: &Path| {
        (
            img.to_path_buf(),
            format!("annotation missing: expected {}", ann.display()),
        )
    };
    match &format {
        Format::Adi => {
            let (idir, adir) = (dir.join("images"), dir.join("annotations"));
            let imgs: Vec<PathBuf> = list_files(&idir)?
                .into_iter()
                .filter(|f| is_image_file(f))
                .collect();
            let anns: Vec<PathBuf> = list_files(&adir)?
                .into_iter()
                .filter(|f| is_image_file(f))
                .collect();
            let ann_names: BTreeSet<_> = anns.iter().filter_map(|a| a.file_name()).collect();
            for img in &imgs {
                let ann = adir.join(img.file_name().unwrap_or_default());
                if ann_names.contains(ann.file_name().unwrap_or_default()) {
                    items.push(Item {
                        stem: stem_of(img),
                        image: img.clone(),
                        annotation: dots(ann),
                    });
                } else {
                    problems.push(missing(img, &ann));
                }
            }
            let img_names: BTreeSet<_> = imgs.iter().filter_map(|a| a.file_name()).collect();
            for a in &anns {
                if !img_names.contains(a.file_name().unwrap_or_default()) {
                    problems.push((
                        a.clone(),
                        format!("annotation without an image in {}", idir.display()),
                    ));
                }
            }
        }
        Format::Vgg | Format::Mbm | Format::Dots { .. } => {
            let imgs = images_by_stem(&list_files(dir)?);
            // Annotation stem -> image stem, by the layout's naming rule.
            let image_stem_of = |s: &str| -> Option<String> {
                match &format {
                    Format::Vgg => s.strip_suffix("dots").map(|p| format!("{p}cell")),
                    Format::Mbm => mbm_annotation_parts(s).map(|(p, k)| format!("{p}_{k}")),
                    Format::Dots { suffix } => s.strip_suffix(suffix.as_str()).map(str::to_string),
                    _ => None,
                }
            };
            let annotation_stem_of = |s: &str| -> Option<String> {
                match &format {
                    Format::Vgg => s.strip_suffix("cell").map(|p| format!("{p}dots")),
                    Format::Mbm => s.rsplit_once('_').and_then(|(p, k)| {
                        (!k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
                            .then(|| format!("{p}_dots_{k}"))
                    }),
                    Format::Dots { suffix } => Some(format!("{s}{suffix}")),
                    _ => None,
                }
            };
            let ann_stems: BTreeSet<&String> =
                imgs.keys().filter(|s| image_stem_of(s).is_some()).collect();
            for (stem, path) in &imgs {
                if ann_stems.contains(stem) {
                    let target = image_stem_of(stem).unwrap_or_default();
                    if !imgs.contains_key(&target) {
                        problems.push((
                            path.clone(),
                            format!("annotation without an image (expected {target}.*)"),
                        ));
                    }
                    continue;
                }
                match annotation_stem_of(stem) {
                    Some(a) => match imgs.get(&a) {
                        Some(ap) => items.push(Item {
                            stem: stem.clone(),
                            image: path.clone(),
                            annotation: dots(ap.clone()),
                        }),
                        None => problems.push(missing(path, &dir.join(format!("{a}.png")))),
                    },
                    // Images not named like this layout's images (e.g. an overview picture).
                    None => problems.push((
                        path.clone(),
                        format!("file name does not fit the {format} layout"),
                    )),
                }
            }
        }
        Format::PointsCsv => {
            let files = list_files(dir)?;
            let imgs = images_by_stem(&files);
            for (stem, path) in &imgs {
                let csv = files.iter().find(|f| {
                    stem_of(f) == *stem
                        && f.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                });
                match csv {
                    Some(c) => items.push(Item {
                        stem: stem.clone(),
                        image: path.clone(),
                        annotation: Annotation::Csv(c.clone()),
                    }),
                    None => problems.push(missing(path, &dir.join(format!("{stem}.csv")))),
                }
            }
            for f in &files {
                if f.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                    && !imgs.contains_key(&stem_of(f))
                {
                    problems.push((f.clone(), "annotation without an image".into()));
                }
            }
        }
    }
    problems.extend(non_utf8_files(dir));
    if format == Format::Adi {
        problems.extend(non_utf8_files(&dir.join("images")));
        problems.extend(non_utf8_files(&dir.join("annotations")));
    }
    if items.is_empty() && problems.is_empty() {
        return Err(Error::file(
            dir,
            format!("empty folder: no {format} images"),
        ));
    }
    items.sort_by(|a, b| a.image.cmp(&b.image));
    Ok(Scan {
        format,
        items,
        problems,
    })
}

/// The annotation files of a folder whose layout is a known annotated one (vgg, adi, mbm,
/// dots, points-csv), as the data readers pair them: each image's dots image or CSV (for adi,
/// the files of `annotations/`). None for a folder of plain images (no layout detected), so
/// `dcl count` can leave annotations out without changing what a plain folder counts.
pub fn annotation_files(dir: &Path) -> Option<(Format, Vec<PathBuf>)> {
    let format = detect(dir).ok()?;
    let scan = scan(dir, Some(&format), None).ok()?;
    let files: Vec<PathBuf> = scan
        .items
        .iter()
        .map(|i| i.annotation.path().to_path_buf())
        .collect();
    (!files.is_empty()).then_some((format, files))
}

/// A decoded image with its dots (pixel-square coordinates).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub image: RgbImage,
    pub points: Vec<(f32, f32)>,
}

/// Decodes an item, checking that the annotation fits the image.
pub fn load(item: &Item) -> Result<Loaded> {
    let image = read_image_rgb(&item.image)?;
    let points = match &item.annotation {
        Annotation::Dots { path, rule } => {
            let d = read_dots_image(path, *rule)?;
            let (w, h) = (d.width, d.height);
            if (w, h) != (image.width, image.height) {
                return Err(Error::file(
                    path,
                    format!(
                        "annotation is {w}x{h} but its image {} is {}x{}",
                        item.image.display(),
                        image.width,
                        image.height
                    ),
                ));
            }
            d.points
        }
        Annotation::Csv(path) => read_points_csv(path, image.width, image.height)?,
    };
    Ok(Loaded { image, points })
}

//! Finding the image files a user points at: files as given, folders searched recursively,
//! optionally filtered by a wildcard pattern on the file name.
use std::path::{Path, PathBuf};

use crate::data::image_io::is_image_file;
use crate::data::layout::{annotation_files, stem_of};
use crate::data::Format;
use crate::error::{Error, Result};
use crate::fsutil::is_output_dir;

/// `*` and `?` wildcard match on a file name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Image files under `paths` (files as given; folders recursively, sorted), each with the name
/// its outputs get: the path relative to the folder, separators replaced by "__". Not
/// searched: folders in `skip` (this run's own outputs), folders of earlier runs' outputs
/// (`fsutil::is_output_dir`: their `.dcl-output` marker) and symbolic links to folders. A
/// folder of outputs given as a path is refused, and so is an image whose path is not UTF-8
/// (its outputs and CSV row could not name it losslessly).
pub fn collect_images(
    paths: &[PathBuf],
    glob: Option<&str>,
    skip: &[PathBuf],
) -> Result<Vec<(PathBuf, String)>> {
    Ok(collect_inputs(paths, glob, skip, false)?.files)
}

/// A folder searched by `collect_inputs` whose layout is an annotated one.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnotatedFolder {
    pub dir: PathBuf,
    pub format: Format,
    /// Its annotation files left out (those the name pattern, if any, would have taken).
    pub skipped: usize,
}

/// What `dcl count` counts: the images, and the annotated folders whose annotations were
/// left out.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub files: Vec<(PathBuf, String)>,
    pub annotated: Vec<AnnotatedFolder>,
}

impl Inputs {
    /// Annotation files left out, over every folder.
    pub fn skipped(&self) -> usize {
        self.annotated.iter().map(|a| a.skipped).sum()
    }

    /// The one line that says what was left out (None when nothing was): how many
    /// annotation files, of which layouts and folders, and how to count them anyway.
    pub fn skipped_note(&self) -> Option<String> {
        let n = self.skipped();
        if n == 0 {
            return None;
        }
        let mut folders: Vec<String> = self
            .annotated
            .iter()
            .filter(|a| a.skipped > 0)
            .take(3)
            .map(|a| format!("{} ({})", a.dir.display(), a.format))
            .collect();
        let more = self.annotated.iter().filter(|a| a.skipped > 0).count();
        if more > 3 {
            folders.push(format!("and {} more folders", more - 3));
        }
        Some(format!(
            "note: skipped {n} annotation file{} of annotated folders: {}; counting {} \
             image{} (--all-images counts every image file)",
            if n == 1 { "" } else { "s" },
            folders.join(", "),
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" }
        ))
    }
}

/// `collect_images`, and with `leave_out_annotations` the annotation files of every searched
/// folder whose layout is a known annotated one (`layout::annotation_files`: a vgg folder's
/// `NNNdots.png`, an adi folder's `annotations/`, ...) are left out, so the images alone are
/// counted. Files given by name are always kept; a folder of plain images is searched as
/// before.
pub fn collect_inputs(
    paths: &[PathBuf],
    glob: Option<&str>,
    skip: &[PathBuf],
    leave_out_annotations: bool,
) -> Result<Inputs> {
    let mut annotated = Vec::new();
    let mut annotation_set = std::collections::HashSet::new();
    let skip: Vec<PathBuf> = skip.iter().filter_map(|d| d.canonicalize().ok()).collect();
    let not_utf8 = |p: &Path| {
        Error::file(
            p,
            "file name is not valid UTF-8; rename it (its outputs and counts.csv row could not \
             name it exactly)",
        )
    };
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            if is_output_dir(p) {
                return Err(Error::file(
                    p,
                    "holds the outputs of an earlier dcl run (it has a .dcl-output marker): not \
                     counted as input",
                ));
            }
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(d) = stack.pop() {
                if leave_out_annotations {
                    if let Some((format, anns)) = annotation_files(&d) {
                        let skipped = anns
                            .iter()
                            .filter(|a| {
                                glob.is_none_or(|g| {
                                    a.file_name()
                                        .is_some_and(|n| glob_match(g, &n.to_string_lossy()))
                                })
                            })
                            .count();
                        annotation_set.extend(anns);
                        annotated.push(AnnotatedFolder {
                            dir: d.clone(),
                            format,
                            skipped,
                        });
                    }
                }
                let cannot_list = |e| Error::file(&d, format!("cannot list folder: {e}"));
                for e in std::fs::read_dir(&d).map_err(cannot_list)? {
                    let e = e.map_err(cannot_list)?;
                    let path = e.path();
                    let kind = e
                        .file_type()
                        .map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
                    if kind.is_dir() {
                        let skipped = path.canonicalize().is_ok_and(|c| skip.contains(&c))
                            || is_output_dir(&path);
                        if !skipped {
                            stack.push(path);
                        }
                    } else if kind.is_symlink() && path.is_dir() {
                        // not followed: a link back up the tree would never end
                    } else if is_image_file(&path)
                        && glob.is_none_or(|g| glob_match(g, &e.file_name().to_string_lossy()))
                    {
                        if annotation_set.contains(&path) {
                            continue;
                        }
                        if path.to_str().is_none() {
                            return Err(not_utf8(&path));
                        }
                        found.push(path);
                    }
                }
            }
            found.sort();
            for f in found {
                let rel = f.strip_prefix(p).unwrap_or(&f).with_extension("");
                let name = rel.to_string_lossy().replace(['/', '\\'], "__");
                out.push((f, name));
            }
        } else if p.exists() {
            if p.to_str().is_none() {
                return Err(not_utf8(p));
            }
            out.push((p.clone(), stem_of(p)));
        } else {
            return Err(Error::file(p, "no such file or folder"));
        }
    }
    annotated.sort_by(|a: &AnnotatedFolder, b| a.dir.cmp(&b.dir));
    Ok(Inputs {
        files: out,
        annotated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn glob_matches_wildcards() {
        assert!(glob_match("*cell.png", "001cell.png"));
        assert!(!glob_match("*cell.png", "001dots.png"));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("a?c", "abcd"));
        assert!(glob_match("*", ""));
    }
}

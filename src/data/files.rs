//! Finding the image files a user points at: files as given, folders searched recursively,
//! optionally filtered by a wildcard pattern on the file name.
use std::path::{Path, PathBuf};

use crate::data::image_io::is_image_file;
use crate::data::layout::stem_of;
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
    Ok(out)
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

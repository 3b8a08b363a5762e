//! `dcl count --shard K/N`: one of N machines counts a deterministic share of a collection.
//!
//! The listing is what `dcl count` collects from its paths (files as given, folders searched
//! recursively and sorted, `--glob` applied), the same on every machine given the same
//! arguments. Image `i` of the listing belongs to shard `i mod N`, so every image is in
//! exactly one shard and the shards are balanced even when sizes follow names. Each shard's
//! `--out` folder records which shard it is, a hash of the whole listing, the settings that
//! change a count, and its own images with their places in the listing (`shard.json`), so
//! `dcl merge` can check that the shards it joins are complete, do not overlap and were counted
//! alike, and can put the rows back in listing order.
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::fsutil::{atomic_write, read_own_file};

/// The file in a shard's output folder that says which shard it holds.
pub const SHARD_FILE: &str = "shard.json";

/// `K/N`: shard K (0-based, as SLURM's array task ids) of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    pub k: usize,
    pub n: usize,
}

impl FromStr for ShardSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<ShardSpec, String> {
        let bad = |why: &str| {
            format!(
                "{why}: expected K/N with N >= 1 and 0 <= K < N (shards are numbered from 0, as \
                 SLURM array task ids: 0/4, 1/4, 2/4, 3/4), got '{s}'"
            )
        };
        let (k, n) = s.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let num = |v: &str| v.trim().parse::<usize>().map_err(|_| bad("not a number"));
        let (k, n) = (num(k)?, num(n)?);
        if n == 0 {
            return Err(bad("N must be at least 1"));
        }
        if k >= n {
            return Err(bad(&format!("K must be smaller than N ({k} >= {n})")));
        }
        Ok(ShardSpec { k, n })
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// A hash of the listing (FNV-1a 64 over every path and output name, in order): equal on two
/// machines exactly when they collected the same images in the same order.
pub fn listing_hash(files: &[(PathBuf, String)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&(files.len() as u64).to_le_bytes());
    for (path, name) in files {
        let p = path.display().to_string();
        eat(&(p.len() as u64).to_le_bytes());
        eat(p.as_bytes());
        eat(&(name.len() as u64).to_le_bytes());
        eat(name.as_bytes());
    }
    format!("{h:016x}")
}

/// The indices in the listing of shard `spec`'s images: `i mod N == K`.
pub fn shard_indices(len: usize, spec: ShardSpec) -> Vec<usize> {
    (spec.k..len).step_by(spec.n).collect()
}

/// One image of a shard: its place in the listing and its `image` field in counts.csv.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardImage {
    pub index: usize,
    pub image: String,
}

/// `shard.json`: which shard a folder holds, of which listing, counted how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub shard: usize,
    pub shards: usize,
    pub listing_hash: String,
    pub listing_images: usize,
    /// What changes a count or a point: checkpoints (content hashes), tiling, read-out.
    pub settings: serde_json::Value,
    pub images: Vec<ShardImage>,
}

impl ShardRecord {
    pub fn spec(&self) -> ShardSpec {
        ShardSpec {
            k: self.shard,
            n: self.shards,
        }
    }
}

/// Reads `DIR/shard.json`; None when there is none.
pub fn read_record(dir: &Path) -> anyhow::Result<Option<ShardRecord>> {
    let path = dir.join(SHARD_FILE);
    let Some(bytes) = read_own_file(&path)? else {
        return Ok(None);
    };
    let rec: ShardRecord = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a dcl shard record ({e}); move it away",
            path.display()
        )
    })?;
    if rec.shards == 0 || rec.shard >= rec.shards {
        anyhow::bail!(
            "{}: not a dcl shard record (shard {}/{}); move it away",
            path.display(),
            rec.shard,
            rec.shards
        );
    }
    Ok(Some(rec))
}

/// A sharded (or plain) run's plan, made before any work: which images of the listing this
/// run counts, and the record its `--out` folder gets.
pub struct ShardPlan {
    pub files: Vec<(PathBuf, String)>,
    pub record: Option<ShardRecord>,
}

/// Selects this run's share of `files` and checks `out` against it, before any work: a shard's
/// folder takes only that shard of that listing counted with those settings (a rerun of the
/// same shard is fine: its rows are replaced), and a plain run never writes into a shard's
/// folder, so `dcl merge` never meets rows of another run.
pub fn plan(
    files: Vec<(PathBuf, String)>,
    spec: Option<ShardSpec>,
    out: Option<&Path>,
    settings: serde_json::Value,
) -> anyhow::Result<ShardPlan> {
    let existing = match out {
        Some(o) => read_record(o)?,
        None => None,
    };
    let Some(spec) = spec else {
        if let (Some(rec), Some(o)) = (&existing, out) {
            anyhow::bail!(
                "{} holds shard {} of a sharded run (its {SHARD_FILE}); count into another \
                 --out, or give --shard {}",
                o.display(),
                rec.spec(),
                rec.spec()
            );
        }
        return Ok(ShardPlan {
            files,
            record: None,
        });
    };
    if out.is_none() {
        eprintln!(
            "note: --shard {spec} without --out: this shard's counts go to stdout only, and \
             `dcl merge` needs the shards' --out folders"
        );
    }
    let hash = listing_hash(&files);
    let total = files.len();
    let indices = shard_indices(total, spec);
    if let Some(o) = out {
        match &existing {
            Some(rec) if rec.spec() != spec || rec.listing_hash != hash => anyhow::bail!(
                "{} holds shard {} of a listing of {} images (hash {}); this run is shard {spec} \
                 of a listing of {total} images (hash {hash}); count into another --out",
                o.display(),
                rec.spec(),
                rec.listing_images,
                rec.listing_hash
            ),
            Some(rec) if rec.settings != settings => anyhow::bail!(
                "{} holds shard {spec} counted with other settings ({}; now {}); count into \
                 another --out",
                o.display(),
                rec.settings,
                settings
            ),
            Some(_) => {}
            None => {
                if o.join("counts.csv").exists() {
                    anyhow::bail!(
                        "{} holds the counts of an unsharded run; count shard {spec} into \
                         another --out",
                        o.display()
                    );
                }
            }
        }
    }
    let images = indices
        .iter()
        .map(|&i| ShardImage {
            index: i,
            image: files[i].0.display().to_string(),
        })
        .collect();
    let mut files = files;
    let mut keep = indices.into_iter().peekable();
    let mut i = 0;
    files.retain(|_| {
        let kept = keep.peek() == Some(&i);
        if kept {
            keep.next();
        }
        i += 1;
        kept
    });
    Ok(ShardPlan {
        files,
        record: Some(ShardRecord {
            shard: spec.k,
            shards: spec.n,
            listing_hash: hash,
            listing_images: total,
            settings,
            images,
        }),
    })
}

/// Writes the shard record into `out` (after its lock is held, before any work).
pub fn write_record(out: &Path, rec: &ShardRecord) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(rec)?;
    Ok(atomic_write(&out.join(SHARD_FILE), text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs_parse_and_are_checked() {
        assert_eq!("2/5".parse::<ShardSpec>(), Ok(ShardSpec { k: 2, n: 5 }));
        assert_eq!("0/1".parse::<ShardSpec>(), Ok(ShardSpec { k: 0, n: 1 }));
        for bad in ["5/5", "6/5", "0/0", "1", "a/3", "-1/3", "1/3/4", ""] {
            let e = bad.parse::<ShardSpec>().unwrap_err();
            assert!(e.contains("K/N") && e.contains(bad), "{bad}: {e}");
        }
        assert!("4/4".parse::<ShardSpec>().unwrap_err().contains("4 >= 4"));
    }

    #[test]
    fn every_image_is_in_exactly_one_shard() {
        for len in [0, 1, 2, 7, 100] {
            for n in 1..=9 {
                let mut seen = vec![0; len];
                for k in 0..n {
                    let idx = shard_indices(len, ShardSpec { k, n });
                    assert!(idx.windows(2).all(|w| w[0] < w[1]));
                    // balanced: sizes differ by at most one
                    assert!(idx.len() == len / n || idx.len() == len / n + 1);
                    idx.iter().for_each(|&i| seen[i] += 1);
                }
                assert!(seen.iter().all(|&c| c == 1), "{len} {n}");
            }
        }
    }

    #[test]
    fn the_listing_hash_sees_order_names_and_paths() {
        let f = |v: &[(&str, &str)]| -> Vec<(PathBuf, String)> {
            v.iter()
                .map(|(p, n)| (PathBuf::from(p), n.to_string()))
                .collect()
        };
        let a = listing_hash(&f(&[("x/a.png", "a"), ("x/b.png", "b")]));
        assert_eq!(a, listing_hash(&f(&[("x/a.png", "a"), ("x/b.png", "b")])));
        assert_ne!(a, listing_hash(&f(&[("x/b.png", "b"), ("x/a.png", "a")])));
        assert_ne!(a, listing_hash(&f(&[("x/a.png", "a")])));
        assert_ne!(a, listing_hash(&f(&[("x/a.pn", "ga"), ("x/b.png", "b")])));
        assert_ne!(a, listing_hash(&f(&[("y/a.png", "a"), ("x/b.png", "b")])));
    }
}

//! `dcl merge SHARD_DIR... --out DIR`: joins the output folders of `dcl count --shard K/N`
//! into one `counts.csv`, in the order of the listing, as one unsharded run writes it.
//!
//! Refused, naming what is wrong: folders that are not shards, shards of another listing or
//! another number of shards, shards counted with other settings (checkpoints, tiling,
//! read-out), a shard given twice or an image in two shards (an overlap), missing shards, and
//! images of a shard without a count (failed or not yet counted; `--partial` merges what there
//! is and lists them). The per-image outputs (points, overlays, density maps) stay in the shard
//! folders; `merge.json` in `--out` lists them, and `report.html` in `--out` shows every merged
//! row with its overlay linked from the shard folder that counted it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::cli::outputs::{CountsRecord, COUNTS_HEADER};
use crate::cli::shard::{read_record, ShardRecord, SHARD_FILE};
use crate::cli::{csv_field, parse_csv};
use crate::fsutil::{atomic_write, prepare_output_dir, read_own_file, DirLock};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The shards' output folders (`dcl count --shard K/N --out DIR`).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Folder for the merged counts.csv (and merge.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Merge even when shards are missing or images have no count, listing them (as warnings).
    #[arg(long)]
    pub partial: bool,
}

/// The file in a merged folder that names its listing and its shards.
pub const MERGE_FILE: &str = "merge.json";

#[derive(Serialize, Deserialize)]
struct MergeRecord {
    listing_hash: String,
    listing_images: usize,
    shards: usize,
    settings: serde_json::Value,
    /// Each shard's folder (absolute), by shard number; missing shards are null.
    shard_dirs: Vec<Option<PathBuf>>,
    /// Listing indices of the images without a count (with --partial).
    uncounted: Vec<usize>,
}

/// The rows of a shard folder's counts.csv (none when it has no counts.csv: every image
/// failed, or the shard was empty).
fn read_rows(dir: &Path) -> anyhow::Result<Vec<CountsRecord>> {
    let path = dir.join("counts.csv");
    let Some(bytes) = read_own_file(&path)? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not a dcl counts file: not UTF-8", path.display()))?;
    let (mut recs, _) = parse_csv(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a dcl counts file: {e}", path.display()))?;
    let cols = COUNTS_HEADER.split(',').count();
    if recs.first().map(|r| r.join(",")).as_deref() != Some(COUNTS_HEADER)
        || recs.iter().any(|r| r.len() != cols)
    {
        anyhow::bail!(
            "{}: not a dcl counts file (expected the columns {COUNTS_HEADER})",
            path.display()
        );
    }
    recs.remove(0);
    Ok(recs)
}

/// Up to three items and how many more.
fn some_of(items: &[String]) -> String {
    let mut v: Vec<String> = items.iter().take(3).cloned().collect();
    if items.len() > 3 {
        v.push(format!("and {} more", items.len() - 3));
    }
    v.join(", ")
}

fn absolute(p: &Path) -> PathBuf {
    p.canonicalize()
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

pub fn run(a: MergeArgs) -> anyhow::Result<()> {
    let out_abs = absolute(&a.out);
    let mut shards: Vec<(PathBuf, ShardRecord)> = Vec::new();
    for d in &a.dirs {
        if absolute(d) == out_abs {
            anyhow::bail!(
                "{}: --out is one of the shard folders; merge into another folder",
                d.display()
            );
        }
        let rec = read_record(d)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: not the output folder of a sharded run (no {SHARD_FILE}; made by `dcl \
                 count --shard K/N --out DIR`)",
                d.display()
            )
        })?;
        shards.push((d.clone(), rec));
    }
    // One listing, one number of shards, one way of counting.
    let (first_dir, first) = &shards[0];
    for (d, r) in &shards[1..] {
        if r.listing_hash != first.listing_hash || r.shards != first.shards {
            anyhow::bail!(
                "{} is shard {} of a listing of {} images (hash {}), {} is shard {} of a listing \
                 of {} images (hash {}): shards of different runs (other paths, --glob or \
                 files) cannot be merged",
                d.display(),
                r.spec(),
                r.listing_images,
                r.listing_hash,
                first_dir.display(),
                first.spec(),
                first.listing_images,
                first.listing_hash
            );
        }
        if r.settings != first.settings {
            anyhow::bail!(
                "{} ({}) and {} ({}) were counted with different settings: {} vs {}",
                first_dir.display(),
                first.spec(),
                d.display(),
                r.spec(),
                first.settings,
                r.settings
            );
        }
    }
    let n = first.shards;
    let mut by_shard: Vec<Option<usize>> = vec![None; n];
    for (i, (d, r)) in shards.iter().enumerate() {
        if let Some(j) = by_shard[r.shard] {
            anyhow::bail!(
                "shard {} is given twice: {} and {} (their images overlap); merge one of them",
                r.spec(),
                shards[j].0.display(),
                d.display()
            );
        }
        by_shard[r.shard] = Some(i);
    }
    let missing: Vec<String> = (0..n)
        .filter(|&k| by_shard[k].is_none())
        .map(|k| format!("{k}/{n}"))
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {n} shards missing: {} (count them with `dcl count --shard K/{n}` and the \
             same paths, then merge all {n} folders)",
            missing.len(),
            some_of(&missing)
        ));
    }
    // Each listing index, and each image, in exactly one shard.
    let mut owner: BTreeMap<usize, usize> = BTreeMap::new();
    let mut image_owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (d, r)) in shards.iter().enumerate() {
        for im in &r.images {
            let clash = owner
                .insert(im.index, i)
                .or(image_owner.insert(&im.image, i));
            if let Some(j) = clash {
                anyhow::bail!(
                    "{} is in two shards: {} ({}) and {} ({}); shards must not overlap",
                    im.image,
                    shards[j].0.display(),
                    shards[j].1.spec(),
                    d.display(),
                    r.spec()
                );
            }
            if im.index >= r.listing_images || im.index % n != r.shard {
                anyhow::bail!(
                    "{}: {} says image {} ({}) is in shard {}, which it is not: not a dcl shard \
                     record; count the shard again",
                    d.join(SHARD_FILE).display(),
                    r.spec(),
                    im.index,
                    im.image,
                    r.spec()
                );
            }
        }
    }
    // The rows, by listing index.
    let mut rows: BTreeMap<usize, CountsRecord> = BTreeMap::new();
    let mut uncounted = Vec::new();
    for (d, r) in &shards {
        let mut have: BTreeMap<String, CountsRecord> = read_rows(d)?
            .into_iter()
            .map(|row| (row[0].clone(), row))
            .collect();
        let mut lacking = Vec::new();
        for im in &r.images {
            match have.remove(&im.image) {
                Some(row) => {
                    rows.insert(im.index, row);
                }
                None => {
                    lacking.push(im.image.clone());
                    uncounted.push(im.index);
                }
            }
        }
        if !have.is_empty() {
            let extra: Vec<String> = have.into_keys().collect();
            anyhow::bail!(
                "{}: counts.csv holds {} rows of images that are not in shard {} ({}): not \
                 written by this shard; count it into a new folder",
                d.display(),
                extra.len(),
                r.spec(),
                some_of(&extra)
            );
        }
        if !lacking.is_empty() {
            problems.push(format!(
                "shard {} ({}) has no count for {} of its {} images: {} (they failed or were \
                 not counted yet; count the shard again)",
                r.spec(),
                d.display(),
                lacking.len(),
                r.images.len(),
                some_of(&lacking)
            ));
        }
    }
    if !problems.is_empty() {
        if !a.partial {
            anyhow::bail!(
                "cannot merge: {}; or merge what there is with --partial",
                problems.join("; ")
            );
        }
        for p in &problems {
            eprintln!("warning: {p}");
        }
    }
    // The merged folder: marked as counts, locked, and never another listing's counts.
    prepare_output_dir(&a.out, "count")?;
    let _lock = DirLock::acquire(&a.out)?;
    let csv = a.out.join("counts.csv");
    let earlier: Option<MergeRecord> =
        read_own_file(&a.out.join(MERGE_FILE))?.and_then(|b| serde_json::from_slice(&b).ok());
    match &earlier {
        Some(m) if m.listing_hash != first.listing_hash => anyhow::bail!(
            "{} holds the merged counts of another listing (hash {}); merge into another --out",
            a.out.display(),
            m.listing_hash
        ),
        Some(_) => {}
        None if csv.exists() => anyhow::bail!(
            "{} holds counts of another run; merge into another --out",
            a.out.display()
        ),
        None => {}
    }
    let record = MergeRecord {
        listing_hash: first.listing_hash.clone(),
        listing_images: first.listing_images,
        shards: n,
        settings: first.settings.clone(),
        shard_dirs: by_shard
            .iter()
            .map(|s| s.map(|i| absolute(&shards[i].0)))
            .collect(),
        uncounted: {
            uncounted.sort_unstable();
            uncounted
        },
    };
    let mut text = format!("{COUNTS_HEADER}\n");
    for r in rows.values() {
        text += &r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",");
        text.push('\n');
    }
    atomic_write(
        &a.out.join(MERGE_FILE),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    atomic_write(&csv, text.as_bytes())?;
    let merged: Vec<Vec<String>> = rows.values().cloned().collect();
    let dirs: Vec<PathBuf> = record.shard_dirs.iter().flatten().cloned().collect();
    if let Err(e) = crate::cli::report::merge_report(&a.out, &merged, &dirs, n, &first.settings) {
        eprintln!(
            "warning: {}: cannot write the report: {e:#}",
            a.out.display()
        );
    }
    eprintln!(
        "merged {} of {n} shards: {} of {} images counted, into {}",
        shards.len(),
        rows.len(),
        first.listing_images,
        csv.display()
    );
    Ok(())
}

//! Fuzz targets on stable Rust: a seeded mutation loop over the seed corpus in
//! `tests/fuzz_corpus/`, one target per parser, each bounded in time.
//!
//! | target | parser | corpus |
//! |---|---|---|
//! | `image` | `image_io::decode_bytes` within `DecodeLimits` (PNG, JPEG, TIFF) | `image/` |
//! | `dots` | `decode_bytes` + `image_io::dots_of` (dot-annotation images) | `dots/` |
//! | `points_csv` | `image_io::parse_points_csv` | `csv/` |
//! | `checkpoint` | `checkpoint::load_model_bytes` (safetensors + `dcl.config`) | `checkpoint/` |
//! | `snapshot` | `train::load_snapshot_bytes` + `Progress::check` | `snapshot/` |
//!
//! Invariants, for every mutant: no panic (caught and reported with the mutant saved under
//! `target/fuzz-findings/`), no abort, no allocation beyond the target's stated bound (every
//! allocation of the parsing thread is counted), and an error for every mutant that is not a
//! valid file. Which mutants are invalid is known by construction: truncations; any change to
//! a PNG before its end (CRC-checked chunks); structured mutations that put a configuration
//! field, a counter, a tensor value or a shape out of bounds. For CSV every mutant is decided
//! by a reference grammar written independently (`reference_csv`). A mutant accepted must
//! satisfy the parser's guarantees (sizes within limits, points inside the image, finite
//! tensors, a run's own snapshot with counters in bounds).
//!
//! Time: `DCL_FUZZ_SECS` seconds per target (default 2, for CI); `DCL_FUZZ_SEED` changes the
//! mutation stream. A longer campaign:
//! `DCL_FUZZ_SECS=300 cargo test --release --test fuzz -- --nocapture --test-threads 1`.
//! Each target prints one line: executions, seconds, findings, peak bytes allocated.
//! `cargo test --test fuzz -- --ignored write_seed_corpus` rewrites the generated seeds.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dcl::checkpoint::load_model_bytes;
use dcl::data::image_io::{decode_bytes, dots_of, parse_points_csv, DecodeLimits};
use dcl::data::DotRule;
use dcl::nn::{Counter, Localizer, ModelConfig, Network};
use dcl::optim::{Adam, AdamConfig};
use dcl::rng::Rng;
use dcl::train::load_snapshot_bytes;

// ---------------------------------------------------------------------------------------
// Allocation accounting: bytes live on the calling thread, and their peak.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// Safety: every call is forwarded to the system allocator; the accounting only touches
// const-initialised thread-locals (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            account(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            account(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        account(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            account(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`, returning its result and the most bytes it had allocated at once (on this thread,
/// above what was live when it started).
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get) - start;
    (out, peak.max(0) as usize)
}

// ---------------------------------------------------------------------------------------
// Mutations.

/// How a mutant was made: what its validity can be told from.
#[derive(Clone, Debug, PartialEq)]
enum Made {
    /// A strict prefix of the seed: never a valid file (for the binary formats).
    Truncated,
    /// Bytes changed in place (the length kept) somewhere before the seed's end: for a PNG,
    /// whose chunks are CRC-checked, never a valid file.
    Changed,
    /// Bytes inserted, removed or moved (a whole chunk may have gone: possibly still valid).
    Reshaped,
    /// Bytes appended after the seed's end only.
    Appended,
    /// Spliced with another seed (may well be that other, valid, file).
    Spliced,
    /// A structured change that makes the file invalid (the reason).
    Invalid(String),
    /// A structured change that keeps the file valid.
    Valid,
}

const INTERESTING_U8: [u8; 8] = [0, 1, 0x7F, 0x80, 0xFE, 0xFF, b'0', b','];
const INTERESTING_U32: [u32; 8] = [
    0,
    1,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 16,
    1 << 24,
    100_000,
];

/// One to four random byte-level mutations of `seed` (`other` for splices).
fn mutate_bytes(rng: &mut Rng, seed: &[u8], other: &[u8]) -> (Vec<u8>, Made) {
    let mut v = seed.to_vec();
    if rng.below(8) == 0 && !seed.is_empty() {
        let cut = rng.below(seed.len());
        v.truncate(cut);
        return (v, Made::Truncated);
    }
    let (mut spliced, mut reshaped) = (false, false);
    for _ in 0..1 + rng.below(4) {
        let n = v.len();
        match rng.below(8) {
            0 if n > 0 => {
                let i = rng.below(n);
                v[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                v[i] = if rng.below(2) == 0 {
                    INTERESTING_U8[rng.below(INTERESTING_U8.len())]
                } else {
                    rng.next_u64() as u8
                };
            }
            2 if n >= 4 => {
                let i = rng.below(n - 3);
                let w = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
                let b = if rng.below(2) == 0 {
                    w.to_be_bytes()
                } else {
                    w.to_le_bytes()
                };
                v[i..i + 4].copy_from_slice(&b);
            }
            3 => {
                let i = rng.below(n + 1);
                let k = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..k).map(|_| rng.next_u64() as u8).collect();
                v.splice(i..i, bytes);
                reshaped = true;
            }
            4 if n > 1 => {
                let i = rng.below(n);
                let k = 1 + rng.below((n - i).min(64));
                v.drain(i..i + k);
                reshaped = true;
            }
            5 if n > 1 => {
                let i = rng.below(n);
                let k = 1 + rng.below((n - i).min(256));
                let chunk = v[i..i + k].to_vec();
                let at = rng.below(n + 1);
                v.splice(at..at, chunk);
                reshaped = true;
            }
            6 if !other.is_empty() && n > 0 => {
                let i = rng.below(n);
                let j = rng.below(other.len());
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
                spliced = true;
            }
            _ if n > 0 => {
                let i = rng.below(n);
                v[i] = v[i].wrapping_add(1 + rng.below(3) as u8);
            }
            _ => {
                v.push(rng.next_u64() as u8);
                reshaped = true;
            }
        }
    }
    let made = if spliced {
        Made::Spliced
    } else if v.len() > seed.len() && v[..seed.len()] == *seed {
        Made::Appended
    } else if v.len() < seed.len() && seed[..v.len()] == *v {
        Made::Truncated
    } else if v.len() == seed.len() && !reshaped {
        Made::Changed
    } else {
        Made::Reshaped
    };
    (v, made)
}

// ---------------------------------------------------------------------------------------
// The loop.

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target)
}

/// The seed files of a target (sorted), with their names.
fn seeds(target: &str, ext: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ext.contains(&e))
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no seeds for {target}");
    v
}

fn budget() -> Duration {
    let secs: f64 = std::env::var("DCL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn stream_seed(target: &str) -> u64 {
    let base: u64 = std::env::var("DCL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    target
        .bytes()
        .fold(base ^ 0x5EED, |h, b| h.wrapping_mul(31) ^ b as u64)
}

/// What one execution found wrong, if anything.
type Check = Result<(), String>;

/// Runs `exec` on every seed (which must pass), then on mutants from `mutate` until the time
/// budget is spent; a panic or a failed check is a finding. Prints the figures; fails if
/// anything was found.
fn campaign(
    target: &str,
    seeds: &[(String, Vec<u8>)],
    mut mutate: impl FnMut(&mut Rng, &[u8], &[u8]) -> (Vec<u8>, Made),
    mut exec: impl FnMut(&str, &[u8], &Made) -> Check,
) {
    let mut rng = Rng::new(stream_seed(target));
    let t0 = Instant::now();
    let mut findings: Vec<String> = Vec::new();
    let mut execs = 0u64;
    let mut errors = 0u64;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-findings");
    let record = |findings: &mut Vec<String>, what: String, bytes: &[u8]| {
        if findings.len() < 20 {
            let _ = std::fs::create_dir_all(&out);
            let p = out.join(format!("{target}-{}.bin", findings.len()));
            let _ = std::fs::write(&p, bytes);
            findings.push(format!("{what} (mutant saved to {})", p.display()));
        }
    };
    // seeds are valid files
    for (name, s) in seeds {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exec(name, s, &Made::Valid)))
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => record(&mut findings, format!("seed {name}: {e}"), s),
            Err(_) => record(&mut findings, format!("seed {name}: panic"), s),
        }
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // panics are findings, reported below
    while t0.elapsed() < budget() {
        let (name, seed) = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())].1;
        let (m, made) = mutate(&mut rng, seed, other);
        if m == *seed {
            continue;
        }
        execs += 1;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exec(name, &m, &made))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => record(&mut findings, format!("{name} {made:?}: {e}"), &m),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                record(&mut findings, format!("{name} {made:?}: panic: {msg}"), &m)
            }
        }
        if ERRORED.with(Cell::get) {
            errors += 1;
        }
    }
    std::panic::set_hook(hook);
    eprintln!(
        "fuzz {target}: {execs} executions in {:.1} s ({} refused as invalid), {} findings, \
         peak {} KiB allocated at once",
        t0.elapsed().as_secs_f64(),
        errors,
        findings.len(),
        PEAK_SEEN.with(Cell::get) >> 10
    );
    assert!(findings.is_empty(), "{target}:\n{}", findings.join("\n"));
}

thread_local! {
    /// Whether the last execution's parser returned an error (for the figures).
    static ERRORED: Cell<bool> = const { Cell::new(false) };
    /// The largest peak allocation of any execution.
    static PEAK_SEEN: Cell<usize> = const { Cell::new(0) };
}

/// Runs a parser, measures its allocations against `bound`, and records whether it failed.
fn measured<T, E>(bound: usize, f: impl FnOnce() -> Result<T, E>) -> Result<Result<T, E>, String> {
    let (r, peak) = peak_of(f);
    ERRORED.with(|e| e.set(r.is_err()));
    PEAK_SEEN.with(|p| p.set(p.get().max(peak)));
    if peak > bound {
        return Err(format!(
            "allocated {peak} bytes at once, more than the bound {bound}"
        ));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// image

/// The limits the image targets decode within (small, so that a header declaring too much is
/// hit often), and the stated allocation bound: the limit's decoded bytes, plus what the
/// decoders keep beside them (JPEG component planes, PNG rows) and the input's size.
const LIMITS: DecodeLimits = DecodeLimits {
    max_side: 2048,
    max_bytes: 8 << 20,
};

fn image_bound(input: usize) -> usize {
    3 * LIMITS.max_bytes as usize + 4 * input + (2 << 20)
}

fn is_png(b: &[u8]) -> bool {
    b.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// The invariants of a decode: within the limits if accepted; refused if invalid.
fn check_image(seed: &[u8], m: &[u8], made: &Made) -> Result<Option<image::DynamicImage>, String> {
    let r = measured(image_bound(m.len()), || decode_bytes(m, &LIMITS))?;
    match r {
        Ok(img) => {
            let (w, h) = (img.width(), img.height());
            let bytes = w as u64 * h as u64 * img.color().bytes_per_pixel() as u64;
            if w == 0 || h == 0 || w > LIMITS.max_side || h > LIMITS.max_side {
                return Err(format!("accepted a {w}x{h} image outside the limits"));
            }
            if bytes > LIMITS.max_bytes {
                return Err(format!("accepted {bytes} decoded bytes, over the limit"));
            }
            if *made == Made::Truncated {
                return Err(format!(
                    "accepted a file truncated to {} of {} bytes",
                    m.len(),
                    seed.len()
                ));
            }
            if is_png(seed) && *made == Made::Changed {
                return Err("accepted a PNG changed before its end (its CRCs do not match)".into());
            }
            Ok(Some(img))
        }
        Err(e) if e.is_empty() => Err("an empty error message".into()),
        Err(_) => Ok(None),
    }
}

#[test]
fn fuzz_image() {
    let seeds = seeds("image", &["png", "jpg", "jpeg", "tif"]);
    let by_name: HashMap<String, Vec<u8>> = seeds.iter().cloned().collect();
    campaign("image", &seeds, mutate_bytes, |name, m, made| {
        let seed = &by_name[name];
        let got = check_image(seed, m, made)?;
        if *made == Made::Valid && got.is_none() {
            return Err("refused a seed".into());
        }
        Ok(())
    });
}

#[test]
fn fuzz_dots() {
    let seeds = seeds("dots", &["png", "jpg", "jpeg"]);
    let by_name: HashMap<String, Vec<u8>> = seeds.iter().cloned().collect();
    campaign("dots", &seeds, mutate_bytes, |name, m, made| {
        let seed = &by_name[name];
        let Some(img) = check_image(seed, m, made)? else {
            return if *made == Made::Valid {
                Err("refused a seed".into())
            } else {
                Ok(())
            };
        };
        for rule in [
            DotRule::PureRed,
            DotRule::Red,
            DotRule::NonZero,
            DotRule::Auto,
        ] {
            let r = measured(image_bound(m.len()), || dots_of(&img, rule))?;
            if let Ok(d) = r {
                let (w, h) = (d.width as f32, d.height as f32);
                if d.points.is_empty() || d.points.len() > (d.width * d.height / 4).max(64) {
                    return Err(format!("{} dots in a {w}x{h} image", d.points.len()));
                }
                if let Some(p) = d
                    .points
                    .iter()
                    .find(|(x, y)| !(*x > 0.0 && *y > 0.0 && *x < w && *y < h))
                {
                    return Err(format!("dot {p:?} outside the {w}x{h} image"));
                }
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// points CSV

/// The points CSV grammar of `parse_points_csv`'s documentation, written independently with
/// regular expressions: Some(points) for a valid file, None otherwise.
fn reference_csv(text: &str, w: usize, h: usize) -> Option<Vec<(f32, f32)>> {
    static RE: std::sync::OnceLock<(regex::Regex, regex::Regex)> = std::sync::OnceLock::new();
    let (row, one) = RE.get_or_init(|| {
        let num = r#"\s*"?\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*"?\s*"#;
        (
            regex::Regex::new(&format!("^{num},{num}$")).unwrap(),
            regex::Regex::new(&format!("^{num}$")).unwrap(),
        )
    });
    let quoted_or_not = |f: &str| {
        let f = f.trim();
        f.strip_prefix('"')
            .and_then(|g| g.strip_suffix('"'))
            .unwrap_or(f)
            .trim()
            .to_string()
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let first = lines.first()?;
    let (header, xi, yi, n) = if row.is_match(first) {
        (false, 0, 1, 2)
    } else {
        let f: Vec<String> = first.split(',').map(quoted_or_not).collect();
        let xi = f.iter().position(|c| c.eq_ignore_ascii_case("x"))?;
        let yi = f.iter().position(|c| c.eq_ignore_ascii_case("y"))?;
        (true, xi, yi, f.len())
    };
    let inside = |v: f64, n: usize| v.is_finite() && v >= -0.5 && v < n as f64 - 0.5;
    let value = |f: &str| -> Option<f64> {
        let f = quoted_or_not(f);
        one.is_match(&f).then_some(())?;
        f.parse().ok()
    };
    let mut pts = Vec::new();
    for l in &lines[header as usize..] {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() != n || (!header && !row.is_match(l)) {
            return None;
        }
        let (x, y) = (value(f[xi])?, value(f[yi])?);
        if !inside(x, w) || !inside(y, h) {
            return None;
        }
        pts.push(((x + 0.5) as f32, (y + 0.5) as f32));
    }
    // at most one cell per 4 pixels (at least 64)
    (pts.len() <= (w * h / 4).max(64)).then_some(pts)
}

/// CSV mutations: the byte mutations, plus line-level ones (a row replaced by an interesting
/// one, a line duplicated or removed).
fn mutate_csv(rng: &mut Rng, seed: &[u8], other: &[u8]) -> (Vec<u8>, Made) {
    if rng.below(2) == 0 {
        return mutate_bytes(rng, seed, other);
    }
    let text = String::from_utf8_lossy(seed);
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    const ROWS: [&str; 16] = [
        "1O,20",
        "x,y",
        "X,Y,id",
        "nan,1",
        "inf,2",
        "1e999,3",
        "-0.5,0",
        "-0.6,0",
        "39.4,29.4",
        "39.5,1",
        "\"3\",\"4\"",
        "1,,2",
        "",
        "# note",
        "{\"x\": 1}",
        "1;2",
    ];
    let i = rng.below(lines.len() + 1);
    match rng.below(3) {
        0 => lines.insert(i, ROWS[rng.below(ROWS.len())].to_string()),
        1 if i < lines.len() => lines[i] = ROWS[rng.below(ROWS.len())].to_string(),
        _ if !lines.is_empty() => {
            lines.remove(i.min(lines.len() - 1));
        }
        _ => {}
    }
    (lines.join("\n").into_bytes(), Made::Changed)
}

#[test]
fn fuzz_points_csv() {
    let seeds = seeds("csv", &["csv"]);
    let (w, h) = (40, 30);
    campaign("points_csv", &seeds, mutate_csv, |_, m, made| {
        // the reader refuses text that is not UTF-8 before parsing
        let Ok(text) = std::str::from_utf8(m) else {
            return Ok(());
        };
        let got = measured(64 * m.len() + (64 << 10), || parse_points_csv(text, w, h))?;
        let want = reference_csv(text, w, h);
        match (&got, &want) {
            (Ok(a), Some(b)) if a == b => Ok(()),
            (Err(e), None) if e.contains("line ") || e.contains("empty annotation") => Ok(()),
            (Err(e), None) => Err(format!("an error that names no line: {e}")),
            _ if *made == Made::Valid && got.is_ok() => Ok(()),
            _ => Err(format!(
                "parser {:?} but the reference grammar says {:?} for {text:?}",
                got.as_ref().map(Vec::len),
                want.as_ref().map(Vec::len)
            )),
        }
    });
}

// ---------------------------------------------------------------------------------------
// checkpoints and snapshots (safetensors)

/// A safetensors file's header (JSON) and the data after it.
fn split_safetensors(b: &[u8]) -> Option<(serde_json::Value, &[u8])> {
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(b.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((header, &b[8 + n..]))
}

fn join_safetensors(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

/// Structured safetensors mutations that are invalid (or valid) by construction: `meta` edits
/// the metadata (as JSON values of the metadata's JSON strings), and tensors get non-finite
/// values or other shapes. Falls back to byte mutations.
fn mutate_safetensors(
    rng: &mut Rng,
    seed: &[u8],
    other: &[u8],
    meta: &dyn Fn(&mut Rng, &mut serde_json::Map<String, serde_json::Value>) -> Made,
) -> (Vec<u8>, Made) {
    let Some((mut header, data)) = split_safetensors(seed) else {
        return mutate_bytes(rng, seed, other);
    };
    match rng.below(4) {
        0 => {
            let Some(md) = header["__metadata__"].as_object_mut() else {
                return mutate_bytes(rng, seed, other);
            };
            let made = meta(rng, md);
            (join_safetensors(&header, data), made)
        }
        1 => {
            // a NaN or an infinity at a random f32 of a random F32 tensor
            let names: Vec<String> = header
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32")
                .map(|(k, _)| k.clone())
                .collect();
            let t = &header[&names[rng.below(names.len())]];
            let (a, b) = (
                t["data_offsets"][0].as_u64().unwrap() as usize,
                t["data_offsets"][1].as_u64().unwrap() as usize,
            );
            if b <= a {
                return mutate_bytes(rng, seed, other);
            }
            let i = a + 4 * rng.below((b - a) / 4);
            let mut d = data.to_vec();
            let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.below(3)];
            d[i..i + 4].copy_from_slice(&bad.to_le_bytes());
            (
                join_safetensors(&header, &d),
                Made::Invalid("a non-finite value".into()),
            )
        }
        2 => {
            // a shape changed (its data no longer fits, or the network expects another)
            let names: Vec<String> = header
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect();
            let name = names[rng.below(names.len())].clone();
            let shape = header[&name]["shape"].as_array_mut().unwrap();
            if shape.is_empty() || rng.below(4) == 0 {
                shape.push(1.into());
                shape.push(2.into());
            } else {
                let k = rng.below(shape.len());
                let v = shape[k].as_u64().unwrap();
                shape[k] = [v + 1, v * 2 + 1, 0, 1 << 40][rng.below(4)].into();
            }
            (
                join_safetensors(&header, data),
                Made::Invalid(format!("shape of {name} changed")),
            )
        }
        _ => mutate_bytes(rng, seed, other),
    }
}

/// Sets a field of the JSON held in metadata entry `key` (a string of JSON).
fn edit_json_entry(
    md: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> bool {
    let Some(s) = md.get(key).and_then(|v| v.as_str()) else {
        return false;
    };
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(s) else {
        return false;
    };
    edit(&mut v);
    md.insert(key.into(), v.to_string().into());
    true
}

/// `dcl.config` edits: out of bounds (invalid) or in bounds (valid).
fn mutate_config(rng: &mut Rng, md: &mut serde_json::Map<String, serde_json::Value>) -> Made {
    use serde_json::json;
    let bad: [(&str, serde_json::Value); 22] = [
        ("input_scale", json!(1e9)),
        ("input_scale", json!(1e-9)),
        ("input_scale", json!(-1.0)),
        ("input_scale", json!(1e39)),
        ("unet_width", json!(10_000_000)),
        ("unet_width", json!(1e7)),
        ("unet_width", json!(0)),
        ("width_mult", json!(0.0)),
        ("width_mult", json!(5.0)),
        ("width_mult", json!(1e30)),
        ("gmp_points", json!(65)),
        ("gmp_points", json!(-1)),
        ("density_scale", json!(0.0)),
        ("density_scale", json!(1e30)),
        ("sigma", json!(-3.0)),
        ("sigma", json!(1e9)),
        ("point_threshold", json!(-1.0)),
        ("min_distance", json!(-5.0)),
        ("model", json!("nonsense")),
        ("backbone", json!(7)),
        ("counter_hash", json!("../../etc")),
        ("min_distance", json!("2")),
    ];
    let good: [(&str, serde_json::Value); 4] = [
        ("sigma", json!(2.5)),
        ("point_threshold", json!(0.02)),
        ("min_distance", json!(4.0)),
        ("density_scale", json!(50.0)),
    ];
    if rng.below(6) == 0 {
        let (k, v) = good[rng.below(good.len())].clone();
        if edit_json_entry(md, "dcl.config", |c| c[k] = v) {
            return Made::Valid;
        }
    }
    match rng.below(5) {
        0 => {
            md.remove("dcl.config");
            Made::Invalid("no dcl.config".into())
        }
        1 => {
            md.insert("dcl.config".into(), "{not json".into());
            Made::Invalid("dcl.config is not JSON".into())
        }
        _ => {
            let (k, v) = bad[rng.below(bad.len())].clone();
            if edit_json_entry(md, "dcl.config", |c| c[k] = v.clone()) {
                Made::Invalid(format!("dcl.config {k} = {v}"))
            } else {
                Made::Changed
            }
        }
    }
}

/// The stated allocation bound of loading a checkpoint: a few times its size (its tensors
/// decoded, the network built from them) plus a small constant.
fn checkpoint_bound(input: usize) -> usize {
    8 * input + (4 << 20)
}

fn check_loaded<N: Network>(net: &N) -> Check {
    net.config().validate().map_err(|e| e.to_string())?;
    for (_, p) in net.store().iter() {
        if p.value.to_vec().iter().any(|v| !v.is_finite()) {
            return Err(format!("accepted non-finite values in {}", p.name));
        }
    }
    Ok(())
}

fn exec_checkpoint(name: &str, m: &[u8], made: &Made) -> Check {
    let path = Path::new(name);
    let bound = checkpoint_bound(m.len());
    let ok = if name.starts_with("localizer") {
        match measured(bound, || load_model_bytes::<Localizer>(m, path))? {
            Ok((net, _)) => check_loaded(&net).map(|_| true)?,
            Err(_) => false,
        }
    } else {
        match measured(bound, || load_model_bytes::<Counter>(m, path))? {
            Ok((net, _)) => check_loaded(&net).map(|_| true)?,
            Err(_) => false,
        }
    };
    match made {
        Made::Truncated | Made::Invalid(_) if ok => Err("accepted an invalid checkpoint".into()),
        Made::Valid if !ok => Err("refused a valid checkpoint".into()),
        _ => Ok(()),
    }
}

#[test]
fn fuzz_checkpoint() {
    let seeds = seeds("checkpoint", &["safetensors"]);
    campaign(
        "checkpoint",
        &seeds,
        |rng, s, o| mutate_safetensors(rng, s, o, &mutate_config),
        exec_checkpoint,
    );
}

/// The run the snapshot seeds belong to (written with them by `write_seed_corpus`).
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotRun {
    run_id: String,
    config: ModelConfig,
    per_epoch: usize,
    epochs: usize,
}

/// `dcl.progress`, `dcl.adam_step` and `dcl.run_id` edits that a resume must refuse.
fn mutate_progress(rng: &mut Rng, md: &mut serde_json::Map<String, serde_json::Value>) -> Made {
    use serde_json::json;
    let bad: [(&str, serde_json::Value); 12] = [
        ("batches_done", json!(1_000_000)),
        ("batches_done", json!(2)),
        ("epochs_done", json!(30)),
        ("epochs_done", json!(-1)),
        ("steps", json!(1e6)),
        ("steps", json!(99)),
        ("epoch_loss_sum", json!(-1.0)),
        ("epoch_loss_sum", json!(f64::MAX)),
        ("best", json!([-2.0, 1])),
        ("best", json!([1.0, 0])),
        ("best", json!([1.0, 99])),
        ("best", json!("x")),
    ];
    match rng.below(4) {
        0 => {
            md.insert(
                "dcl.run_id".into(),
                format!("{:016x}", rng.next_u64()).into(),
            );
            Made::Invalid("another run's id".into())
        }
        1 => {
            let s = md["dcl.adam_step"].as_str().unwrap_or("0").to_string();
            let n: u64 = s.parse().unwrap_or(0);
            md.insert(
                "dcl.adam_step".into(),
                (n + 1 + rng.below(5) as u64).to_string().into(),
            );
            Made::Invalid("the optimiser's step count changed".into())
        }
        _ => {
            let (k, v) = bad[rng.below(bad.len())].clone();
            if edit_json_entry(md, "dcl.progress", |p| p[k] = v.clone()) {
                Made::Invalid(format!("progress {k} = {v}"))
            } else {
                Made::Changed
            }
        }
    }
}

#[test]
fn fuzz_snapshot() {
    let seeds = seeds("snapshot", &["safetensors"]);
    let run: SnapshotRun =
        serde_json::from_slice(&std::fs::read(corpus_dir("snapshot").join("run.json")).unwrap())
            .unwrap();
    campaign(
        "snapshot",
        &seeds,
        |rng, s, o| mutate_safetensors(rng, s, o, &mutate_progress),
        |name, m, made| {
            let mut net = Counter::new(&run.config, 0).map_err(|e| e.to_string())?;
            let mut adam =
                Adam::new(AdamConfig::default(), &net.store).map_err(|e| e.to_string())?;
            let r = measured(checkpoint_bound(m.len()), || {
                load_snapshot_bytes(
                    m,
                    Path::new(name),
                    &mut net.store,
                    &mut adam,
                    Some(&run.run_id),
                )
                .and_then(|p| p.check(run.per_epoch, run.epochs, adam.step).map(|_| p))
            })?;
            let ok = r.is_ok();
            if ok {
                check_loaded(&net)?;
                for (m, v) in adam.moments.iter().flatten() {
                    if m.to_vec().iter().chain(&v.to_vec()).any(|x| !x.is_finite()) {
                        return Err("accepted non-finite optimiser moments".into());
                    }
                }
            }
            match made {
                Made::Truncated | Made::Invalid(_) if ok => {
                    Err("accepted an invalid snapshot".into())
                }
                Made::Valid if !ok => Err(format!("refused a valid snapshot: {:?}", r.err())),
                _ => Ok(()),
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// The generated seeds (the others are copies of small real files; see README.md there).

fn tiny_counter_config() -> ModelConfig {
    ModelConfig {
        width_mult: 1.0 / 64.0,
        gmp_points: 2,
        ..ModelConfig::default()
    }
}

#[test]
#[ignore = "rewrites tests/fuzz_corpus (run by hand when a format changes)"]
fn write_seed_corpus() {
    use dcl::checkpoint::save_network;
    use dcl::nn::ModelKind;
    let dir = |t: &str| {
        let d = corpus_dir(t);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // images: small PNG / JPEG / TIFF of several colour types (8 and 16 bits)
    let img = dir("image");
    let rgb = image::RgbImage::from_fn(19, 11, |x, y| image::Rgb([x as u8 * 13, y as u8 * 23, 99]));
    rgb.save(img.join("rgb8.png")).unwrap();
    rgb.save(img.join("rgb8.jpg")).unwrap();
    rgb.save(img.join("rgb8.tif")).unwrap();
    let grey16 =
        image::ImageBuffer::from_fn(9, 7, |x, y| image::Luma([(x * 7000 + y * 300) as u16]));
    grey16.save(img.join("grey16.png")).unwrap();
    grey16.save(img.join("grey16.tif")).unwrap();
    let grey = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 16 + y) as u8]));
    grey.save(img.join("grey8.jpg")).unwrap();
    let rgba = image::RgbaImage::from_fn(5, 6, |x, y| {
        image::Rgba([x as u8 * 40, 0, y as u8 * 40, 128])
    });
    rgba.save(img.join("rgba8.png")).unwrap();
    let rgb16 = image::ImageBuffer::from_fn(6, 5, |x, y| {
        image::Rgb([(x * 9000) as u16, (y * 11000) as u16, 40000u16])
    });
    rgb16.save(img.join("rgb16.tif")).unwrap();
    // dots: a red-dot JPEG like ADI's (the real ones are copied from tests/fixtures)
    let dots = dir("dots");
    let red = image::RgbImage::from_fn(24, 16, |x, y| {
        if (x + 2 * y) % 11 == 0 {
            image::Rgb([250, 10, 10])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    red.save(dots.join("red-dots.jpg")).unwrap();
    // checkpoints: a tiny counter and a tiny localizer
    let ck = dir("checkpoint");
    let c = tiny_counter_config();
    save_network(
        &ck.join("counter.safetensors"),
        &Counter::new(&c, 1).unwrap(),
        3,
    )
    .unwrap();
    let l = ModelConfig {
        model: ModelKind::Localizer,
        unet_width: 8,
        width_mult: 1.0 / 8.0,
        counter_hash: Some("00112233aabbccdd".into()),
        ..c.clone()
    };
    save_network(
        &ck.join("localizer.safetensors"),
        &Localizer::new(&l, 2).unwrap(),
        3,
    )
    .unwrap();
    // a snapshot after 2 epochs of a 3-epoch run (2 batches an epoch), and its run
    let snap = dir("snapshot");
    let tmp = tempfile::tempdir().unwrap();
    let opts = dcl::train::TrainOptions {
        synthetic_n: 4,
        synthetic_size: 32,
        out: tmp.path().to_path_buf(),
        epochs: 2,
        batch_size: 2,
        width_mult: c.width_mult,
        gmp_points: c.gmp_points,
        quiet: true,
        run_id: Some("5eed5eed5eed5eed".into()),
        ..dcl::train::TrainOptions::default()
    };
    let data = dcl::train::open_data(&opts).unwrap();
    let per_epoch = data.train.1.len().div_ceil(2);
    dcl::train::train_counter(&opts, &data, false).unwrap();
    std::fs::copy(
        tmp.path().join("counter.snapshot.safetensors"),
        snap.join("counter.snapshot.safetensors"),
    )
    .unwrap();
    let mut config = opts.model_config(ModelKind::Counter);
    config.input_scale = 1.0;
    let run = SnapshotRun {
        run_id: opts.run_id.clone().unwrap(),
        config,
        per_epoch,
        epochs: 3,
    };
    std::fs::write(
        snap.join("run.json"),
        serde_json::to_string_pretty(&run).unwrap(),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// The command line on mutated files (the wiring of the parsers above into `dcl`).

/// Runs `dcl` with a time limit: (exit code, stderr); a signal or a hang is a finding.
fn run_dcl(args: &[&std::ffi::OsStr]) -> Result<(i32, String), String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // read on a thread, so a chatty child never blocks on a full pipe
    let mut pipe = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
        err
    });
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let err = reader.join().unwrap_or_default();
            return match status.code() {
                Some(c) => Ok((c, err)),
                None => Err(format!("ended by a signal ({status}): {err}")),
            };
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            return Err("still running after 120 s (a hang)".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a run's stderr must look like: no panic, and on failure a last line `error: ...`.
fn check_cli(code: i32, err: &str, expect_error: bool, names: &str) -> Check {
    if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
        return Err(format!("a panic: {err}"));
    }
    match code {
        0 if expect_error => Err(format!("exit 0 on an invalid {names}: {err}")),
        0 => Ok(()),
        1 => {
            let last = err.trim_end().lines().last().unwrap_or_default();
            if !last.starts_with("error: ") {
                return Err(format!("exit 1 without an error line: {err}"));
            }
            if expect_error && !last.contains(names) {
                return Err(format!("the error does not name {names}: {last}"));
            }
            Ok(())
        }
        c => Err(format!("exit code {c}: {err}")),
    }
}

/// `dcl count`, `dcl data stats`, `dcl eval` and `dcl train --resume` on mutants of real and
/// generated files, for `DCL_FUZZ_SECS` (each run is a process: a few dozen in the default
/// 2 s). Invalid-by-construction mutants (truncated images and annotations, structured
/// checkpoint, CSV and snapshot damage) must exit 1 with an error naming the file; other
/// mutants may be accepted, but never with a panic, a signal (an abort) or a hang.
#[test]
fn fuzz_cli() {
    use std::ffi::OsStr;
    let d = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    // a VGG folder, an ADI folder and a points-csv folder; a counter and a run to resume
    let vgg = d.path().join("vgg");
    std::fs::create_dir_all(&vgg).unwrap();
    for f in ["001cell.png", "001dots.png", "005cell.png", "005dots.png"] {
        std::fs::copy(fixtures.join("vgg").join(f), vgg.join(f)).unwrap();
    }
    let adi = d.path().join("adi");
    for sub in ["images", "annotations"] {
        std::fs::create_dir_all(adi.join(sub)).unwrap();
        for e in std::fs::read_dir(fixtures.join("adi").join(sub)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, adi.join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    let csvdir = d.path().join("csv");
    std::fs::create_dir_all(&csvdir).unwrap();
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8, y as u8, 9]))
        .save(csvdir.join("a.png"))
        .unwrap();
    let csv_seed = std::fs::read(corpus_dir("csv").join("header.csv")).unwrap();
    let ck_seed = std::fs::read(corpus_dir("checkpoint").join("counter.safetensors")).unwrap();
    let counter = d.path().join("counter.safetensors");
    std::fs::write(&counter, &ck_seed).unwrap();
    let run = d.path().join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args([
            "train",
            "--model",
            "counter",
            "--synthetic-n",
            "4",
            "--synthetic-size",
            "32",
        ])
        .args([
            "--width-mult",
            "0.015625",
            "--gmp-points",
            "2",
            "--batch-size",
            "2",
        ])
        .args(["--epochs", "1", "--quiet", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    std::fs::write(
        run.join("config.json"),
        cfg.replace("\"epochs\": 1", "\"epochs\": 2"),
    )
    .unwrap();
    let snap = run.join("counter.snapshot.safetensors");
    let snap_seed = std::fs::read(&snap).unwrap();

    let vgg_files: Vec<PathBuf> = ["001cell.png", "001dots.png"]
        .iter()
        .map(|f| vgg.join(f))
        .collect();
    let adi_img = std::fs::read_dir(adi.join("annotations"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let targets: Vec<(PathBuf, &str)> = vec![
        (vgg_files[0].clone(), "count"),
        (vgg_files[1].clone(), "stats"),
        (adi_img, "stats"),
        (csvdir.join("a.csv"), "csv"),
        (counter.clone(), "checkpoint"),
        (snap.clone(), "snapshot"),
    ];
    let originals: Vec<Vec<u8>> = targets
        .iter()
        .map(|(p, kind)| match *kind {
            "csv" => csv_seed.clone(),
            "snapshot" => snap_seed.clone(),
            _ => std::fs::read(p).unwrap(),
        })
        .collect();
    for ((p, _), o) in targets.iter().zip(&originals) {
        std::fs::write(p, o).unwrap();
    }
    let mut rng = Rng::new(stream_seed("cli"));
    let secs = budget();
    let t0 = Instant::now();
    let (mut runs, mut findings) = (0u64, Vec::<String>::new());
    while t0.elapsed() < secs || runs < 6 {
        let k = (runs as usize) % targets.len();
        let (path, kind) = &targets[k];
        let seed = &originals[k];
        let (m, made) = match *kind {
            "checkpoint" => mutate_safetensors(&mut rng, seed, seed, &mutate_config),
            "snapshot" => mutate_safetensors(&mut rng, seed, seed, &mutate_progress),
            "csv" => mutate_csv(&mut rng, seed, seed),
            _ => mutate_bytes(&mut rng, seed, seed),
        };
        if m == *seed {
            continue;
        }
        std::fs::write(path, &m).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let invalid = match *kind {
            "csv" => std::str::from_utf8(&m).map_or(true, |t| reference_csv(t, 40, 30).is_none()),
            "checkpoint" | "snapshot" => matches!(made, Made::Truncated | Made::Invalid(_)),
            _ => made == Made::Truncated || (is_png(seed) && made == Made::Changed),
        };
        let p = path.as_os_str();
        let c = counter.as_os_str();
        let results: Vec<Result<(i32, String), String>> = match *kind {
            "count" => vec![run_dcl(&[
                OsStr::new("count"),
                OsStr::new("--quiet"),
                OsStr::new("--counter"),
                c,
                p,
            ])],
            "stats" | "csv" => {
                let dir = path.parent().unwrap();
                let dir = if *kind == "stats" && dir.ends_with("annotations") {
                    dir.parent().unwrap()
                } else {
                    dir
                };
                vec![
                    run_dcl(&[OsStr::new("data"), OsStr::new("stats"), dir.as_os_str()]),
                    run_dcl(&[
                        OsStr::new("eval"),
                        OsStr::new("--counter"),
                        c,
                        OsStr::new("--data"),
                        dir.as_os_str(),
                    ]),
                ]
            }
            "checkpoint" => vec![
                run_dcl(&[
                    OsStr::new("count"),
                    OsStr::new("--quiet"),
                    OsStr::new("--counter"),
                    p,
                    vgg_files[0].as_os_str(),
                ]),
                run_dcl(&[
                    OsStr::new("eval"),
                    OsStr::new("--counter"),
                    p,
                    OsStr::new("--data"),
                    vgg.as_os_str(),
                ]),
            ],
            _ => vec![run_dcl(&[
                OsStr::new("train"),
                OsStr::new("--quiet"),
                OsStr::new("--resume"),
                run.as_os_str(),
            ])],
        };
        for r in results {
            runs += 1;
            let verdict = r.and_then(|(code, err)| check_cli(code, &err, invalid, &name));
            if let Err(e) = verdict {
                if findings.len() < 20 {
                    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-findings");
                    let _ = std::fs::create_dir_all(&out);
                    let saved = out.join(format!("cli-{}-{name}", findings.len()));
                    let _ = std::fs::write(&saved, &m);
                    findings.push(format!(
                        "{kind} {made:?}: {e} (mutant saved to {})",
                        saved.display()
                    ));
                }
            }
        }
        std::fs::write(path, seed).unwrap();
        // a resumed run moves on: start each snapshot mutant from the same run state
        if *kind == "snapshot" {
            std::fs::write(
                run.join("config.json"),
                cfg.replace("\"epochs\": 1", "\"epochs\": 2"),
            )
            .unwrap();
        }
    }
    eprintln!(
        "fuzz cli: {runs} runs of dcl in {:.1} s, {} findings",
        t0.elapsed().as_secs_f64(),
        findings.len()
    );
    assert!(findings.is_empty(), "cli:\n{}", findings.join("\n"));
}

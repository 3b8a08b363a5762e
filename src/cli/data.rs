//! `dcl data ...`: inspect annotated folders, write density maps, generate the synthetic set.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::cli::csv_field;
use crate::data::image_io::{to_rgb8_interleaved, write_png_rgb8, write_tiff_f32, RgbImage};
use crate::data::{synthetic, DataOptions, Dataset, DotRule, Format, Preprocess};
use crate::fsutil::atomic_write;

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Per-image cell counts (image,count,width,height) and a summary. A folder holding
    /// train/, val/ and test/ sub-folders is summarised per part and in all.
    Stats {
        /// Folder of annotated images.
        path: PathBuf,
        #[command(flatten)]
        read: ReadArgs,
        /// CSV rows on stdout (with a header); the summary goes to stderr.
        #[arg(long)]
        csv: bool,
    },
    /// Writes each preprocessed patch as PNG and its density map as 32-bit float TIFF (cells
    /// per pixel), named `<image stem>[_r<row>c<col>]`, with an index.csv tracing patches.
    Density {
        path: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Gaussian σ in network-resolution pixels.
        #[arg(long, default_value_t = DataOptions::default().sigma)]
        sigma: f32,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Writes the synthetic fluorescence set in the VGG layout (NNNcell.png + NNNdots.png);
    /// sizes above 4096 (up to 200000, whole-slide benchmarks) as tiled TIFF mosaics of
    /// 2048x2048 fields with a points CSV (NNNcell.tif + NNNcell.csv).
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = synthetic::DEFAULT_N)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 256)]
        size: usize,
    },
}

/// How a folder is read (shared by the data commands).
#[derive(clap::Args, Debug, Clone)]
pub struct ReadArgs {
    /// Layout: vgg, adi, mbm, dots, dots:SUFFIX or points-csv (default: detected).
    #[arg(long)]
    pub format: Option<String>,
    /// Preprocessing: as-is, resize[:N], quad[:N] or grid[:N] (default: the data set's rule).
    #[arg(long)]
    pub preprocess: Option<String>,
    /// Dot pixels: pure-red, red, nonzero or auto (default: the layout's rule).
    #[arg(long)]
    pub dot_rule: Option<String>,
    /// Continue past bad files, listing them as warnings.
    #[arg(long)]
    pub skip_bad: bool,
}

impl ReadArgs {
    pub fn options(&self) -> anyhow::Result<DataOptions> {
        Ok(DataOptions {
            format: self
                .format
                .as_deref()
                .map(str::parse::<Format>)
                .transpose()?,
            preprocess: self
                .preprocess
                .as_deref()
                .map(str::parse::<Preprocess>)
                .transpose()?,
            dot_rule: self
                .dot_rule
                .as_deref()
                .map(str::parse::<DotRule>)
                .transpose()?,
            skip_bad: self.skip_bad,
            ..DataOptions::default()
        })
    }
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Stats { path, read, csv } => stats(&path, &read.options()?, csv),
        DataCommand::Density {
            path,
            out,
            sigma,
            read,
        } => density(
            &path,
            &out,
            &DataOptions {
                sigma,
                ..read.options()?
            },
        ),
        DataCommand::Synth { out, n, seed, size } => {
            let t = std::time::Instant::now();
            synthetic::generate(&out, n, seed, size)?;
            eprintln!(
                "wrote {n} synthetic {size}x{size} images (seed {seed}) to {} in {:.2} s",
                out.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn warn_skipped(ds: &Dataset) {
    if !ds.skipped().is_empty() {
        eprintln!("warning: skipped {} bad file(s):", ds.skipped().len());
        for (p, msg) in ds.skipped() {
            eprintln!("  {}: {msg}", p.display());
        }
    }
}

/// Summary of per-image counts: n, mean, sample standard deviation (n - 1), min, max, sum.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub min: usize,
    pub max: usize,
    pub total: usize,
}

impl Summary {
    pub fn of(counts: &[usize]) -> Summary {
        let n = counts.len();
        let total: usize = counts.iter().sum();
        let mean = total as f64 / n.max(1) as f64;
        let ss: f64 = counts.iter().map(|&c| (c as f64 - mean).powi(2)).sum();
        Summary {
            n,
            mean,
            std: if n > 1 {
                (ss / (n - 1) as f64).sqrt()
            } else {
                0.0
            },
            min: counts.iter().copied().min().unwrap_or(0),
            max: counts.iter().copied().max().unwrap_or(0),
            total,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n {}  count {:.1} ± {:.1} (sample std)  min {}  max {}  total {}",
            self.n, self.mean, self.std, self.min, self.max, self.total
        )
    }
}

/// Sub-folders that hold the parts of a split data set.
const PARTS: [&str; 3] = ["train", "val", "test"];

fn stats(path: &Path, opts: &DataOptions, csv: bool) -> anyhow::Result<()> {
    let parts: Vec<PathBuf> = PARTS
        .iter()
        .map(|p| path.join(p))
        .filter(|p| p.is_dir())
        .collect();
    let direct = crate::data::layout::detect(path).is_ok();
    let folders = if direct || parts.is_empty() {
        vec![path.to_path_buf()]
    } else {
        parts
    };
    let mut out = std::io::stdout().lock();
    if csv {
        writeln!(out, "image,count,width,height")?;
    }
    let mut all = Vec::new();
    for folder in &folders {
        let ds = Dataset::open(
            folder,
            &DataOptions {
                cache_bytes: 0,
                ..opts.clone()
            },
        )
        .with_context(|| format!("reading {}", folder.display()))?;
        warn_skipped(&ds);
        let counts: Vec<usize> = ds.images().iter().map(|i| i.count).collect();
        if !csv {
            writeln!(
                out,
                "# {} ({}, {})",
                folder.display(),
                ds.format().map(|f| f.to_string()).unwrap_or_default(),
                ds.preprocess()
            )?;
            writeln!(
                out,
                "{:<60} {:>6} {:>6} {:>6}",
                "image", "count", "width", "height"
            )?;
        }
        for im in ds.images() {
            let name = im.path.display().to_string();
            if csv {
                writeln!(
                    out,
                    "{},{},{},{}",
                    csv_field(&name),
                    im.count,
                    im.width,
                    im.height
                )?;
            } else {
                writeln!(
                    out,
                    "{name:<60} {:>6} {:>6} {:>6}",
                    im.count, im.width, im.height
                )?;
            }
        }
        let s = Summary::of(&counts);
        let line = format!("{}: {s}", folder.display());
        if csv {
            eprintln!("{line}");
        } else {
            writeln!(out, "{line}\n")?;
        }
        all.extend(counts);
    }
    if folders.len() > 1 {
        let line = format!("all: {}", Summary::of(&all));
        if csv {
            eprintln!("{line}");
        } else {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// A file-name-safe patch name: `<stem>#r0c1` -> `<stem>_r0c1`.
pub fn patch_file_stem(name: &str) -> String {
    name.replace('#', "_")
}

fn density(path: &Path, out: &Path, opts: &DataOptions) -> anyhow::Result<()> {
    // Patches are not kept: each image is decoded again when written, so memory stays at one
    // image's patches however large the folder.
    let ds = Dataset::open(
        path,
        &DataOptions {
            cache_bytes: 0,
            ..opts.clone()
        },
    )?;
    warn_skipped(&ds);
    crate::fsutil::prepare_output_dir(out, "density")?;
    let pb = crate::progress::progress_bar(ds.images().len() as u64, "writing", false);
    let mut index = String::from("patch,image,row,col,count,density_sum\n");
    let mut written = 0;
    for (i, im) in ds.images().iter().enumerate() {
        let samples = ds.image_samples(i)?;
        let mut sum = 0;
        for s in &samples {
            let stem = patch_file_stem(&s.name);
            let rgb = to_rgb8_interleaved(&RgbImage {
                width: s.width,
                height: s.height,
                data: s.image.clone(),
            });
            write_png_rgb8(&out.join(format!("{stem}.png")), s.width, s.height, &rgb)?;
            write_tiff_f32(
                &out.join(format!("{stem}_density.tif")),
                s.width,
                s.height,
                &s.density,
            )?;
            let (row, col) = parse_patch_pos(&s.name);
            let dsum: f64 = s.density.iter().map(|&v| v as f64).sum();
            index.push_str(&format!(
                "{stem},{},{row},{col},{},{dsum:.4}\n",
                csv_field(&im.path.display().to_string()),
                s.points.len()
            ));
            sum += s.points.len();
            written += 1;
        }
        if sum != im.count {
            bail!(
                "{}: patch counts sum to {sum}, image count is {}",
                im.path.display(),
                im.count
            );
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    atomic_write(&out.join("index.csv"), index.as_bytes())?;
    eprintln!(
        "wrote {written} patches of {} images ({}, sigma {}) to {}",
        ds.images().len(),
        ds.preprocess(),
        opts.sigma,
        out.display()
    );
    Ok(())
}

/// (row, col) of a patch name `<stem>#r<row>c<col>`; (0, 0) for a whole image.
fn parse_patch_pos(name: &str) -> (usize, usize) {
    name.rsplit_once("#r")
        .and_then(|(_, rc)| rc.split_once('c'))
        .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn summary_and_patch_names() {
        let s = Summary::of(&[1, 2, 3, 6]);
        assert_eq!((s.n, s.min, s.max, s.total), (4, 1, 6, 12));
        assert!((s.mean - 3.0).abs() < 1e-12);
        assert!((s.std - (14.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(parse_patch_pos("a#b#r2c10"), (2, 10));
        assert_eq!(parse_patch_pos("001cell"), (0, 0));
        assert_eq!(patch_file_stem("x#r0c1"), "x_r0c1");
    }
}

//! `dcl count` at scale: the options for collections split across machines (`--shard`), honest
//! limits on image size (`--max-pixels`, checked on the header before any pixel is decoded),
//! and whole-slide images counted region by region (`infer::stream`) with their outputs
//! written as tiled float TIFFs a row of tiles at a time (`--out`'s map at the image's size and
//! scaled to the count, as for images held whole, in a second pass over a scratch file), points
//! written row by row to CSV and GeoJSON, an overlay preview at most 4096 pixels a side.
use std::path::Path;
use std::str::FromStr;

use clap::Args;

use crate::data::image_io::{write_tiff_f32, DecodeLimits};
use crate::data::stream::tiff_writer::TiledF32Writer;
use crate::data::stream::{self, Band, Probe};
use crate::error::Error;
use crate::infer::image_density::{scale_row, Resize, Spread, ToCount};
use crate::infer::points::Point;
use crate::infer::stream::{network_size, predict_stream, Readout, Sinks, Streamed};
use crate::infer::tiling::tile_starts;
use crate::infer::InferOptions;
use crate::nn::{Counter, Localizer};

/// A number of pixels: digits with an optional K, M, G or T (10^3 ... 10^12), e.g. 256M,
/// 2.5G, 400000000.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelCount {
    pub n: u64,
    text: String,
}

impl FromStr for PixelCount {
    type Err = String;
    fn from_str(s: &str) -> Result<PixelCount, String> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let m = match c.to_ascii_uppercase() {
                    'K' => 1e3,
                    'M' => 1e6,
                    'G' => 1e9,
                    'T' => 1e12,
                    _ => {
                        return Err(format!(
                            "'{s}': expected a number of pixels such as 256M, 2.5G or 400000000"
                        ))
                    }
                };
                (&t[..i], m)
            }
            _ => (t, 1.0),
        };
        let v: f64 = num
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 1.0 / mult)
            .ok_or_else(|| {
                format!("'{s}': expected a number of pixels such as 256M, 2.5G or 400000000")
            })?;
        Ok(PixelCount {
            n: (v * mult).round().min(u64::MAX as f64) as u64,
            text: t.to_string(),
        })
    }
}

impl std::fmt::Display for PixelCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Count only shard K of N of the listing (0 <= K < N; image i is in shard i mod N), e.g.
    /// `--shard $SLURM_ARRAY_TASK_ID/$N`; join the shards' --out folders with `dcl merge`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<super::shard::ShardSpec>,
    /// Refuse images of more pixels than this, from their header, before any decoding (a
    /// 48 KB PNG may declare 20000x20000 pixels). Suffixes K, M, G: 10^3, 10^6, 10^9.
    #[arg(long, value_name = "N", default_value = "256M")]
    pub max_pixels: PixelCount,
    /// Images of more pixels than this are read region by region when they are TIFF or PNG
    /// (whole-slide images); others, and JPEG, are decoded whole.
    #[arg(long, value_name = "N", default_value = "64M", hide = true)]
    pub stream_pixels: PixelCount,
}

impl Default for ScaleArgs {
    fn default() -> Self {
        ScaleArgs {
            shard: None,
            max_pixels: "256M".parse().expect("valid"),
            stream_pixels: "64M".parse().expect("valid"),
        }
    }
}

/// How one image is counted.
#[derive(Clone, Debug)]
pub enum Route {
    /// Decoded whole (or not readable: its decoder says why).
    Memory,
    /// Read region by region.
    Stream(Probe),
    /// Refused before any work: the one-line reason, naming the file.
    Refused(String),
}

fn mpix(n: u64) -> String {
    format!("{:.1} Mpixel", n as f64 / 1e6)
}

/// The smallest round --max-pixels that admits `n` pixels.
fn enough(n: u64) -> String {
    let m = (n as f64 / 1e6).ceil() as u64;
    if m.is_multiple_of(1000) {
        format!("{}G", m / 1000)
    } else {
        format!("{m}M")
    }
}

/// Decides, from the file's header alone, how `path` is counted: refused (larger than
/// --max-pixels, or too large to decode whole and not streamable), streamed, or in memory.
pub fn route(path: &Path, a: &ScaleArgs) -> Route {
    let Ok(p) = stream::probe(path) else {
        return Route::Memory; // the decoder names the problem
    };
    let shown = path.display();
    if p.pixels() > a.max_pixels.n {
        return Route::Refused(format!(
            "{shown}: a {} image ({}) is larger than --max-pixels {} ({}); give --max-pixels {} \
             or more to count it",
            p.describe(),
            mpix(p.pixels()),
            a.max_pixels,
            mpix(a.max_pixels.n),
            enough(p.pixels())
        ));
    }
    let whole_ok = {
        let l = DecodeLimits::default();
        p.width <= l.max_side as u64
            && p.height <= l.max_side as u64
            && p.decoded_bytes <= l.max_bytes
    };
    // BigTIFF is always read region by region: the in-memory decoder does not know it
    let big_tiff = p.format == "BigTIFF";
    if p.pixels() > a.stream_pixels.n || !whole_ok || big_tiff {
        match p
            .streamable
            .clone()
            .and_then(|_| stream::open(path).map(|_| ()))
        {
            Ok(()) => return Route::Stream(p),
            Err(why) if !whole_ok => {
                let l = DecodeLimits::default();
                return Route::Refused(format!(
                    "{shown}: a {} image ({}) cannot be counted: {why}, and decoded whole it \
                     needs {:.2} GiB, more than {:.0} GiB (or a side over {} pixels); save it as a \
                     tiled TIFF, which is read region by region",
                    p.describe(),
                    mpix(p.pixels()),
                    p.decoded_bytes as f64 / (1u64 << 30) as f64,
                    l.max_bytes as f64 / (1u64 << 30) as f64,
                    l.max_side
                ));
            }
            Err(_) => {}
        }
    }
    Route::Memory
}

/// Tiles per network pass over a `nw` x `nh` network image.
pub fn tile_count(nw: usize, nh: usize, opts: &InferOptions) -> crate::Result<u64> {
    let (pw, ph) = (nw.div_ceil(16) * 16, nh.div_ceil(16) * 16);
    let tile = opts.checked_tile()?;
    let (tw, th) = (tile.min(pw), tile.min(ph));
    let c = Counter::STRIDE;
    Ok(
        (tile_starts(pw, tw, opts.overlap, c).len() * tile_starts(ph, th, opts.overlap, c).len())
            as u64,
    )
}

/// What a streamed image needs besides its path.
pub struct StreamCtx<'a> {
    /// A counter: the coupled baseline is not streamed (it counts images held whole).
    pub counter: &'a crate::nn::CountNet,
    pub localizer: Option<&'a Localizer>,
    pub readout: Readout,
    /// How located cells are written (QuPath object type, MultiPoint).
    pub points: &'a crate::cli::outputs::PointOptions,
    pub opts: InferOptions,
    pub out: Option<&'a Path>,
    pub density_dir: Option<&'a Path>,
    pub quiet: bool,
}

/// A streamed image's row.
pub struct StreamedRow {
    pub count: f64,
    pub width: usize,
    pub height: usize,
    pub points: Option<usize>,
    pub tiles: u64,
}

/// The largest side of a streamed image's overlay.
pub const PREVIEW_SIDE: u32 = 4096;

/// A downscaled copy of the image (mean of f x f blocks), built as its rows pass.
struct Preview {
    f: u32,
    w: u32,
    h: u32,
    src_w: u32,
    src_h: u32,
    acc: Vec<u32>,
    rows_in: u32,
    rgb: Vec<u8>,
}

impl Preview {
    fn new(src_w: u32, src_h: u32) -> Preview {
        let f = src_w.max(src_h).div_ceil(PREVIEW_SIDE).max(1);
        let (w, h) = (src_w.div_ceil(f), src_h.div_ceil(f));
        Preview {
            f,
            w,
            h,
            src_w,
            src_h,
            acc: vec![0; w as usize * 3],
            rows_in: 0,
            rgb: Vec::with_capacity(w as usize * h as usize * 3),
        }
    }
    fn add(&mut self, band: &Band, y0: u32, y1: u32) {
        let chunk = band.region(0, y0, self.src_w, y1 - y0).to_rgb8();
        for (y, row) in (y0..y1).zip(chunk.rows()) {
            for (x, px) in row.enumerate() {
                let i = (x as u32 / self.f) as usize * 3;
                for c in 0..3 {
                    self.acc[i + c] += px.0[c] as u32;
                }
            }
            self.rows_in += 1;
            if self.rows_in == self.f || y + 1 == self.src_h {
                for px in 0..self.w {
                    let cols = self.f.min(self.src_w - px * self.f);
                    let n = cols * self.rows_in;
                    for c in 0..3 {
                        let i = px as usize * 3 + c;
                        self.rgb.push(((self.acc[i] + n / 2) / n) as u8);
                    }
                }
                self.acc.iter_mut().for_each(|v| *v = 0);
                self.rows_in = 0;
            }
        }
    }
}

/// Counts one image region by region and writes its outputs as `dcl count` does for images
/// held whole (`cli::outputs`): counts.csv's row, points CSV and GeoJSON, the density maps
/// (tiled float TIFFs: `--density-dir`'s written as its rows become final, `--out`'s by
/// `write_image_density` once the count is known), and an overlay (a preview: the image shrunk
/// to at most `PREVIEW_SIDE` pixels a side, the cells ringed).
pub fn count_streamed(
    path: &Path,
    name: &str,
    probe: &Probe,
    ctx: &StreamCtx<'_>,
) -> anyhow::Result<StreamedRow> {
    let counter = ctx.counter.counter().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: a whole-slide image is counted region by region by a counter; the coupled \
             baseline counts only images held whole",
            path.display()
        )
    })?;
    let scale = counter.config.input_scale;
    let (nw, nh) = network_size(probe.width as usize, probe.height as usize, scale)?;
    let tiles = tile_count(nw, nh, &ctx.opts)? * if ctx.localizer.is_some() { 2 } else { 1 };
    let (w, h) = (probe.width as usize, probe.height as usize);
    // the localizer's raw network-resolution map (--density-dir), as its rows become final
    let mut raw = match (ctx.localizer, ctx.density_dir) {
        (Some(_), Some(d)) => Some(TiledF32Writer::create(
            &d.join(format!("{name}.density.tif")),
            nw,
            nh,
        )?),
        _ => None,
    };
    // --out's map, resized to the image as the rows come, into a scratch file: the factor that
    // scales it to the count is known only once its last row is summed
    let out_density = ctx
        .out
        .map(|o| o.join("density").join(format!("{name}.tif")));
    let mut resized = match (ctx.localizer, &out_density) {
        (Some(_), Some(p)) => Some(ResizedRows {
            resize: Resize::new(nw, nh, w, h),
            scratch: TiledF32Writer::create(p, w, h)?,
            sum: ToCount::default(),
        }),
        _ => None,
    };
    let mut preview = ctx.out.map(|_| Preview::new(nw as u32, nh as u32));
    let bar =
        crate::progress::progress_bar(tiles, &format!("{} (tiles)", path.display()), ctx.quiet);
    let mut density_row = |row: &[f32]| -> crate::Result<()> {
        if let Some(r) = raw.as_mut() {
            r.push_row(row)?;
        }
        if let Some(r) = resized.as_mut() {
            r.push(row)?;
        }
        Ok(())
    };
    let mut image_rows = |band: &Band, y0: u32, y1: u32| {
        if let Some(p) = preview.as_mut() {
            p.add(band, y0, y1)
        }
    };
    let progress = |n: u64| bar.inc(n);
    let open = || stream::open(path).map_err(|e| Error::file(path, e));
    let t0 = std::time::Instant::now();
    let s = predict_stream(
        counter,
        ctx.localizer.map(|l| (l, ctx.readout)),
        &open,
        &ctx.opts,
        Sinks {
            density_row: &mut density_row,
            image_rows: &mut image_rows,
            progress: &progress,
        },
    )
    .map_err(|e| match e {
        Error::File { .. } => anyhow::anyhow!("{e}"),
        e => anyhow::anyhow!("{}: {e}", path.display()),
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if let Some(r) = raw {
        r.finish()?;
    }
    if let Some(path) = &out_density {
        write_image_density(path, (w, h), resized, &s, scale)?;
    }
    let coarse = |p: &Path| write_tiff_f32(p, s.coarse.width, s.coarse.height, &s.coarse.data);
    if let Some(d) = ctx.density_dir {
        coarse(&d.join(format!("{name}.coarse.tif")))?;
    }
    if let Some(out) = ctx.out {
        if let Some(pts) = &s.points {
            // the in-memory path's writers: the same files, each written as it is made
            crate::cli::outputs::write_point_files(
                &out.join("points"),
                name,
                pts,
                s.count,
                ctx.points,
            )?;
        }
        if let Some(p) = preview {
            let img = image::RgbImage::from_raw(p.w, p.h, p.rgb)
                .ok_or_else(|| anyhow::anyhow!("internal: preview of the wrong size"))?;
            let k = scale / p.f as f32;
            let pts: Option<Vec<Point>> = s.points.as_ref().map(|v| {
                v.iter()
                    .map(|q| Point {
                        x: q.x * k,
                        y: q.y * k,
                        score: q.score,
                    })
                    .collect()
            });
            let ov = crate::report::overlay::overlay(
                &image::DynamicImage::ImageRgb8(img),
                pts.as_deref(),
                s.count,
            );
            crate::cli::outputs::write_png(&out.join("overlays").join(format!("{name}.png")), &ov)?;
        }
    }
    if s.dropped > 0 {
        eprintln!(
            "warning: {}: {} points kept of a count of {:.0}: the map has more than {} local \
             maxima and the {} weakest were set aside, so a few more might have been kept",
            path.display(),
            s.points.as_ref().map_or(0, Vec::len),
            s.count,
            crate::infer::stream::MAX_CANDIDATES,
            s.dropped
        );
    }
    if !ctx.quiet {
        eprintln!(
            "{}: {}x{} read region by region, {} tiles in {secs:.1}s ({:.2} tiles/s), outputs \
             written in {:.1}s",
            path.display(),
            s.width,
            s.height,
            s.tiles,
            s.tiles as f64 / secs.max(1e-9),
            t0.elapsed().as_secs_f64() - secs
        );
    }
    Ok(StreamedRow {
        count: s.count,
        width: s.width,
        height: s.height,
        points: s.points.as_ref().map(Vec::len),
        tiles: s.tiles,
    })
}

/// `--out`'s density rows of a streamed image with a localizer, as its rows become final:
/// resized to the image, summed, and kept in a scratch file until the count is known.
struct ResizedRows {
    resize: Resize,
    scratch: TiledF32Writer,
    sum: ToCount,
}

impl ResizedRows {
    /// Takes the localizer's next row (network pixels).
    fn push(&mut self, row: &[f32]) -> crate::Result<()> {
        let (scratch, sum) = (&mut self.scratch, &mut self.sum);
        self.resize.push(row, &mut |o: &[f32]| {
            sum.add(o);
            scratch.push_row(o)
        })
    }
}

/// A streamed image's density/NAME.tif: the in-memory path's map (`infer::image_density`), at
/// the image's size and scaled to its count, written a row of tiles at a time. With a localizer
/// its rows, resized and summed during the run, are read back from their scratch file and
/// scaled; without, the coarse map is spread twice, to sum it and to write it.
fn write_image_density(
    path: &Path,
    (w, h): (usize, usize),
    resized: Option<ResizedRows>,
    s: &Streamed,
    scale: f32,
) -> anyhow::Result<()> {
    let mut out = TiledF32Writer::create(path, w, h)?;
    let mut row = vec![0f32; w];
    match resized {
        Some(r) => {
            if !r.resize.done() {
                anyhow::bail!("internal: {}: the density map lacks rows", path.display());
            }
            let k = r.sum.factor(s.count);
            r.scratch.into_scratch()?.for_each_row(&mut |r: &[f32]| {
                row.copy_from_slice(r);
                scale_row(&mut row, k);
                out.push_row(&row)
            })?;
        }
        None => {
            let spread = Spread::new(&s.coarse, scale, w);
            let mut sum = ToCount::default();
            for y in 0..h {
                spread.row(y, &mut row);
                sum.add(&row);
            }
            let k = sum.factor(s.count);
            for y in 0..h {
                spread.row(y, &mut row);
                scale_row(&mut row, k);
                out.push_row(&row)?;
            }
        }
    }
    Ok(out.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_counts_parse_with_suffixes() {
        let n = |s: &str| s.parse::<PixelCount>().map(|p| p.n);
        assert_eq!(n("256M"), Ok(256_000_000));
        assert_eq!(n("2.5G"), Ok(2_500_000_000));
        assert_eq!(n("400000000"), Ok(400_000_000));
        assert_eq!(n("1k"), Ok(1000));
        for bad in ["", "M", "-3M", "12Q", "abc", "0.0001"] {
            assert!(n(bad).is_err(), "{bad}");
        }
        assert_eq!(enough(400_000_000), "400M");
        assert_eq!(enough(2_500_000_000), "2500M");
        assert_eq!(enough(3_000_000_000), "3G");
    }
}

//! Figures for people, drawn by the `plotters` crate into an `RgbImage` (its bitmap backend,
//! text in DejaVu Sans embedded in the binary, so no system font is needed): line charts
//! (training curves, log-scale losses), scatter plots (predicted vs true counts) and
//! histograms, with axis labels and legends, saved as PNG. Bad input never panics:
//! non-finite points are skipped (and break lines), an empty chart says "no data", and a
//! single value or all-equal values get a padded range.
use std::path::Path;
use std::sync::OnceLock;

use image::{ImageEncoder, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle, RGBColor};

use crate::error::{Error, Result};

/// Default figure size in pixels.
pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 500;

/// The font family every text uses (registered once from the embedded DejaVu Sans).
const FONT: &str = "sans-serif";
const MUTED: RGBColor = RGBColor(140, 140, 140);

/// Series colours (Tableau 10): distinct from one another and readable on white.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of the `i`-th series (the palette repeats after ten).
pub fn series_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Registers the embedded font with plotters (once per process).
pub fn ensure_font() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // DejaVu Sans is a valid TrueType font: registration cannot fail on it
        let _ = register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// One curve of a line chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            points,
        }
    }
}

/// Data values are kept within this magnitude so spans and ticks stay finite.
const LIMIT: f64 = 1e300;

/// A usable [lo, hi] from data extremes: non-finite → [0, 1]; equal (or nearly) → padded by
/// 10% of the value (±1 around zero), so a single point sits mid-axis.
fn sane_range(lo: f64, hi: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = (lo.min(hi).max(-LIMIT), hi.max(lo).min(LIMIT));
    let mid = 0.5 * (lo + hi);
    if hi - lo <= mid.abs() * 1e-9 {
        let half = if mid == 0.0 { 1.0 } else { mid.abs() * 0.1 };
        return (mid - half, mid + half);
    }
    (lo, hi)
}

/// `sane_range` widened by 4% on each side, so points on the extremes are not on the frame.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = sane_range(lo, hi);
    let m = (hi - lo) * 0.04;
    ((lo - m).max(-LIMIT), (hi + m).min(LIMIT))
}

/// A positive range for a log axis, widened by a quarter decade on each side.
fn log_range(lo: f64, hi: f64) -> (f64, f64) {
    let ok = |v: f64| v.is_finite() && v > 0.0;
    let (lo, hi) = if ok(lo) && ok(hi) {
        (lo.min(hi), lo.max(hi))
    } else {
        (1.0, 10.0)
    };
    let (a, b) = (lo.log10(), hi.log10());
    let (a, b) = if b - a < 1e-9 {
        (a - 0.5, b + 0.5)
    } else {
        (a, b)
    };
    let m = ((b - a) * 0.04).max(0.05);
    (
        10f64.powf((a - m).max(-300.0)),
        10f64.powf((b + m).min(300.0)),
    )
}

/// A tick label: up to 3 decimals without trailing zeros (10, 2.5, 0.125), exponent form for
/// very large or small magnitudes.
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Splits a series into runs of drawable points: a non-finite point (or one ≤ 0 on a log y
/// axis) is skipped and breaks the line, so gaps show where data is missing.
fn runs(points: &[(f64, f64)], log_y: bool) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for &(x, y) in points {
        let ok = x.is_finite() && y.is_finite() && x.abs() <= LIMIT && y.abs() <= LIMIT;
        if ok && (!log_y || y > 0.0) {
            out.last_mut().expect("never empty").push((x, y));
        } else if !out.last().expect("never empty").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// Where data coordinates land on a drawn figure (for tests): the pixels of two data corners,
/// interpolated (in log10 on a log y axis).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    pub x: (f64, f64),
    pub y: (f64, f64),
    pub log_y: bool,
    px: (f64, f64),
    py: (f64, f64),
}

impl Frame {
    fn of<X, Y>(
        chart: &ChartContext<'_, Canvas<'_>, Cartesian2d<X, Y>>,
        x: (f64, f64),
        y: (f64, f64),
        log_y: bool,
    ) -> Frame
    where
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        let a = chart.backend_coord(&(x.0, y.0));
        let b = chart.backend_coord(&(x.1, y.1));
        Frame {
            x,
            y,
            log_y,
            px: (a.0 as f64, b.0 as f64),
            py: (a.1 as f64, b.1 as f64),
        }
    }

    /// The pixel of a data point.
    pub fn to_px(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let t = |v: f64, (lo, hi): (f64, f64)| (v - lo) / (hi - lo);
        let ty = if self.log_y {
            t(y.log10(), (self.y.0.log10(), self.y.1.log10()))
        } else {
            t(y, self.y)
        };
        (
            self.px.0 + t(x, self.x) * (self.px.1 - self.px.0),
            self.py.0 + ty * (self.py.1 - self.py.0),
        )
    }
}

mod canvas {
    use plotters::prelude::*;
    use plotters_backend::{
        BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
    };

    /// The bitmap backend with text drawn by `report::text` (glyphs at their side bearings,
    /// which plotters' own ab_glyph text drops); everything else is the bitmap backend's.
    pub struct Canvas<'a>(pub BitMapBackend<'a>);

    impl DrawingBackend for Canvas<'_> {
        type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

        fn get_size(&self) -> (u32, u32) {
            self.0.get_size()
        }
        fn ensure_prepared(
            &mut self,
        ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.0.ensure_prepared()
        }
        fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.0.present()
        }
        fn draw_pixel(
            &mut self,
            p: BackendCoord,
            c: BackendColor,
        ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.0.draw_pixel(p, c)
        }
        fn draw_line<S: BackendStyle>(
            &mut self,
            a: BackendCoord,
            b: BackendCoord,
            s: &S,
        ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.0.draw_line(a, b, s)
        }
        fn draw_rect<S: BackendStyle>(
            &mut self,
            a: BackendCoord,
            b: BackendCoord,
            s: &S,
            fill: bool,
        ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.0.draw_rect(a, b, s, fill)
        }
        fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
            &mut self,
            path: I,
            s: &S,
        ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.0.draw_path(path, s)
        }
        fn draw_circle<S: BackendStyle>(
            &mut self,
            c: BackendCoord,
            r: u32,
            s: &S,
            fill: bool,
        ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.0.draw_circle(c, r, s, fill)
        }
        fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
            &mut self,
            vert: I,
            s: &S,
        ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
            self.0.fill_polygon(vert, s)
        }
        fn estimate_text_size<S: BackendTextStyle>(
            &self,
            text: &str,
            style: &S,
        ) -> std::result::Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
            let (w, h) = crate::report::text::measure(text, style.size());
            Ok((w.max(0) as u32, h.max(0) as u32))
        }
        /// As plotters' own `draw_text` (anchor, then rotation, then position), with our glyphs.
        fn draw_text<S: BackendTextStyle>(
            &mut self,
            text: &str,
            style: &S,
            pos: BackendCoord,
        ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
            use plotters_backend::text_anchor::{HPos, VPos};
            let color = style.color();
            if color.alpha == 0.0 {
                return Ok(());
            }
            let r = crate::report::text::rasterise(text, style.size());
            let dx = match style.anchor().h_pos {
                HPos::Left => 0,
                HPos::Right => -r.width,
                HPos::Center => -r.width / 2,
            };
            let dy = match style.anchor().v_pos {
                VPos::Top => 0,
                VPos::Center => -r.height / 2,
                VPos::Bottom => -r.height,
            };
            let trans = style.transform();
            let (w, h) = self.get_size();
            for (x, y, cover) in r.pixels {
                let (x, y) = trans.transform(x + dx, y + dy);
                let (x, y) = (pos.0 + x, pos.1 + y);
                if x >= 0 && x < w as i32 && y >= 0 && y < h as i32 {
                    let c = BackendColor {
                        alpha: color.alpha * cover as f64,
                        rgb: color.rgb,
                    };
                    self.0.draw_pixel((x, y), c)?;
                }
            }
            Ok(())
        }
    }
}
use canvas::Canvas;

type Area<'a> = DrawingArea<Canvas<'a>, Shift>;
type DrawResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A white `WIDTH` x `HEIGHT` figure drawn by `draw`. A drawing error leaves what was drawn
/// (plotters fails only on backend errors, which a memory buffer does not have).
fn figure(draw: impl FnOnce(&Area) -> DrawResult<Option<Frame>>) -> (RgbImage, Option<Frame>) {
    ensure_font();
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    let frame = {
        let root =
            Canvas(BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT))).into_drawing_area();
        let f = draw(&root).ok().flatten();
        let _ = root.present();
        f
    };
    let img = RgbImage::from_raw(WIDTH, HEIGHT, buf).expect("buffer of the figure's size");
    (img, frame)
}

/// The title and a centred "no data".
fn no_data(root: &Area, title: &str) -> DrawResult<Option<Frame>> {
    let root = root.titled(title, (FONT, 22))?;
    let (w, h) = root.dim_in_pixel();
    root.draw(&Text::new(
        "no data",
        (w as i32 / 2 - 40, h as i32 / 2 - 10),
        (FONT, 26).into_font().color(&MUTED),
    ))?;
    Ok(None)
}

fn caption_style() -> TextStyle<'static> {
    (FONT, 22).into_font().color(&BLACK)
}

/// A line chart of one or more series, each in the legend; `log_y` for losses (points with
/// y ≤ 0 are skipped).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> RgbImage {
    line_chart_framed(title, x_label, y_label, series, log_y).0
}

fn line_chart_framed(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> (RgbImage, Option<Frame>) {
    let drawn: Vec<Vec<Vec<(f64, f64)>>> = series.iter().map(|s| runs(&s.points, log_y)).collect();
    let all = || drawn.iter().flatten().flatten();
    let (xe, ye) = (extent(all().map(|p| p.0)), extent(all().map(|p| p.1)));
    figure(|root| {
        root.fill(&WHITE)?;
        let (Some((x0, x1)), Some((y0, y1))) = (xe, ye) else {
            return no_data(root, title);
        };
        let x = padded(x0, x1);
        let mut b = ChartBuilder::on(root);
        b.caption(title, caption_style())
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(76);
        macro_rules! draw_lines {
            ($chart:expr, $y:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(x_label)
                    .y_desc(y_label)
                    .x_label_formatter(&tick)
                    .y_label_formatter(&tick)
                    .label_style((FONT, 15))
                    .axis_desc_style((FONT, 17))
                    .light_line_style(RGBColor(247, 247, 247))
                    .bold_line_style(RGBColor(222, 222, 222))
                    .draw()?;
                for (i, (s, rs)) in series.iter().zip(&drawn).enumerate() {
                    let color = series_color(i);
                    for (k, r) in rs.iter().enumerate() {
                        let line = chart.draw_series(LineSeries::new(
                            r.iter().copied(),
                            color.stroke_width(2),
                        ))?;
                        if k == 0 && !s.label.is_empty() {
                            line.label(s.label.as_str()).legend(move |(x, y)| {
                                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
                            });
                        }
                        if r.len() == 1 {
                            chart.draw_series(
                                r.iter().map(|&p| Circle::new(p, 3, color.filled())),
                            )?;
                        }
                    }
                }
                if series.iter().any(|s| !s.label.is_empty()) {
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperRight)
                        .label_font((FONT, 15))
                        .background_style(WHITE.mix(0.85))
                        .border_style(RGBColor(200, 200, 200))
                        .draw()?;
                }
                Ok(Some(Frame::of(&chart, x, $y, log_y)))
            }};
        }
        if log_y {
            let y = log_range(y0, y1);
            draw_lines!(b.build_cartesian_2d(x.0..x.1, (y.0..y.1).log_scale())?, y)
        } else {
            let y = padded(y0, y1);
            draw_lines!(b.build_cartesian_2d(x.0..x.1, y.0..y.1)?, y)
        }
    })
}

/// A scatter plot; with `diagonal`, both axes share one range and the y = x line is dashed
/// across it (predicted vs true counts).
pub fn scatter(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
    diagonal: bool,
) -> RgbImage {
    scatter_framed(title, x_label, y_label, points, diagonal).0
}

fn scatter_framed(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
    diagonal: bool,
) -> (RgbImage, Option<Frame>) {
    let pts: Vec<(f64, f64)> = runs(points, false).into_iter().flatten().collect();
    figure(|root| {
        root.fill(&WHITE)?;
        let (Some(xe), Some(ye)) = (
            extent(pts.iter().map(|p| p.0)),
            extent(pts.iter().map(|p| p.1)),
        ) else {
            return no_data(root, title);
        };
        let (x, y) = if diagonal {
            let r = padded(xe.0.min(ye.0), xe.1.max(ye.1));
            (r, r)
        } else {
            (padded(xe.0, xe.1), padded(ye.0, ye.1))
        };
        let body = root.titled(title, (FONT, 22))?;
        macro_rules! build {
            ($area:expr) => {
                ChartBuilder::on($area)
                    .margin(14)
                    .x_label_area_size(44)
                    .y_label_area_size(76)
                    .build_cartesian_2d(x.0..x.1, y.0..y.1)
            };
        }
        // a square plotting area when the axes share a range: measured, then the sides
        // narrowed by the difference (building a chart without a caption draws nothing)
        let area = if diagonal {
            let (xr, yr) = build!(&body)?.plotting_area().get_pixel_range();
            let extra = (xr.end - xr.start) - (yr.end - yr.start);
            if extra > 0 {
                body.margin(0, 0, (extra / 2) as u32, (extra - extra / 2) as u32)
            } else {
                body.clone()
            }
        } else {
            body.clone()
        };
        let mut chart = build!(&area)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(RGBColor(247, 247, 247))
            .bold_line_style(RGBColor(222, 222, 222))
            .draw()?;
        if diagonal {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x.0, x.0), (x.1, x.1)],
                    6,
                    5,
                    MUTED.stroke_width(1),
                ))?
                .label("y = x")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], MUTED));
        }
        let color = PALETTE[0];
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?
            .label("images")
            .legend(move |(x, y)| Circle::new((x + 11, y), 4, color.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()?;
        Ok(Some(Frame::of(&chart, x, y, false)))
    })
}

/// Counts of `values` in `bins` equal bins over [min, max] of the finite values (the top
/// edge belongs to the last bin); all-equal values get a padded range. Returns (lo, hi,
/// counts), or None when no value is finite. `bins` is clamped to 1..=10000.
pub fn histogram_counts(values: &[f64], bins: usize) -> Option<(f64, f64, Vec<usize>)> {
    let bins = bins.clamp(1, 10_000);
    let finite = || values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = extent(finite())?;
    let (lo, hi) = sane_range(lo, hi);
    let mut counts = vec![0usize; bins];
    for v in finite() {
        // `as usize` saturates, so values clamped out of the range land in an end bin
        let i = ((v - lo) / (hi - lo) * bins as f64).floor() as usize;
        counts[i.min(bins - 1)] += 1;
    }
    Some((lo, hi, counts))
}

/// A histogram of the finite `values` in `bins` equal bins; the y axis counts images.
pub fn histogram(title: &str, x_label: &str, values: &[f64], bins: usize) -> RgbImage {
    histogram_framed(title, x_label, values, bins).0
}

fn histogram_framed(
    title: &str,
    x_label: &str,
    values: &[f64],
    bins: usize,
) -> (RgbImage, Option<Frame>) {
    let h = histogram_counts(values, bins);
    figure(|root| {
        root.fill(&WHITE)?;
        let Some((lo, hi, counts)) = h else {
            return no_data(root, title);
        };
        let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
        let y = (0.0, (top * 1.08).max(top + 0.5));
        let mut chart = ChartBuilder::on(root)
            .caption(title, caption_style())
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(76)
            .build_cartesian_2d(lo..hi, y.0..y.1)?;
        let whole = |v: &f64| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("images")
            .x_label_formatter(&tick)
            .y_label_formatter(&whole)
            .y_labels((top as usize + 1).min(10))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(RGBColor(247, 247, 247))
            .bold_line_style(RGBColor(222, 222, 222))
            .draw()?;
        let width = (hi - lo) / counts.len() as f64;
        let color = PALETTE[0];
        chart.draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(b, &c)| {
                    let x0 = lo + b as f64 * width;
                    let mut bar =
                        Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], color.filled());
                    bar.set_margin(0, 0, 1, 1);
                    bar
                }),
        )?;
        Ok(Some(Frame::of(&chart, (lo, hi), y, false)))
    })
}

/// Several figures in one image, top to bottom, each centred horizontally on white.
/// No images gives a blank default-size canvas that says "no data".
pub fn stack_vertical(images: &[RgbImage]) -> RgbImage {
    let w = images.iter().map(|i| i.width()).max().unwrap_or(0);
    let h = images
        .iter()
        .fold(0u32, |s, i| s.saturating_add(i.height()));
    if w == 0 || h == 0 {
        return figure(|root| {
            root.fill(&WHITE)?;
            no_data(root, "")
        })
        .0;
    }
    let mut out = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let mut y = 0u32;
    for i in images {
        let x = (w - i.width()) / 2;
        image::imageops::replace(&mut out, i, x as i64, y as i64);
        y = y.saturating_add(i.height());
    }
    out
}

/// Writes `img` as a PNG at `path`, atomically: encoded in memory first, so a failed encode
/// leaves no file and a crash leaves the old file or the new one.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    crate::fsutil::atomic_write(path, &buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb(c: RGBColor) -> image::Rgb<u8> {
        image::Rgb([c.0, c.1, c.2])
    }

    fn count_color(img: &RgbImage, c: RGBColor) -> usize {
        img.pixels().filter(|p| **p == rgb(c)).count()
    }

    /// Whether `c` is drawn within `r` pixels of a data point.
    fn near(img: &RgbImage, f: &Frame, p: (f64, f64), c: RGBColor, r: i64) -> bool {
        let (x, y) = f.to_px(p);
        let (x, y) = (x.round() as i64, y.round() as i64);
        (-r..=r).any(|dx| {
            (-r..=r).any(|dy| {
                let (u, v) = (x + dx, y + dy);
                u >= 0
                    && v >= 0
                    && (u as u32) < img.width()
                    && (v as u32) < img.height()
                    && *img.get_pixel(u as u32, v as u32) == rgb(c)
            })
        })
    }

    #[test]
    fn line_chart_draws_curves_where_the_data_says() {
        let a = Series::new("a", (0..=10).map(|i| (i as f64, i as f64)).collect());
        let b = Series::new("b", (0..=10).map(|i| (i as f64, 10.0 - i as f64)).collect());
        let (img, f) = line_chart_framed("t", "epoch", "loss", &[a, b], false);
        let f = f.unwrap();
        for t in [1.0, 3.0, 7.0, 9.0] {
            assert!(near(&img, &f, (t, t), PALETTE[0], 2), "a at {t}");
            assert!(near(&img, &f, (t, 10.0 - t), PALETTE[1], 2), "b at {t}");
        }
        assert!(!near(&img, &f, (2.0, 8.0), PALETTE[0], 2));
        // text is drawn (title, labels, legend): dark anti-aliased pixels outside the curves
        assert!(
            img.pixels()
                .filter(|p| p.0[0] < 90 && p.0[1] < 90 && p.0[2] < 90)
                .count()
                > 500
        );
    }

    #[test]
    fn log_line_chart_puts_the_geometric_mean_mid_way() {
        let s = Series::new("loss", vec![(0.0, 0.01), (1.0, 0.1), (2.0, 1.0)]);
        let (img, f) = line_chart_framed("t", "x", "y", &[s], true);
        let f = f.unwrap();
        assert!(f.log_y);
        let (_, y0) = f.to_px((0.0, 0.01));
        let (_, y1) = f.to_px((1.0, 0.1));
        let (_, y2) = f.to_px((2.0, 1.0));
        assert!(((y0 - y1) - (y1 - y2)).abs() <= 2.0, "{y0} {y1} {y2}");
        assert!(near(&img, &f, (1.0, 0.1), PALETTE[0], 2));
    }

    #[test]
    fn gaps_break_lines_at_non_finite_points() {
        let pts = vec![
            (0.0, 1.0),
            (1.0, 2.0),
            (2.0, f64::NAN),
            (3.0, 2.0),
            (4.0, 1.0),
        ];
        assert_eq!(runs(&pts, false).len(), 2);
        assert_eq!(runs(&[(0.0, 1.0), (1.0, 0.0), (2.0, 3.0)], true).len(), 2);
        let (img, f) = line_chart_framed("g", "x", "y", &[Series::new("s", pts)], false);
        let f = f.unwrap();
        assert!(near(&img, &f, (0.5, 1.5), PALETTE[0], 2));
        // no line across the gap between x = 1 and x = 3
        assert!(!near(&img, &f, (2.0, 2.0), PALETTE[0], 1));
    }

    #[test]
    fn tick_labels_are_short() {
        let t = |v: f64| tick(&v);
        assert_eq!(
            [t(10.0), t(2.5), t(0.125), t(-0.0), t(0.1), t(1e7), t(-3.0)],
            ["10", "2.5", "0.125", "0", "0.1", "1.0e7", "-3"]
        );
    }

    #[test]
    fn histogram_bin_counts() {
        let v: Vec<f64> = (0..=10)
            .map(|i| i as f64)
            .chain([f64::NAN, f64::INFINITY])
            .collect();
        let (lo, hi, c) = histogram_counts(&v, 5).unwrap();
        assert_eq!((lo, hi), (0.0, 10.0));
        // [0,2) [2,4) [4,6) [6,8) [8,10]: the top edge goes to the last bin
        assert_eq!(c, vec![2, 2, 2, 2, 3]);
        let (lo, hi, c) = histogram_counts(&[3.0, 3.0, 3.0], 4).unwrap();
        assert!(lo < 3.0 && hi > 3.0);
        assert_eq!(c, vec![0, 0, 3, 0]);
        assert_eq!(histogram_counts(&[1.0, 2.0], 0).unwrap().2, vec![2]);
        assert!(histogram_counts(&[], 10).is_none());
        assert!(histogram_counts(&[f64::NAN, f64::NEG_INFINITY], 10).is_none());
        let (_, _, c) = histogram_counts(&[-f64::MAX, 0.0, f64::MAX], 3).unwrap();
        assert_eq!(c.iter().sum::<usize>(), 3);
    }

    #[test]
    fn histogram_bars_reach_their_counts() {
        let v = [0.0, 1.0, 1.0, 1.0, 2.0, 4.0];
        let (img, f) = histogram_framed("h", "value", &v, 4);
        let f = f.unwrap();
        let at = |p| {
            let (x, y) = f.to_px(p);
            *img.get_pixel(x.round() as u32, y.round() as u32)
        };
        let bar = rgb(PALETTE[0]);
        // bin [1, 2) holds 3: filled just below its top and near its base
        assert_eq!(at((1.5, 2.9)), bar);
        assert_eq!(at((1.5, 0.1)), bar);
        assert_ne!(at((1.5, 3.1)), bar);
        // bin [3, 4] holds 1 (the 4.0): filled at 0.5, not at 1.5
        assert_eq!(at((3.5, 0.5)), bar);
        assert_ne!(at((3.5, 1.5)), bar);
        // bin [2, 3) holds only 2.0: 1 bar
        assert_ne!(at((2.5, 1.5)), bar);
    }

    #[test]
    fn scatter_with_diagonal_shares_a_square_range() {
        let pts = [(1.0, 2.0), (10.0, 8.0), (5.0, 5.0), (f64::NAN, 3.0)];
        let (img, f) = scatter_framed("pred vs true", "true", "predicted", &pts, true);
        let f = f.unwrap();
        assert_eq!(f.x, f.y);
        assert!(f.x.0 <= 1.0 && f.x.1 >= 10.0);
        // square: a unit in x spans as many pixels as a unit in y
        let (a, b) = (f.to_px((f.x.0, f.y.0)), f.to_px((f.x.1, f.y.1)));
        assert!(
            ((b.0 - a.0).abs() - (b.1 - a.1).abs()).abs() <= 3.0,
            "{a:?} {b:?}"
        );
        for p in &pts[..3] {
            assert!(near(&img, &f, *p, PALETTE[0], 1), "{p:?}");
        }
        // the dashed diagonal: some muted pixels lie on y = x between the points
        let on_diag = (0..100)
            .map(|i| 6.0 + 3.0 * i as f64 / 100.0)
            .filter(|&t| near(&img, &f, (t, t), MUTED, 0))
            .count();
        assert!(on_diag > 20 && on_diag < 100, "{on_diag}");
        let (_, g) = scatter_framed("s", "x", "y", &pts, false);
        let g = g.unwrap();
        assert_ne!(g.x, g.y);
    }

    #[test]
    fn degenerate_inputs_draw_without_panicking() {
        let nan = f64::NAN;
        let say_no_data = |img: &RgbImage| {
            // "no data" in the muted grey, anti-aliased: pixels near its colour
            img.pixels()
                .filter(|p| p.0.iter().all(|&v| (120..=170).contains(&v)))
                .count()
                > 20
        };
        let empty = line_chart("empty", "x", "y", &[], false);
        assert!(say_no_data(&empty));
        assert!(say_no_data(&line_chart(
            "e",
            "x",
            "y",
            &[Series::new("a", vec![])],
            true
        )));
        let neg = Series::new("neg", vec![(0.0, -1.0), (1.0, 0.0)]);
        assert!(say_no_data(&line_chart("e", "x", "y", &[neg], true)));
        let nans = Series::new("nan", vec![(nan, 1.0), (1.0, nan), (f64::INFINITY, 2.0)]);
        assert!(say_no_data(&line_chart("nan", "x", "y", &[nans], false)));
        let single = Series::new("one", vec![(3.0, 7.0)]);
        let (img, f) = line_chart_framed("one", "x", "y", &[single], false);
        let f = f.unwrap();
        assert!(f.x.0 < 3.0 && f.x.1 > 3.0 && f.y.0 < 7.0 && f.y.1 > 7.0);
        assert!(near(&img, &f, (3.0, 7.0), PALETTE[0], 1));
        let huge = Series::new(
            "huge",
            vec![(-f64::MAX, f64::MAX), (0.0, 1e-300), (1e300, -1e300)],
        );
        line_chart("huge", "x", "y", std::slice::from_ref(&huge), false);
        line_chart("huge", "x", "y", &[huge], true);
        let many: Vec<Series> = (0..25)
            .map(|i| Series::new(format!("s{i}"), vec![(0.0, i as f64)]))
            .collect();
        line_chart("many", "", "", &many, false);
        let long = "a very long title ".repeat(20);
        line_chart(&long, &long, &long, &[], false);
        assert!(say_no_data(&scatter("s", "x", "y", &[], true)));
        assert!(say_no_data(&scatter("s", "x", "y", &[(nan, nan)], false)));
        scatter("s", "x", "y", &[(2.0, 2.0)], true);
        scatter("s", "x", "y", &[(2.0, 2.0), (2.0, 2.0)], false);
        assert!(say_no_data(&histogram("h", "x", &[], 10)));
        assert!(say_no_data(&histogram("h", "x", &[nan], 10)));
        histogram("h", "x", &[5.0], 0);
        histogram("h", "x", &[1.0, 2.0], usize::MAX);
        assert!(say_no_data(&stack_vertical(&[])));
        assert_eq!(count_color(&stack_vertical(&[]), PALETTE[0]), 0);
    }

    #[test]
    fn stack_vertical_places_panels_top_to_bottom() {
        let a = RgbImage::from_pixel(4, 2, image::Rgb([1, 2, 3]));
        let b = RgbImage::from_pixel(2, 3, image::Rgb([9, 9, 9]));
        let s = stack_vertical(&[a, b]);
        assert_eq!(s.dimensions(), (4, 5));
        assert_eq!(s.get_pixel(0, 1).0, [1, 2, 3]);
        // the narrower panel is centred: columns 1..3 of rows 2..5
        assert_eq!(s.get_pixel(1, 2).0, [9, 9, 9]);
        assert_eq!(s.get_pixel(2, 4).0, [9, 9, 9]);
        assert_eq!(s.get_pixel(0, 3).0, [255, 255, 255]);
        assert_eq!(s.get_pixel(3, 3).0, [255, 255, 255]);
    }

    #[test]
    fn save_png_round_trips_and_reports_bad_paths() {
        let d = tempfile::tempdir().unwrap();
        let img = histogram("h", "x", &[1.0, 2.0, 2.0, 3.0], 3);
        let p = d.path().join("figs/h.png");
        save_png(&img, &p).unwrap();
        let back = image::open(&p).unwrap().to_rgb8();
        assert_eq!(back, img);
        // only the PNG is left in its folder (no temporary file)
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        // a folder in the way is an error naming the path
        let e = save_png(&img, d.path()).unwrap_err().to_string();
        assert!(e.contains(&d.path().display().to_string()), "{e}");
    }

    /// Writes one figure of each kind for a person to look at:
    /// `cargo test --lib report::plot -- --ignored`, then open $TMPDIR/dcl-plot-samples/*.png.
    #[test]
    #[ignore]
    fn render_samples() {
        let dir = std::env::temp_dir().join("dcl-plot-samples");
        let train: Vec<(f64, f64)> = (1..=60)
            .map(|e| (e as f64, 2.0 * (-(e as f64) / 12.0).exp() + 0.01))
            .collect();
        let val: Vec<(f64, f64)> = (1..=60)
            .map(|e| (e as f64, 2.2 * (-(e as f64) / 15.0).exp() + 0.03))
            .collect();
        let loss = line_chart(
            "counter: training loss",
            "epoch",
            "loss",
            &[Series::new("train", train), Series::new("val", val)],
            true,
        );
        save_png(&loss, &dir.join("loss.png")).unwrap();
        let xy: Vec<(f64, f64)> = (0..40)
            .map(|i| {
                let t = 50.0 + 7.0 * i as f64;
                (t, t * (1.0 + 0.08 * ((i as f64) * 1.7).sin()))
            })
            .collect();
        let s = scatter(
            "predicted vs true counts",
            "true count",
            "predicted count",
            &xy,
            true,
        );
        save_png(&s, &dir.join("scatter.png")).unwrap();
        let err: Vec<f64> = xy.iter().map(|(t, p)| p - t).collect();
        let h = histogram("count errors (predicted - true)", "error (cells)", &err, 20);
        save_png(&h, &dir.join("errors.png")).unwrap();
        save_png(&stack_vertical(&[loss, s, h]), &dir.join("stack.png")).unwrap();
    }
}

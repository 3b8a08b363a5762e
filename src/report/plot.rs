//! Figures for people, drawn straight into an `RgbImage` with the built-in bitmap font: line
//! charts (training curves, log-scale losses), scatter plots (predicted vs true counts) and
//! histograms, saved as PNG. Bad input never panics: non-finite points are skipped, an empty
//! chart says "no data", and a single value or all-equal values get a padded range.
use std::path::Path;

use image::{ImageEncoder, Rgb, RgbImage};

use super::font::{draw_text, draw_text_vertical, text_height, text_width};
use crate::error::{Error, Result};

/// Default figure size in pixels.
pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 500;

/// Scale of every text on a figure: 10x14 px per character reads well at 800x500.
const TEXT: u32 = 2;
const TICK_LEN: u32 = 5;
const PAD: u32 = 10;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const GRID_MINOR: Rgb<u8> = Rgb([242, 242, 242]);
const MUTED: Rgb<u8> = Rgb([140, 140, 140]);

/// Series colours (Tableau 10): distinct from one another and readable on white.
pub const PALETTE: [Rgb<u8>; 10] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
    Rgb([188, 189, 34]),
    Rgb([23, 190, 207]),
];

/// The colour of the `i`-th series (the palette repeats after ten).
pub fn series_color(i: usize) -> Rgb<u8> {
    PALETTE[i % PALETTE.len()]
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

/// Data values are kept within this magnitude so spans and tick steps stay finite.
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

/// The "nice" step (1, 2 or 5 times a power of ten) at or above `raw`.
pub fn nice_step(raw: f64) -> f64 {
    let raw = raw.abs();
    if !raw.is_finite() || raw == 0.0 {
        return 1.0;
    }
    let base = 10f64.powi(raw.log10().floor() as i32);
    let f = raw / base;
    // 1.0000001 rather than 1: log10 of an exact power of ten can land a hair low
    let m = if f <= 1.000_000_1 {
        1.0
    } else if f <= 2.000_000_1 {
        2.0
    } else if f <= 5.000_000_1 {
        5.0
    } else {
        10.0
    };
    m * base
}

/// Nice ticks covering [lo, hi] with about `target` intervals: multiples of a 1-2-5 step,
/// from the last multiple at or below `lo` to the first at or above `hi`.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    Axis::linear(lo, hi, target, false).ticks
}

/// One axis as drawn: its range (data units), its ticks, and whether it is log10.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<f64>,
    /// Lighter grid lines between ticks (2..9 x 10^k on a log axis); empty on linear axes.
    pub minor: Vec<f64>,
    /// Tick spacing: data units on a linear axis, decades on a log axis.
    pub step: f64,
    pub log: bool,
}

impl Axis {
    /// A linear axis over the data range [lo, hi] widened to nice ticks; `integer` keeps the
    /// step at least 1 (for counts).
    pub fn linear(lo: f64, hi: f64, target: usize, integer: bool) -> Axis {
        let (lo, hi) = sane_range(lo, hi);
        let mut step = nice_step((hi - lo) / target.max(1) as f64);
        if integer {
            step = step.max(1.0);
        }
        // tolerance so a bound that is already a multiple of the step is not widened by one
        let k0 = (lo / step + 1e-9).floor();
        let k1 = (hi / step - 1e-9).ceil().max(k0 + 1.0);
        let ticks: Vec<f64> = (0..=((k1 - k0) as usize).min(1000))
            .map(|i| {
                let t = (k0 + i as f64) * step;
                if t.abs() < step * 1e-9 {
                    0.0
                } else {
                    t
                }
            })
            .collect();
        Axis {
            lo: k0 * step,
            hi: k1 * step,
            ticks,
            minor: Vec::new(),
            step,
            log: false,
        }
    }

    /// A linear axis over exactly [lo, hi] (padded when degenerate) with the nice ticks that
    /// fall inside it; at least two when the range allows.
    pub fn tight(lo: f64, hi: f64, target: usize) -> Axis {
        let (lo, hi) = sane_range(lo, hi);
        let mut target = target.max(1);
        loop {
            let wide = Axis::linear(lo, hi, target, false);
            let ticks: Vec<f64> = wide
                .ticks
                .iter()
                .copied()
                .filter(|&t| t >= lo - wide.step * 1e-9 && t <= hi + wide.step * 1e-9)
                .collect();
            if ticks.len() >= 2 || target >= 20 {
                return Axis {
                    lo,
                    hi,
                    ticks,
                    ..wide
                };
            }
            target += 1;
        }
    }

    /// A log10 axis over positive [lo, hi], widened to whole decades; ticks at powers of ten
    /// (every few decades when the range is wide), minor lines at 2..9 x 10^k when decades are
    /// few enough to show them.
    pub fn log10(lo: f64, hi: f64, target: usize) -> Axis {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        let (lo, hi) = match (ok(lo), ok(hi)) {
            (true, true) => (lo.min(hi), lo.max(hi)),
            _ => (1.0, 10.0),
        };
        let mut e0 = ((lo.log10() + 1e-9).floor() as i32).clamp(-300, 299);
        let mut e1 = ((hi.log10() - 1e-9).ceil() as i32).clamp(e0 + 1, 300);
        let t = target.clamp(1, 600) as i32;
        let every = ((e1 - e0 + t - 1) / t).max(1);
        e0 = e0.div_euclid(every) * every;
        e1 = (e1 + every - 1).div_euclid(every) * every;
        let ticks = (0..=(e1 - e0) / every)
            .map(|i| 10f64.powi(e0 + i * every))
            .collect();
        let minor = if every == 1 && e1 - e0 <= 6 {
            (e0..e1)
                .flat_map(|e| (2..10).map(move |m| m as f64 * 10f64.powi(e)))
                .collect()
        } else {
            Vec::new()
        };
        Axis {
            lo: 10f64.powi(e0),
            hi: 10f64.powi(e1),
            ticks,
            minor,
            step: every as f64,
            log: true,
        }
    }

    /// Where `v` lies along the axis, 0 at `lo` and 1 at `hi`.
    pub fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    /// The label of tick `v`: as many decimals as the step needs; powers of ten on a log axis;
    /// exponent notation for very large or very small numbers.
    pub fn label(&self, v: f64) -> String {
        if self.log {
            let e = v.log10().round() as i32;
            return match e {
                0..=4 => format!("{}", 10i64.pow(e as u32)),
                -3..=-1 => format!("{:.*}", (-e) as usize, 10f64.powi(e)),
                _ => format!("1e{e}"),
            };
        }
        let k = (self.step.log10() + 1e-9).floor() as i32;
        let v = (v / self.step).round() * self.step;
        if v == 0.0 || v.abs() < self.step * 1e-9 {
            return "0".into();
        }
        let mag = self.lo.abs().max(self.hi.abs());
        if self.step >= 1e-4 && mag < 1e6 {
            format!("{:.*}", (-k).max(0) as usize, v)
        } else {
            let e = (v.abs().log10() + 1e-9).floor() as i32;
            format!("{:.*e}", (e - k).max(0) as usize, v)
        }
    }
}

/// A pixel rectangle, [x0, x1) x [y0, y1).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Rect {
    fn contains(&self, x: i64, y: i64) -> bool {
        x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1
    }
}

/// The plot area of a chart and its two axes: maps data to pixels.
#[derive(Clone, Debug, PartialEq)]
struct Frame {
    area: Rect,
    x: Axis,
    y: Axis,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        self.area.x0 as f64 + self.x.frac(x) * (self.area.x1 - self.area.x0 - 1) as f64
    }
    fn py(&self, y: f64) -> f64 {
        (self.area.y1 - 1) as f64 - self.y.frac(y) * (self.area.y1 - self.area.y0 - 1) as f64
    }
    fn to_px(&self, (x, y): (f64, f64)) -> (f64, f64) {
        (self.px(x), self.py(y))
    }
}

/// What goes on an axis: the data range and how to build ticks for it.
#[derive(Clone, Copy)]
enum Scale {
    Linear {
        lo: f64,
        hi: f64,
        integer: bool,
    },
    /// Exactly [lo, hi], ticks only inside (a histogram's bins fill the width).
    Tight {
        lo: f64,
        hi: f64,
    },
    Log {
        lo: f64,
        hi: f64,
    },
}

impl Scale {
    fn axis(self, target: usize) -> Axis {
        match self {
            Scale::Linear { lo, hi, integer } => Axis::linear(lo, hi, target, integer),
            Scale::Tight { lo, hi } => Axis::tight(lo, hi, target),
            Scale::Log { lo, hi } => Axis::log10(lo, hi, target),
        }
    }
}

fn max_label_width(a: &Axis) -> u32 {
    a.ticks
        .iter()
        .map(|&t| text_width(&a.label(t), TEXT))
        .max()
        .unwrap_or(0)
}

/// The largest tick count (up to `start`) whose labels, laid side by side along `len` pixels,
/// keep a gap between them.
fn fitting_x_axis(scale: Scale, len: u32, start: usize) -> Axis {
    let mut target = start.max(1);
    loop {
        let a = scale.axis(target);
        // pixels between neighbouring ticks (a tight axis need not start on a tick)
        let per_tick = match a.ticks.as_slice() {
            [t0, t1, ..] => len as f64 * (a.frac(*t1) - a.frac(*t0)).abs(),
            _ => len as f64,
        };
        if target == 1 || (max_label_width(&a) + 3 * PAD) as f64 <= per_tick {
            return a;
        }
        target -= 1;
    }
}

/// Lays out a chart on a `w` x `h` canvas: title band on top, x tick labels and x label below,
/// y tick labels and the (vertical) y label on the left. With `square` the plot area is square
/// and both axes share the y axis's ticks (x and y must then span the same range).
fn layout(w: u32, h: u32, y_label: &str, xs: Scale, ys: Scale, square: bool) -> Frame {
    let th = text_height(TEXT);
    let top = PAD + th + 2 * PAD;
    let bottom = TICK_LEN + PAD / 2 + th + PAD + th + PAD;
    let plot_h = h.saturating_sub(top + bottom).max(2);
    let y = ys.axis((plot_h / 50).clamp(2, 10) as usize);
    let y_label_band = if y_label.is_empty() { 0 } else { th + PAD };
    let left = PAD + y_label_band + max_label_width(&y) + PAD / 2 + TICK_LEN + 1;
    let right = 3 * PAD;
    let plot_w = w.saturating_sub(left + right).max(2);
    let (x, y, left, plot_w) = if square {
        let side = plot_w.min(plot_h);
        // the shared axis must also fit its labels horizontally
        let a = fitting_x_axis(ys, side, (side / 50).clamp(2, 10) as usize);
        let left = left + (plot_w - side) / 2;
        (a.clone(), a, left, side)
    } else {
        let x = fitting_x_axis(xs, plot_w, (plot_w / 80).clamp(2, 10) as usize);
        (x, y, left, plot_w)
    };
    let plot_h = if square { plot_w } else { plot_h };
    Frame {
        area: Rect {
            x0: left as i64,
            y0: top as i64,
            x1: (left + plot_w) as i64,
            y1: (top + plot_h) as i64,
        },
        x,
        y,
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < img.width() as i64 && y < img.height() as i64 {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn fill_rect(img: &mut RgbImage, r: Rect, c: Rgb<u8>) {
    let x0 = r.x0.clamp(0, img.width() as i64);
    let x1 = r.x1.clamp(0, img.width() as i64);
    let y0 = r.y0.clamp(0, img.height() as i64);
    let y1 = r.y1.clamp(0, img.height() as i64);
    for y in y0..y1 {
        for x in x0..x1 {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

fn outline(img: &mut RgbImage, r: Rect, c: Rgb<u8>) {
    for x in r.x0..r.x1 {
        put(img, x, r.y0, c);
        put(img, x, r.y1 - 1, c);
    }
    for y in r.y0..r.y1 {
        put(img, r.x0, y, c);
        put(img, r.x1 - 1, y, c);
    }
}

/// A filled disc of radius `r` at (cx, cy), only where it falls inside `clip`.
fn disc(img: &mut RgbImage, clip: Rect, cx: f64, cy: f64, r: i64, c: Rgb<u8>) {
    let (cx, cy) = (cx.round() as i64, cy.round() as i64);
    for dy in -r..=r {
        for dx in -r..=r {
            // radius 1 is a plus sign; larger discs use r*r + r, which rounds them out
            let inside = if r == 1 {
                dx.abs() + dy.abs() <= 1
            } else {
                dx * dx + dy * dy <= r * r + r
            };
            if inside {
                let (x, y) = (cx + dx, cy + dy);
                if clip.contains(x, y) {
                    put(img, x, y, c);
                }
            }
        }
    }
}

/// A line from a to b, `r` pixels either side of centre, clipped to `clip`; with `dash`
/// (on, off) in pixels it is dashed.
fn line(
    img: &mut RgbImage,
    clip: Rect,
    a: (f64, f64),
    b: (f64, f64),
    r: i64,
    c: Rgb<u8>,
    dash: Option<(usize, usize)>,
) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    // one stamp per pixel along the longer direction; bounded because points are on the canvas
    let n = dx.abs().max(dy.abs()).ceil().clamp(1.0, 100_000.0) as usize;
    for i in 0..=n {
        if let Some((on, off)) = dash {
            if i % (on + off).max(1) >= on {
                continue;
            }
        }
        let t = i as f64 / n as f64;
        disc(img, clip, a.0 + t * dx, a.1 + t * dy, r, c);
    }
}

/// `text` cut (with "..") to fit `max_w` pixels at `scale`.
fn fit_text(text: &str, max_w: u32, scale: u32) -> String {
    if text_width(text, scale) <= max_w {
        return text.to_string();
    }
    let mut s: String = text.chars().collect();
    while !s.is_empty() && text_width(&format!("{s}.."), scale) > max_w {
        s.pop();
    }
    format!("{s}..")
}

/// The empty canvas with grid, box, ticks, tick labels, title and axis labels.
fn draw_frame(f: &Frame, w: u32, h: u32, title: &str, x_label: &str, y_label: &str) -> RgbImage {
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let a = f.area;
    let th = text_height(TEXT) as i64;
    for &m in &f.y.minor {
        let y = f.py(m).round() as i64;
        line(
            &mut img,
            a,
            (a.x0 as f64, y as f64),
            ((a.x1 - 1) as f64, y as f64),
            0,
            GRID_MINOR,
            None,
        );
    }
    for &t in &f.x.ticks {
        let x = f.px(t).round() as i64;
        line(
            &mut img,
            a,
            (x as f64, a.y0 as f64),
            (x as f64, (a.y1 - 1) as f64),
            0,
            GRID,
            None,
        );
    }
    for &t in &f.y.ticks {
        let y = f.py(t).round() as i64;
        line(
            &mut img,
            a,
            (a.x0 as f64, y as f64),
            ((a.x1 - 1) as f64, y as f64),
            0,
            GRID,
            None,
        );
    }
    // the box sits just outside the plot area so data on the range's edge stays visible
    outline(
        &mut img,
        Rect {
            x0: a.x0 - 1,
            y0: a.y0 - 1,
            x1: a.x1 + 1,
            y1: a.y1 + 1,
        },
        AXIS,
    );
    for &t in &f.x.ticks {
        let x = f.px(t).round() as i64;
        for k in 0..TICK_LEN as i64 {
            put(&mut img, x, a.y1 + 1 + k, AXIS);
        }
        let s = f.x.label(t);
        let lx = x - text_width(&s, TEXT) as i64 / 2;
        let ly = a.y1 + 1 + TICK_LEN as i64 + (PAD / 2) as i64;
        draw_text(&mut img, lx.max(0) as u32, ly as u32, &s, TEXT, INK);
    }
    for &t in &f.y.ticks {
        let y = f.py(t).round() as i64;
        for k in 0..TICK_LEN as i64 {
            put(&mut img, a.x0 - 2 - k, y, AXIS);
        }
        let s = f.y.label(t);
        let lx = a.x0 - 1 - TICK_LEN as i64 - (PAD / 2) as i64 - text_width(&s, TEXT) as i64;
        draw_text(
            &mut img,
            lx.max(0) as u32,
            (y - th / 2).max(0) as u32,
            &s,
            TEXT,
            INK,
        );
    }
    // title: shrink, then cut, to fit the width
    let avail = w.saturating_sub(2 * PAD);
    let scale = if text_width(title, TEXT) <= avail {
        TEXT
    } else {
        1
    };
    let title = fit_text(title, avail, scale);
    let tx = (w.saturating_sub(text_width(&title, scale))) / 2;
    draw_text(&mut img, tx, PAD, &title, scale, INK);
    let plot_w = (a.x1 - a.x0) as u32;
    let xl = fit_text(x_label, w.saturating_sub(2 * PAD), TEXT);
    let xl_x = (a.x0 + (plot_w as i64 - text_width(&xl, TEXT) as i64) / 2).max(0);
    let xl_y = h.saturating_sub(PAD + text_height(TEXT));
    draw_text(&mut img, xl_x as u32, xl_y, &xl, TEXT, INK);
    let plot_h = (a.y1 - a.y0) as u32;
    let yl = fit_text(y_label, h.saturating_sub(2 * PAD), TEXT);
    let yl_y = (a.y0 + (plot_h as i64 - text_width(&yl, TEXT) as i64) / 2).max(0);
    // next to the tick labels (on a square plot the area is centred, so not at the edge)
    let yl_x =
        a.x0 - 1 - (TICK_LEN + PAD / 2 + max_label_width(&f.y) + PAD + text_height(TEXT)) as i64;
    draw_text_vertical(&mut img, yl_x.max(0) as u32, yl_y as u32, &yl, TEXT, INK);
    img
}

fn draw_no_data(img: &mut RgbImage, f: &Frame, msg: &str) {
    let a = f.area;
    let x = a.x0 + ((a.x1 - a.x0) - text_width(msg, TEXT) as i64) / 2;
    let y = a.y0 + ((a.y1 - a.y0) - text_height(TEXT) as i64) / 2;
    draw_text(img, x.max(0) as u32, y.max(0) as u32, msg, TEXT, MUTED);
}

/// How a legend entry shows its colour.
#[derive(Clone, Copy, PartialEq)]
enum Swatch {
    Line,
    Dashed,
}

/// A legend box in whichever corner of the plot area covers the fewest data points.
fn draw_legend(
    img: &mut RgbImage,
    f: &Frame,
    entries: &[(String, Rgb<u8>, Swatch)],
    data: &[(f64, f64)],
) {
    if entries.is_empty() {
        return;
    }
    let a = f.area;
    let row = text_height(TEXT) as i64 + 6;
    let swatch = 24i64;
    let max_text = ((a.x1 - a.x0) / 2).max(20) as u32;
    let labels: Vec<String> = entries
        .iter()
        .map(|e| fit_text(&e.0, max_text, TEXT))
        .collect();
    let shown = (((a.y1 - a.y0 - 16) / row).max(1) as usize).min(entries.len());
    let tw = labels[..shown]
        .iter()
        .map(|l| text_width(l, TEXT))
        .max()
        .unwrap_or(0) as i64;
    let (bw, bh) = (8 + swatch + 8 + tw + 8, 6 + shown as i64 * row + 2);
    let inset = 8;
    let corners = [
        (a.x1 - inset - bw, a.y0 + inset),
        (a.x0 + inset, a.y0 + inset),
        (a.x1 - inset - bw, a.y1 - inset - bh),
        (a.x0 + inset, a.y1 - inset - bh),
    ];
    let pts: Vec<(f64, f64)> = data.iter().map(|&p| f.to_px(p)).collect();
    let covered = |&(x, y): &(i64, i64)| {
        pts.iter()
            .filter(|p| {
                p.0 >= x as f64 && p.0 < (x + bw) as f64 && p.1 >= y as f64 && p.1 < (y + bh) as f64
            })
            .count()
    };
    // first corner wins ties: top-right is where curves that fall over time leave room
    let (bx, by) = corners
        .iter()
        .copied()
        .min_by_key(|c| covered(c))
        .unwrap_or(corners[0]);
    let r = Rect {
        x0: bx,
        y0: by,
        x1: bx + bw,
        y1: by + bh,
    };
    fill_rect(img, r, WHITE);
    outline(img, r, MUTED);
    for (i, ((_, c, sw), label)) in entries.iter().zip(&labels).take(shown).enumerate() {
        let y = by + 6 + i as i64 * row;
        let mid = (y + text_height(TEXT) as i64 / 2) as f64;
        let dash = (*sw == Swatch::Dashed).then_some((5, 3));
        line(
            img,
            r,
            ((bx + 8) as f64, mid),
            ((bx + 8 + swatch) as f64, mid),
            1,
            *c,
            dash,
        );
        draw_text(
            img,
            (bx + 8 + swatch + 8) as u32,
            y.max(0) as u32,
            label,
            TEXT,
            INK,
        );
    }
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

fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A line chart of one or more series (a legend when there are several); `log_y` for losses
/// (ticks at powers of ten; points with y ≤ 0 are skipped).
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
) -> (RgbImage, Frame) {
    let runs: Vec<Vec<Vec<(f64, f64)>>> = series.iter().map(|s| runs(&s.points, log_y)).collect();
    let all: Vec<(f64, f64)> = runs.iter().flatten().flatten().copied().collect();
    let xr = extent(all.iter().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let yr = extent(all.iter().map(|p| p.1));
    let ys = match (log_y, yr) {
        (true, Some((lo, hi))) => Scale::Log { lo, hi },
        (true, None) => Scale::Log { lo: 1.0, hi: 10.0 },
        (false, r) => {
            let (lo, hi) = r.unwrap_or((0.0, 1.0));
            Scale::Linear {
                lo,
                hi,
                integer: false,
            }
        }
    };
    let xs = Scale::Linear {
        lo: xr.0,
        hi: xr.1,
        integer: false,
    };
    let f = layout(WIDTH, HEIGHT, y_label, xs, ys, false);
    let mut img = draw_frame(&f, WIDTH, HEIGHT, title, x_label, y_label);
    if all.is_empty() {
        let msg = if log_y && series.iter().any(|s| !s.points.is_empty()) {
            "no data > 0 for a log scale"
        } else {
            "no data"
        };
        draw_no_data(&mut img, &f, msg);
        return (img, f);
    }
    for (i, rs) in runs.iter().enumerate() {
        let c = series_color(i);
        let n: usize = rs.iter().map(Vec::len).sum();
        for run in rs {
            for w in run.windows(2) {
                line(&mut img, f.area, f.to_px(w[0]), f.to_px(w[1]), 1, c, None);
            }
            // markers when points are few enough to tell apart; a lone point always gets one
            if n <= 40 || run.len() == 1 {
                for &p in run {
                    let (x, y) = f.to_px(p);
                    disc(&mut img, f.area, x, y, 3, c);
                }
            }
        }
    }
    if series.len() > 1 {
        let entries: Vec<(String, Rgb<u8>, Swatch)> = series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let l = if s.label.is_empty() {
                    format!("series {}", i + 1)
                } else {
                    s.label.clone()
                };
                (l, series_color(i), Swatch::Line)
            })
            .collect();
        draw_legend(&mut img, &f, &entries, &all);
    }
    (img, f)
}

/// A scatter plot; with `diagonal` the axes share one range, the plot area is square and the
/// line y = x is drawn (predicted against true counts: points on it are exact).
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
) -> (RgbImage, Frame) {
    let pts: Vec<(f64, f64)> = runs(points, false).into_iter().flatten().collect();
    let xr = extent(pts.iter().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let yr = extent(pts.iter().map(|p| p.1)).unwrap_or((0.0, 1.0));
    let (xr, yr) = if diagonal {
        let both = (xr.0.min(yr.0), xr.1.max(yr.1));
        (both, both)
    } else {
        (xr, yr)
    };
    let lin = |(lo, hi): (f64, f64)| Scale::Linear {
        lo,
        hi,
        integer: false,
    };
    let f = layout(WIDTH, HEIGHT, y_label, lin(xr), lin(yr), diagonal);
    let mut img = draw_frame(&f, WIDTH, HEIGHT, title, x_label, y_label);
    if diagonal {
        let (lo, hi) = (f.x.lo, f.x.hi);
        line(
            &mut img,
            f.area,
            f.to_px((lo, lo)),
            f.to_px((hi, hi)),
            0,
            MUTED,
            Some((6, 4)),
        );
    }
    if pts.is_empty() {
        draw_no_data(&mut img, &f, "no data");
        return (img, f);
    }
    for &p in &pts {
        let (x, y) = f.to_px(p);
        disc(&mut img, f.area, x, y, 3, PALETTE[0]);
    }
    if diagonal {
        draw_legend(
            &mut img,
            &f,
            &[("y = x".into(), MUTED, Swatch::Dashed)],
            &pts,
        );
    }
    (img, f)
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

/// A histogram of the finite `values` in `bins` equal bins.
pub fn histogram(title: &str, x_label: &str, values: &[f64], bins: usize) -> RgbImage {
    histogram_framed(title, x_label, values, bins).0
}

fn histogram_framed(title: &str, x_label: &str, values: &[f64], bins: usize) -> (RgbImage, Frame) {
    let Some((lo, hi, counts)) = histogram_counts(values, bins) else {
        let f = layout(
            WIDTH,
            HEIGHT,
            "count",
            Scale::Linear {
                lo: 0.0,
                hi: 1.0,
                integer: false,
            },
            Scale::Linear {
                lo: 0.0,
                hi: 1.0,
                integer: true,
            },
            false,
        );
        let mut img = draw_frame(&f, WIDTH, HEIGHT, title, x_label, "count");
        draw_no_data(&mut img, &f, "no data");
        return (img, f);
    };
    let top = counts.iter().copied().max().unwrap_or(0) as f64;
    let f = layout(
        WIDTH,
        HEIGHT,
        "count",
        Scale::Tight { lo, hi },
        Scale::Linear {
            lo: 0.0,
            hi: top,
            integer: true,
        },
        false,
    );
    let mut img = draw_frame(&f, WIDTH, HEIGHT, title, x_label, "count");
    let width = (hi - lo) / counts.len() as f64;
    let base = f.py(0.0).round() as i64;
    for (b, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let x0 = f.px(lo + b as f64 * width).round() as i64;
        let x1 = f.px(lo + (b + 1) as f64 * width).round() as i64;
        // a one-pixel gap keeps neighbouring bars apart when they are wide enough
        let gap = if x1 - x0 >= 4 { 1 } else { 0 };
        let y = f.py(c as f64).round() as i64;
        let bar = Rect {
            x0,
            y0: y,
            x1: (x1 - gap).max(x0 + 1),
            y1: base + 1,
        };
        fill_rect(&mut img, bar, PALETTE[0]);
    }
    (img, f)
}

/// Several figures in one image, top to bottom, each centred horizontally on white.
/// No images gives a blank default-size canvas that says "no data".
pub fn stack_vertical(images: &[RgbImage]) -> RgbImage {
    let w = images.iter().map(|i| i.width()).max().unwrap_or(0);
    let h = images
        .iter()
        .fold(0u32, |s, i| s.saturating_add(i.height()));
    if w == 0 || h == 0 {
        let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
        let msg = "no data";
        let x = (WIDTH - text_width(msg, TEXT)) / 2;
        draw_text(&mut img, x, HEIGHT / 2, msg, TEXT, MUTED);
        return img;
    }
    let mut out = RgbImage::from_pixel(w, h, WHITE);
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

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-9 * y.abs().max(1.0))
    }

    fn count_color(img: &RgbImage, c: Rgb<u8>) -> usize {
        img.pixels().filter(|p| **p == c).count()
    }

    fn pixel_at(img: &RgbImage, (x, y): (f64, f64)) -> Rgb<u8> {
        *img.get_pixel(x.round() as u32, y.round() as u32)
    }

    #[test]
    fn nice_steps_are_1_2_5_times_powers_of_ten() {
        for (raw, want) in [
            (0.3, 0.5),
            (1.0, 1.0),
            (1.5, 2.0),
            (2.0, 2.0),
            (7.0, 10.0),
            (0.01, 0.01),
            (0.011, 0.02),
            (1234.0, 2000.0),
            (-3.0, 5.0),
            (0.0, 1.0),
            (f64::NAN, 1.0),
        ] {
            let got = nice_step(raw);
            assert!((got - want).abs() <= 1e-12 * want, "{raw}: {got} != {want}");
        }
    }

    #[test]
    fn nice_ticks_on_several_ranges() {
        assert!(close(
            &nice_ticks(0.0, 10.0, 5),
            &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        ));
        assert!(close(
            &nice_ticks(0.13, 0.87, 5),
            &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        ));
        let t: Vec<f64> = (-2..=7).map(|k| k as f64 * 2.0).collect();
        assert!(close(&nice_ticks(-3.7, 12.2, 8), &t));
        assert!(close(
            &nice_ticks(1e6, 3.3e6, 5),
            &[1e6, 1.5e6, 2e6, 2.5e6, 3e6, 3.5e6]
        ));
        assert!(close(
            &nice_ticks(-0.004, -0.001, 3),
            &[-0.004, -0.003, -0.002, -0.001]
        ));
        // degenerate ranges are padded around the value; non-finite ones become [0, 1]
        let one = Axis::linear(5.0, 5.0, 5, false);
        assert!(
            one.lo < 5.0 && one.hi > 5.0 && one.ticks.len() >= 3,
            "{one:?}"
        );
        assert!(close(
            &nice_ticks(0.0, 0.0, 4),
            &[-1.0, -0.5, 0.0, 0.5, 1.0]
        ));
        assert!(close(
            &nice_ticks(f64::NAN, 3.0, 5),
            &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        ));
        // extreme ranges stay finite and short
        let wide = nice_ticks(-f64::MAX, f64::MAX, 5);
        assert!(
            wide.len() <= 8 && wide.iter().all(|t| t.is_finite()),
            "{wide:?}"
        );
        // a tight axis keeps the data range and only the ticks inside it
        let t = Axis::tight(-22.3, 20.1, 5);
        assert_eq!((t.lo, t.hi), (-22.3, 20.1));
        assert!(
            close(&t.ticks, &[-20.0, -10.0, 0.0, 10.0, 20.0]),
            "{:?}",
            t.ticks
        );
        assert!(Axis::tight(0.11, 0.19, 1).ticks.len() >= 2);
        // counts: the step never drops below 1
        assert!(close(
            &Axis::linear(0.0, 3.0, 10, true).ticks,
            &[0.0, 1.0, 2.0, 3.0]
        ));
    }

    #[test]
    fn tick_labels_use_the_digits_the_step_needs() {
        let a = Axis::linear(0.13, 0.87, 5, false);
        let labels: Vec<String> = a.ticks.iter().map(|&t| a.label(t)).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let a = Axis::linear(1e6, 3.3e6, 5, false);
        assert_eq!(a.label(1.5e6), "1.5e6");
        assert_eq!(a.label(2e6), "2.0e6");
        let a = Axis::linear(1e-5, 5e-5, 4, false);
        assert_eq!(a.label(3e-5), "3e-5");
        let a = Axis::linear(-3.7, 12.2, 8, false);
        assert_eq!(a.label(-4.0), "-4");
        assert_eq!(a.label(0.0), "0");
    }

    #[test]
    fn log_axis_ticks_at_powers_of_ten() {
        let a = Axis::log10(0.003, 2.5, 8);
        assert!(
            close(&a.ticks, &[1e-3, 1e-2, 1e-1, 1.0, 10.0]),
            "{:?}",
            a.ticks
        );
        let labels: Vec<String> = a.ticks.iter().map(|&t| a.label(t)).collect();
        assert_eq!(labels, ["0.001", "0.01", "0.1", "1", "10"]);
        assert_eq!(a.minor.len(), 4 * 8);
        // a wide range shows every other decade, no minor lines
        let w = Axis::log10(1e-12, 1e3, 8);
        assert_eq!(w.step, 2.0);
        assert!(close(
            &w.ticks,
            &[1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4]
        ));
        assert_eq!(w.label(1e-12), "1e-12");
        assert!(w.minor.is_empty());
        // one value: one decade around it; bad bounds fall back to [1, 10]
        let one = Axis::log10(0.5, 0.5, 8);
        assert!(close(&[one.lo, one.hi], &[0.1, 1.0]));
        let bad = Axis::log10(-1.0, f64::NAN, 8);
        assert!(close(&[bad.lo, bad.hi], &[1.0, 10.0]));
    }

    #[test]
    fn line_chart_draws_curves_where_the_data_says() {
        let diag = Series::new("diagonal", vec![(0.0, 0.0), (10.0, 10.0)]);
        let flat = Series::new("flat", vec![(0.0, 8.0), (10.0, 8.0)]);
        let (img, f) = line_chart_framed("t", "x", "y", &[diag, flat], false);
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        assert_eq!((f.x.lo, f.x.hi, f.y.lo, f.y.hi), (0.0, 10.0, 0.0, 10.0));
        // the frame is where the image has its box: axis colour just outside the plot area
        let mid_y = ((f.area.y0 + f.area.y1) / 2) as u32;
        assert_eq!(*img.get_pixel(f.area.x0 as u32 - 1, mid_y), AXIS);
        assert_eq!(*img.get_pixel(f.area.x1 as u32, mid_y), AXIS);
        for t in 1..=7 {
            let t = t as f64;
            assert_eq!(
                pixel_at(&img, f.to_px((t, t))),
                PALETTE[0],
                "diagonal at {t}"
            );
        }
        for x in [1.0, 3.0, 5.0, 9.5] {
            assert_eq!(pixel_at(&img, f.to_px((x, 8.0))), PALETTE[1], "flat at {x}");
        }
        // away from both curves there is no curve colour
        for p in [(5.0, 2.0), (2.0, 5.0), (8.0, 4.0)] {
            let c = pixel_at(&img, f.to_px(p));
            assert!(c != PALETTE[0] && c != PALETTE[1], "{p:?}: {c:?}");
        }
        // the horizontal curve is 3 px thick: one row above and below, not two
        let (x, y) = f.to_px((5.0, 8.0));
        let (x, y) = (x.round() as u32, y.round() as u32);
        assert_eq!(*img.get_pixel(x, y - 1), PALETTE[1]);
        assert_eq!(*img.get_pixel(x, y + 1), PALETTE[1]);
        assert_ne!(*img.get_pixel(x, y + 2), PALETTE[1]);
    }

    #[test]
    fn log_line_chart_puts_the_geometric_mean_mid_way() {
        let s = Series::new("loss", vec![(0.0, 1e-3), (10.0, 1e-1), (11.0, -1.0)]);
        let (img, f) = line_chart_framed("loss", "epoch", "loss", &[s], true);
        assert!(f.y.log);
        assert!(close(&f.y.ticks, &[1e-3, 1e-2, 1e-1]));
        // a straight line in log space passes 1e-2 at x = 5
        assert_eq!(pixel_at(&img, f.to_px((5.0, 1e-2))), PALETTE[0]);
        // the y ≤ 0 point was skipped, so x stops at 10 (10 is a nice bound of [0, 10])
        assert_eq!(f.x.hi, 10.0);
    }

    #[test]
    fn gaps_break_lines_at_non_finite_points() {
        let r = runs(
            &[
                (0.0, 1.0),
                (1.0, f64::NAN),
                (2.0, 2.0),
                (3.0, 3.0),
                (f64::INFINITY, 1.0),
            ],
            false,
        );
        assert_eq!(r, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
        let r = runs(&[(0.0, 1.0), (1.0, 0.0), (2.0, 2.0)], true);
        assert_eq!(r, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0)]]);
        assert!(runs(&[], false).is_empty());
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
        assert_eq!((f.y.lo, f.y.hi), (0.0, 3.0));
        // bin [1, 2) holds 3: filled just below its top, white just above the top tick
        assert_eq!(pixel_at(&img, f.to_px((1.5, 2.9))), PALETTE[0]);
        assert_eq!(pixel_at(&img, f.to_px((1.5, 0.1))), PALETTE[0]);
        // bin [3, 4] holds 1 (the 4.0): filled at 0.5, not at 1.5
        assert_eq!(pixel_at(&img, f.to_px((3.5, 0.5))), PALETTE[0]);
        assert_ne!(pixel_at(&img, f.to_px((3.5, 1.5))), PALETTE[0]);
        // bin [2, 3) holds only 2.0: 1 bar
        assert_ne!(pixel_at(&img, f.to_px((2.5, 1.5))), PALETTE[0]);
    }

    #[test]
    fn scatter_with_diagonal_shares_a_square_range() {
        let pts = [(1.0, 2.0), (10.0, 8.0), (5.0, 5.0), (f64::NAN, 3.0)];
        let (img, f) = scatter_framed("pred vs true", "true", "predicted", &pts, true);
        assert_eq!(f.x, f.y);
        assert_eq!(f.area.x1 - f.area.x0, f.area.y1 - f.area.y0);
        assert!(f.x.lo <= 1.0 && f.x.hi >= 10.0);
        for p in &pts[..3] {
            assert_eq!(pixel_at(&img, f.to_px(*p)), PALETTE[0], "{p:?}");
        }
        // the dashed diagonal: some muted pixels lie on y = x between the points
        let on_diag = (0..100)
            .map(|i| 6.0 + 3.0 * i as f64 / 100.0)
            .filter(|&t| pixel_at(&img, f.to_px((t, t))) == MUTED)
            .count();
        assert!(on_diag > 30 && on_diag < 100, "{on_diag}");
        let (_, g) = scatter_framed("s", "x", "y", &pts, false);
        assert_ne!(g.x, g.y);
    }

    #[test]
    fn degenerate_inputs_draw_without_panicking() {
        let nan = f64::NAN;
        let say_no_data = |img: &RgbImage| count_color(img, MUTED) > 20;
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
        assert!(f.x.lo < 3.0 && f.x.hi > 3.0 && f.y.lo < 7.0 && f.y.hi > 7.0);
        assert_eq!(pixel_at(&img, f.to_px((3.0, 7.0))), PALETTE[0]);
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
    }

    #[test]
    fn stack_vertical_places_panels_top_to_bottom() {
        let a = RgbImage::from_pixel(4, 2, Rgb([1, 2, 3]));
        let b = RgbImage::from_pixel(2, 3, Rgb([9, 9, 9]));
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
            .map(|e| {
                (
                    e as f64,
                    2.2 * (-(e as f64) / 15.0).exp() + 0.03 + 0.01 * ((e as f64) * 0.7).sin().abs(),
                )
            })
            .collect();
        let mae: Vec<(f64, f64)> = (1..=20)
            .map(|e| (e as f64, 40.0 / (e as f64).sqrt()))
            .collect();
        let loss = line_chart(
            "Counter loss (train / val)",
            "epoch",
            "loss",
            &[Series::new("train", train), Series::new("val", val)],
            true,
        );
        let lin = line_chart(
            "Validation MAE",
            "epoch",
            "MAE [cells]",
            &[Series::new("val MAE", mae)],
            false,
        );
        let mut rng = crate::rng::Rng::new(7);
        let pts: Vec<(f64, f64)> = (0..80)
            .map(|i| {
                let t = 20.0 + 3.0 * i as f64;
                (
                    t,
                    t * (0.9 + 0.2 * rng.uniform() as f64) + 5.0 * (rng.uniform() as f64 - 0.5),
                )
            })
            .collect();
        let sc = scatter(
            "Predicted vs true count (VGG test)",
            "true count",
            "predicted count",
            &pts,
            true,
        );
        let errs: Vec<f64> = pts.iter().map(|(t, p)| p - t).collect();
        let hi = histogram("Count error", "predicted - true [cells]", &errs, 20);
        let none = line_chart("Nothing yet", "epoch", "loss", &[], true);
        let glyphs: String = (32u8..=126).map(|b| b as char).collect();
        let mut font = RgbImage::from_pixel(WIDTH, 100, WHITE);
        for (row, chunk) in glyphs.as_bytes().chunks(32).enumerate() {
            let line = std::str::from_utf8(chunk).unwrap();
            draw_text(&mut font, 10, 10 + 30 * row as u32, line, 3, INK);
        }
        for (name, img) in [
            ("loss_log.png", &loss),
            ("mae.png", &lin),
            ("scatter.png", &sc),
            ("hist.png", &hi),
            ("empty.png", &none),
            ("font.png", &font),
        ] {
            save_png(img, &dir.join(name)).unwrap();
        }
        save_png(&stack_vertical(&[loss, lin, hi]), &dir.join("stack.png")).unwrap();
        assert!(dir.join("stack.png").exists());
    }
}

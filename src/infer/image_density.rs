//! The density map people get (`dcl count --out`: density/NAME.tif), at the image's own size
//! (so it lies over the image in napari or Fiji) and summing to the image's count: the
//! localizer's density when there is one (its network-pixel map resampled bilinearly), else the
//! counter's coarse map (each 8x8 block of network pixels spread evenly over the image pixels it
//! covers); either is then scaled so that it sums to the count of counts.csv (the counter's: the
//! localizer says where the cells are, the counter how many). Cells per image pixel.
//!
//! It is made row by row, so that a whole-slide image's map, streamed, is never held whole
//! (`cli::count_scale`): `Resize` takes the localizer's rows as they become final and keeps two,
//! `Spread` makes any row from the coarse map, and `ToCount` sums rows in the order written.
//! `image_density`, for images held whole, runs the same code, so both paths give the same
//! floats.
use crate::error::Result;
use crate::infer::{Map, Prediction};
use crate::nn::Counter;

/// The bilinear resampling of a `src_w` x `src_h` map to `w` x `h` (pixel centres aligned, edges
/// clamped), fed one source row at a time.
pub struct Resize {
    src_h: usize,
    h: usize,
    sy: f64,
    /// Per output column: left and right source columns and the right one's weight.
    xs: Vec<(usize, usize, f32)>,
    /// The last two source rows pushed (`prev` is row `pushed - 2`).
    prev: Vec<f32>,
    cur: Vec<f32>,
    pushed: usize,
    /// The next output row.
    next: usize,
    out: Vec<f32>,
}

/// Left source index and weight of the next one, for output index `i` at source pixels per
/// output pixel `s`.
fn source_of(i: usize, s: f64) -> (usize, f32) {
    let f = ((i as f64 + 0.5) * s - 0.5).max(0.0);
    (f.floor() as usize, (f - f.floor()) as f32)
}

impl Resize {
    pub fn new(src_w: usize, src_h: usize, w: usize, h: usize) -> Resize {
        let sx = src_w as f64 / w as f64;
        let xs = (0..w)
            .map(|x| {
                let (x0, tx) = source_of(x, sx);
                let x0 = x0.min(src_w - 1);
                (x0, (x0 + 1).min(src_w - 1), tx)
            })
            .collect();
        Resize {
            src_h,
            h,
            sy: src_h as f64 / h as f64,
            xs,
            prev: Vec::new(),
            cur: Vec::new(),
            pushed: 0,
            next: 0,
            out: vec![0.0; w],
        }
    }

    /// The two source rows output row `y` blends and the second's weight.
    fn rows_of(&self, y: usize) -> (usize, usize, f32) {
        let (y0, ty) = source_of(y, self.sy);
        let y0 = y0.min(self.src_h - 1);
        (y0, (y0 + 1).min(self.src_h - 1), ty)
    }

    /// Takes the next source row and hands `emit` every output row it completes, in order.
    pub fn push(&mut self, row: &[f32], emit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        std::mem::swap(&mut self.prev, &mut self.cur);
        self.cur.clear();
        self.cur.extend_from_slice(row);
        self.pushed += 1;
        while self.next < self.h {
            let (y0, y1, ty) = self.rows_of(self.next);
            if y1 >= self.pushed {
                break;
            }
            // y1 is the last row pushed: y0 is it or the one before
            let a = if y0 + 1 == self.pushed {
                &self.cur
            } else {
                &self.prev
            };
            let b = &self.cur;
            for (o, &(x0, x1, tx)) in self.out.iter_mut().zip(&self.xs) {
                let top = a[x0] * (1.0 - tx) + a[x1] * tx;
                let bottom = b[x0] * (1.0 - tx) + b[x1] * tx;
                *o = top * (1.0 - ty) + bottom * ty;
            }
            emit(&self.out)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Whether every output row has been emitted.
    pub fn done(&self) -> bool {
        self.next == self.h
    }
}

/// The counter's coarse map spread over the image: each image pixel takes the value of the
/// coarse pixel its centre falls in.
pub struct Spread<'a> {
    coarse: &'a Map,
    /// Image pixels per coarse pixel.
    block: f64,
    cols: Vec<usize>,
}

impl<'a> Spread<'a> {
    /// For an image of width `w` counted at `scale` network pixels per image pixel.
    pub fn new(coarse: &'a Map, scale: f32, w: usize) -> Spread<'a> {
        let block = Counter::STRIDE as f64 / scale as f64;
        let cols = (0..w)
            .map(|x| (((x as f64 + 0.5) / block) as usize).min(coarse.width - 1))
            .collect();
        Spread {
            coarse,
            block,
            cols,
        }
    }

    /// Image row `y`, into `out` (the image's width).
    pub fn row(&self, y: usize, out: &mut [f32]) {
        let c = self.coarse;
        let cy = (((y as f64 + 0.5) / self.block) as usize).min(c.height - 1);
        let src = &c.data[cy * c.width..(cy + 1) * c.width];
        for (o, &cx) in out.iter_mut().zip(&self.cols) {
            *o = src[cx];
        }
    }
}

/// The sum of a map's rows, added in the order they are written, and the factor that scales the
/// map to the count.
#[derive(Clone, Copy, Debug, Default)]
pub struct ToCount {
    sum: f64,
}

impl ToCount {
    pub fn add(&mut self, row: &[f32]) {
        for &v in row {
            self.sum += v as f64;
        }
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
    /// What every value is multiplied by so that the map sums to `count`; None (the map is
    /// kept as it is) when it sums to nothing or the count is not a number.
    pub fn factor(&self, count: f64) -> Option<f32> {
        (self.sum > 0.0 && count.is_finite()).then(|| (count / self.sum) as f32)
    }
}

/// Multiplies a row by the factor of `ToCount::factor`.
pub fn scale_row(row: &mut [f32], k: Option<f32>) {
    if let Some(k) = k {
        row.iter_mut().for_each(|v| *v *= k);
    }
}

/// The density map of an image held whole (see the module).
pub fn image_density(p: &Prediction) -> Map {
    let (w, h) = (p.width, p.height);
    let mut out = Map::zeros(w, h);
    let mut to_count = ToCount::default();
    let mut y = 0;
    match &p.density {
        Some(d) => {
            let mut r = Resize::new(d.width, d.height, w, h);
            let mut emit = |row: &[f32]| -> Result<()> {
                out.data[y * w..(y + 1) * w].copy_from_slice(row);
                to_count.add(row);
                y += 1;
                Ok(())
            };
            for src in d.data.chunks_exact(d.width) {
                r.push(src, &mut emit)
                    .expect("rows into memory cannot fail");
            }
            debug_assert!(r.done());
        }
        None => {
            let s = Spread::new(&p.coarse, p.scale, w);
            for (y, row) in out.data.chunks_exact_mut(w).enumerate() {
                s.row(y, row);
                to_count.add(row);
            }
        }
    }
    scale_row(&mut out.data, to_count.factor(p.count));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The density map written per image has the image's size and sums to its count, with a
    /// localizer (its map resampled) and without (the counter's blocks spread out).
    #[test]
    fn density_maps_have_the_image_size_and_sum_to_the_count() {
        let mut coarse = Map::zeros(4, 3);
        coarse.data[0] = 2.0;
        coarse.data[5] = 1.0;
        let mut p = Prediction {
            count: 3.0,
            width: 50,
            height: 30,
            scale: 0.5,
            coarse,
            density: None,
        };
        let d = image_density(&p);
        assert_eq!((d.width, d.height), (50, 30));
        assert!((d.sum() - 3.0).abs() < 1e-4, "{}", d.sum());
        // block (0, 0) covers image pixels 0..16: its mass lies there
        assert!(d.data[0] > 0.0 && d.data[20] == 0.0);
        let mut loc = Map::zeros(25, 15);
        loc.data[7 * 25 + 12] = 2.5;
        p.density = Some(loc);
        let d = image_density(&p);
        assert_eq!((d.width, d.height), (50, 30));
        assert!((d.sum() - 3.0).abs() < 1e-4, "{}", d.sum());
        let peak = (0..d.data.len())
            .max_by(|&a, &b| d.data[a].total_cmp(&d.data[b]))
            .unwrap();
        assert!(
            (peak % 50).abs_diff(25) <= 1 && (peak / 50).abs_diff(15) <= 1,
            "{peak}"
        );
    }

    /// The row-by-row resampling is the plain bilinear formula (the reference: every pixel from
    /// the whole map), shrinking and enlarging, on odd sizes and random values.
    #[test]
    fn resize_by_rows_is_the_whole_map_formula() {
        let mut seed = 12345u64;
        let mut rand = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        for (sw, sh, w, h) in [(7, 5, 13, 11), (13, 11, 7, 5), (9, 9, 9, 9), (1, 3, 4, 2)] {
            let src: Vec<f32> = (0..sw * sh).map(|_| rand()).collect();
            let (sx, sy) = (sw as f64 / w as f64, sh as f64 / h as f64);
            let at = |x: usize, y: usize| src[y.min(sh - 1) * sw + x.min(sw - 1)];
            let mut want = Vec::new();
            for y in 0..h {
                let fy = ((y as f64 + 0.5) * sy - 0.5).max(0.0);
                let (y0, ty) = (fy.floor() as usize, (fy - fy.floor()) as f32);
                for x in 0..w {
                    let fx = ((x as f64 + 0.5) * sx - 0.5).max(0.0);
                    let (x0, tx) = (fx.floor() as usize, (fx - fx.floor()) as f32);
                    let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1, y0) * tx;
                    let bottom = at(x0, y0 + 1) * (1.0 - tx) + at(x0 + 1, y0 + 1) * tx;
                    want.push(top * (1.0 - ty) + bottom * ty);
                }
            }
            let mut got = Vec::new();
            let mut r = Resize::new(sw, sh, w, h);
            for row in src.chunks_exact(sw) {
                r.push(row, &mut |o: &[f32]| {
                    got.extend_from_slice(o);
                    Ok(())
                })
                .unwrap();
            }
            assert!(r.done(), "{sw}x{sh} -> {w}x{h}");
            assert_eq!(got, want, "{sw}x{sh} -> {w}x{h}");
        }
    }
}

//! A source of rows resized by the checkpoint's `input_scale`, row by row, with exactly the
//! arithmetic of `image`'s `resize_exact(.., FilterType::Triangle)` (the in-memory path): a
//! vertical pass into f32, then a horizontal pass rounded back to the pixel type, with the same
//! windows, weights and order of additions. So a streamed image is resized to the same pixels
//! as one held whole, keeping only the input rows one output row needs.
use image::ColorType;

use crate::data::stream::{Band, RowSource};

/// Per output position: the first input index and the normalised weights, as `image` computes
/// them for a triangle filter (support 1, widened by the ratio when shrinking).
fn windows(len_in: u32, len_out: u32) -> Vec<(u32, Vec<f32>)> {
    let ratio = len_in as f32 / len_out as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let support = 1.0 * sratio;
    let kernel = |x: f32| {
        if x.abs() < 1.0 {
            1.0 - x.abs()
        } else {
            0.0
        }
    };
    let clamp = |a: i64, lo: i64, hi: i64| {
        if a < lo {
            lo
        } else if a > hi {
            hi
        } else {
            a
        }
    };
    (0..len_out)
        .map(|o| {
            let input = (o as f32 + 0.5) * ratio;
            let left = clamp((input - support).floor() as i64, 0, len_in as i64 - 1) as u32;
            let right = clamp(
                (input + support).ceil() as i64,
                left as i64 + 1,
                len_in as i64,
            ) as u32;
            let input = input - 0.5;
            let mut ws = Vec::with_capacity((right - left) as usize);
            let mut sum = 0.0;
            for i in left..right {
                let w = kernel((i as f32 - input) / sratio);
                ws.push(w);
                sum += w;
            }
            for w in ws.iter_mut() {
                *w /= sum;
            }
            (left, ws)
        })
        .collect()
}

/// Rows of `src` resized to `width` x `height`.
pub struct Resampled {
    src: Box<dyn RowSource>,
    band: Band,
    width: u32,
    height: u32,
    channels: usize,
    sixteen: bool,
    rows: Vec<(u32, Vec<f32>)>,
    cols: Vec<(u32, Vec<f32>)>,
    next: u32,
}

impl Resampled {
    pub fn new(src: Box<dyn RowSource>, width: u32, height: u32) -> Resampled {
        let (w, h, color) = (src.width(), src.height(), src.color());
        Resampled {
            band: Band::new(w, h, color),
            width,
            height,
            channels: color.channel_count() as usize,
            sixteen: color.bytes_per_pixel() / color.channel_count() == 2,
            rows: windows(h, height),
            cols: windows(w, width),
            next: 0,
            src,
        }
    }

    /// Input sample `i` of a raw row, as f32.
    fn sample(&self, row: &[u8], i: usize) -> f32 {
        if self.sixteen {
            u16::from_ne_bytes([row[2 * i], row[2 * i + 1]]) as f32
        } else {
            row[i] as f32
        }
    }
}

impl RowSource for Resampled {
    fn width(&self) -> u32 {
        self.width
    }
    fn height(&self) -> u32 {
        self.height
    }
    fn color(&self) -> ColorType {
        self.src.color()
    }
    fn read_rows(&mut self, n: u32, out: &mut Vec<u8>) -> Result<u32, String> {
        let want = n.min(self.height - self.next);
        let (ch, win) = (self.channels, self.src.width() as usize);
        let max = if self.sixteen { 65535.0 } else { 255.0 };
        let mut vert = vec![0f32; win * ch];
        for _ in 0..want {
            let (left, ws) = self.rows[self.next as usize].clone();
            self.band.drop_before(left);
            self.band
                .fill_to(self.src.as_mut(), left + ws.len() as u32)?;
            // vertical: every input column, the window's rows in order
            vert.iter_mut().for_each(|v| *v = 0.0);
            for (i, w) in ws.iter().enumerate() {
                let row = self.band.row(left + i as u32);
                for (k, v) in vert.iter_mut().enumerate() {
                    *v += self.sample(row, k) * w;
                }
            }
            // horizontal: each output pixel, clamped and rounded to the pixel type
            for (x0, wx) in &self.cols {
                let mut t = [0f32; 4];
                for (i, w) in wx.iter().enumerate() {
                    let px = (*x0 as usize + i) * ch;
                    for c in 0..ch {
                        t[c] += vert[px + c] * w;
                    }
                }
                for &v in &t[..ch] {
                    let v = if v < 0.0 {
                        0.0
                    } else if v > max {
                        max
                    } else {
                        v
                    };
                    let v = v.round();
                    if self.sixteen {
                        out.extend_from_slice(&(v as u16).to_ne_bytes());
                    } else {
                        out.push(v as u8);
                    }
                }
            }
            self.next += 1;
        }
        Ok(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::stream::image_from_bytes;
    use image::DynamicImage;

    /// An image held in memory as a source of rows.
    struct Mem(DynamicImage, u32);
    impl RowSource for Mem {
        fn width(&self) -> u32 {
            self.0.width()
        }
        fn height(&self) -> u32 {
            self.0.height()
        }
        fn color(&self) -> ColorType {
            self.0.color()
        }
        fn read_rows(&mut self, n: u32, out: &mut Vec<u8>) -> Result<u32, String> {
            let n = n.min(self.0.height() - self.1);
            let rb = self.0.width() as usize * self.0.color().bytes_per_pixel() as usize;
            let b = self.0.as_bytes();
            out.extend_from_slice(&b[self.1 as usize * rb..(self.1 + n) as usize * rb]);
            self.1 += n;
            Ok(n)
        }
    }

    /// Bit for bit `resize_exact(.., Triangle)`, shrinking and growing, 8 and 16 bits.
    #[test]
    fn rows_resample_as_image_resize_exact() {
        let rgb = image::RgbImage::from_fn(97, 61, |x, y| {
            image::Rgb([
                (x * 13 % 256) as u8,
                (y * 29 % 256) as u8,
                ((x ^ y) * 7 % 256) as u8,
            ])
        });
        let grey16 = image::ImageBuffer::from_fn(53, 80, |x, y| {
            image::Luma([((x * 977 + y * 4111) % 65536) as u16])
        });
        let la = image::ImageBuffer::from_fn(40, 33, |x, y| {
            image::LumaA([(x * 6) as u8, (y * 7) as u8])
        });
        for img in [
            DynamicImage::ImageRgb8(rgb),
            DynamicImage::ImageLuma16(grey16),
            DynamicImage::ImageLumaA8(la),
        ] {
            for s in [0.37f32, 0.5, 0.83, 1.6, 2.0, 3.3] {
                let (w, h) = (
                    ((img.width() as f32 * s).round() as u32).max(1),
                    ((img.height() as f32 * s).round() as u32).max(1),
                );
                let want = img.resize_exact(w, h, image::imageops::FilterType::Triangle);
                let mut r = Resampled::new(Box::new(Mem(img.clone(), 0)), w, h);
                let mut bytes = Vec::new();
                // in uneven pieces
                while r.read_rows(7, &mut bytes).unwrap() > 0 {}
                let got = image_from_bytes(img.color(), w, h, bytes);
                assert_eq!(got, want, "{:?} x{s}", img.color());
            }
        }
    }
}

//! Overlays for people: the image with each located cell ringed and the count written in the
//! corner (`report::text`: the figures' embedded font, so no font files are needed).
use image::{Rgb, RgbImage};

use crate::infer::points::Point;

/// Writes `text` at (x, y), `size` pixels high, on a translucent dark box so it reads on any
/// image; clipped to the image.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, size: u32, color: Rgb<u8>) {
    let r = super::text::rasterise(text, size as f64);
    let (w, h) = img.dimensions();
    let pad = (size / 5).max(2);
    let (bw, bh) = (r.width as u32 + 2 * pad, r.height as u32 + 2 * pad);
    for py in y..y.saturating_add(bh).min(h) {
        for px in x..x.saturating_add(bw).min(w) {
            let p = img.get_pixel_mut(px, py);
            p.0 = p.0.map(|v| (v as f32 * 0.4) as u8);
        }
    }
    for (gx, gy, c) in r.pixels {
        let (px, py) = (
            x as i64 + pad as i64 + gx as i64,
            y as i64 + pad as i64 + gy as i64,
        );
        if px >= 0 && py >= 0 && (px as u32) < w && (py as u32) < h {
            let p = img.get_pixel_mut(px as u32, py as u32);
            for k in 0..3 {
                p.0[k] = (p.0[k] as f32 * (1.0 - c) + color.0[k] as f32 * c).round() as u8;
            }
        }
    }
}

/// Rings each point (radius `r` pixels) in `color`.
pub fn draw_points(img: &mut RgbImage, points: &[Point], r: f32, color: Rgb<u8>) {
    let (w, h) = img.dimensions();
    let steps = (r * 8.0).ceil().max(8.0) as usize;
    for p in points {
        for k in 0..steps {
            let a = 2.0 * std::f32::consts::PI * k as f32 / steps as f32;
            // points are continuous coordinates: pixel (c, r) has its centre at (c + 0.5, r + 0.5)
            let (x, y) = (
                (p.x - 0.5 + r * a.cos()).round(),
                (p.y - 0.5 + r * a.sin()).round(),
            );
            if x >= 0.0 && y >= 0.0 && (x as u32) < w && (y as u32) < h {
                img.put_pixel(x as u32, y as u32, color);
            }
        }
    }
}

/// The overlay of an image: points ringed, "count N" in the top-left corner.
pub fn overlay(img: &image::DynamicImage, points: Option<&[Point]>, count: f64) -> RgbImage {
    overlay_text(img, points, &format!("count {count:.1}"))
}

/// The overlay of an image with `text` in the top-left corner.
pub fn overlay_text(img: &image::DynamicImage, points: Option<&[Point]>, text: &str) -> RgbImage {
    let mut rgb = img.to_rgb8();
    let side = rgb.width().min(rgb.height());
    if let Some(p) = points {
        draw_points(
            &mut rgb,
            p,
            (side as f32 / 100.0).clamp(2.5, 8.0),
            Rgb([255, 230, 0]),
        );
    }
    let size = (side / 20).clamp(12, 56);
    draw_text(&mut rgb, 2, 2, text, size, Rgb([255, 255, 255]));
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn overlay_marks_points_and_text() {
        let img = image::DynamicImage::ImageRgb8(RgbImage::new(64, 48));
        // the centre of pixel (40, 30)
        let pts = [Point {
            x: 40.5,
            y: 30.5,
            score: 1.0,
        }];
        let o = overlay(&img, Some(&pts), 12.0);
        assert_eq!(o.dimensions(), (64, 48));
        // the ring around (40, 30) is drawn in yellow, its centre is untouched
        assert_eq!(o.get_pixel(40 + 3, 30).0, [255, 230, 0]);
        assert_eq!(o.get_pixel(40, 30).0, [0, 0, 0]);
        // the text box holds bright text pixels
        let white = (0..40)
            .flat_map(|x| (0..16).map(move |y| (x, y)))
            .filter(|&(x, y)| o.get_pixel(x, y).0.iter().all(|&v| v > 200))
            .count();
        assert!(white > 10, "{white}");
    }
}

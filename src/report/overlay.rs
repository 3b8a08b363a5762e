//! Overlays for people: the image with each located cell ringed and the count written in the
//! corner (a tiny built-in bitmap font, so no font files are needed).
use image::{Rgb, RgbImage};

use crate::infer::points::Point;

/// 5x7 glyphs, one row per byte (low 5 bits, leftmost pixel = bit 4).
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        's' => [0, 0, 15, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        _ => [0; 7],
    }
}

/// Writes `text` at (x, y) with each font pixel drawn as a `scale`x`scale` block, on a dark box
/// so it reads on any image.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: Rgb<u8>) {
    let (w, h) = img.dimensions();
    let box_w = (text.chars().count() as u32 * 6 + 1) * scale;
    for by in y..(y + 9 * scale).min(h) {
        for bx in x..(x + box_w).min(w) {
            let p = img.get_pixel_mut(bx, by);
            p.0 = p.0.map(|v| v / 4);
        }
    }
    for (i, c) in text.chars().enumerate() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits >> (4 - col) & 1 == 1 {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let px = x + (1 + i as u32 * 6 + col) * scale + sx;
                            let py = y + (1 + row as u32) * scale + sy;
                            if px < w && py < h {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
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
            let (x, y) = ((p.x + r * a.cos()).round(), (p.y + r * a.sin()).round());
            if x >= 0.0 && y >= 0.0 && (x as u32) < w && (y as u32) < h {
                img.put_pixel(x as u32, y as u32, color);
            }
        }
    }
}

/// The overlay of an image: points ringed, "count N" in the top-left corner.
pub fn overlay(img: &image::DynamicImage, points: Option<&[Point]>, count: f64) -> RgbImage {
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
    let scale = (side / 200).clamp(1, 6);
    let text = format!("count {count:.1}");
    draw_text(&mut rgb, 2, 2, &text, scale, Rgb([255, 255, 255]));
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn overlay_marks_points_and_text() {
        let img = image::DynamicImage::ImageRgb8(RgbImage::new(64, 48));
        let pts = [Point {
            x: 40.0,
            y: 30.0,
            score: 1.0,
        }];
        let o = overlay(&img, Some(&pts), 12.0);
        assert_eq!(o.dimensions(), (64, 48));
        // the ring around (40, 30) is drawn in yellow, its centre is untouched
        assert_eq!(o.get_pixel(40 + 3, 30).0, [255, 230, 0]);
        assert_eq!(o.get_pixel(40, 30).0, [0, 0, 0]);
        // the text box holds white pixels
        let white = (0..20)
            .flat_map(|x| (0..10).map(move |y| (x, y)))
            .filter(|&(x, y)| o.get_pixel(x, y).0 == [255, 255, 255])
            .count();
        assert!(white > 10, "{white}");
    }
}

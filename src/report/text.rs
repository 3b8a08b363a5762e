//! Text for figures and overlays: DejaVu Sans (embedded by the `dejavu` crate, so no system
//! font is needed) laid out and rasterised by `ab_glyph`, each glyph at its advance plus its
//! side bearing and kerning. (`plotters` renders ab_glyph text itself but drops the side
//! bearings, which spaces digits and letters unevenly; the figures' backend calls this
//! instead.)
use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};

/// The embedded font.
pub fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(dejavu::sans::regular()).expect("DejaVu Sans is a valid font")
    })
}

/// A line of text as coverage values: pixels (x, y, coverage in [0, 1]) in a `width` x
/// `height` box whose top-left corner is (0, 0); `height` spans the font's ascent and descent,
/// so lines of different text align.
#[derive(Clone, Debug, Default)]
pub struct Raster {
    pub width: i32,
    pub height: i32,
    pub pixels: Vec<(i32, i32, f32)>,
}

/// The advance width and line height of `text` at `size` pixels (ascent + descent).
pub fn measure(text: &str, size: f64) -> (i32, i32) {
    let s = font().as_scaled(PxScale::from(size.max(1.0) as f32));
    let (mut caret, mut prev) = (0f32, None);
    for c in text.chars() {
        let id = s.glyph_id(c);
        if let Some(p) = prev {
            caret += s.kern(p, id);
        }
        caret += s.h_advance(id);
        prev = Some(id);
    }
    (
        caret.ceil() as i32,
        (s.ascent() - s.descent()).ceil() as i32,
    )
}

/// `text` rasterised at `size` pixels.
pub fn rasterise(text: &str, size: f64) -> Raster {
    let f = font();
    let s = f.as_scaled(PxScale::from(size.max(1.0) as f32));
    let (mut caret, mut prev) = (0f32, None);
    let mut pixels = Vec::new();
    for c in text.chars() {
        let id = s.glyph_id(c);
        if let Some(p) = prev {
            caret += s.kern(p, id);
        }
        let glyph = id.with_scale_and_position(s.scale(), point(caret, s.ascent()));
        if let Some(outline) = f.outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, cover| {
                if cover > 0.0 {
                    pixels.push((
                        b.min.x as i32 + gx as i32,
                        b.min.y as i32 + gy as i32,
                        cover.min(1.0),
                    ));
                }
            });
        }
        caret += s.h_advance(id);
        prev = Some(id);
    }
    Raster {
        width: caret.ceil() as i32,
        height: (s.ascent() - s.descent()).ceil() as i32,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_laid_out_left_to_right_inside_its_box() {
        let r = rasterise("111", 20.0);
        assert_eq!((r.width, r.height), measure("111", 20.0));
        assert!(r.height >= 20 && r.height <= 26, "{}", r.height);
        // three evenly spaced digits: the columns with ink form three runs of equal period
        let mut cols: Vec<i32> = r.pixels.iter().filter(|p| p.2 > 0.5).map(|p| p.0).collect();
        cols.sort();
        cols.dedup();
        let starts: Vec<i32> = cols
            .iter()
            .enumerate()
            .filter(|&(i, &c)| i == 0 || cols[i - 1] != c - 1)
            .map(|(_, &c)| c)
            .collect();
        assert_eq!(starts.len(), 3, "{cols:?}");
        assert_eq!(starts[1] - starts[0], starts[2] - starts[1]);
        assert!(r
            .pixels
            .iter()
            .all(|&(x, y, _)| x >= 0 && y >= 0 && x <= r.width && y <= r.height));
        assert!(rasterise("", 12.0).pixels.is_empty());
    }
}

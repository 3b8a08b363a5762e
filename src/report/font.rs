//! A built-in 5x7 bitmap font covering printable ASCII (32..=126), so figures and overlays need
//! no font files. Each glyph sits in a 6x7 cell (one blank column between letters); lower-case
//! descenders are squeezed into the 7 rows, as on character LCDs.
use image::{Rgb, RgbImage};

/// Glyph width and height in font pixels, and the horizontal advance per character.
pub const GLYPH_W: u32 = 5;
pub const GLYPH_H: u32 = 7;
pub const ADVANCE: u32 = 6;

/// The glyphs as pictures: 7 rows of 5 pixels separated by spaces, '#' lit, '.' dark, for the
/// characters 32..=126 in order. Kept as art so a wrong pixel can be seen in review.
const ART: [&str; 95] = [
    "..... ..... ..... ..... ..... ..... .....", // ' '
    "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..", // !
    ".#.#. .#.#. .#.#. ..... ..... ..... .....", // "
    ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.", // #
    "..#.. .#### #.#.. .###. ..#.# ####. ..#..", // $
    "##... ##..# ...#. ..#.. .#... #..## ...##", // %
    ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#", // &
    "..#.. ..#.. .#... ..... ..... ..... .....", // '
    "...#. ..#.. .#... .#... .#... ..#.. ...#.", // (
    ".#... ..#.. ...#. ...#. ...#. ..#.. .#...", // )
    "..... ..#.. #.#.# .###. #.#.# ..#.. .....", // *
    "..... ..#.. ..#.. ##### ..#.. ..#.. .....", // +
    "..... ..... ..... ..... .##.. ..#.. .#...", // ,
    "..... ..... ..... ##### ..... ..... .....", // -
    "..... ..... ..... ..... ..... .##.. .##..", // .
    "..... ....# ...#. ..#.. .#... #.... .....", // /
    ".###. #...# #..## #.#.# ##..# #...# .###.", // 0
    "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.", // 1
    ".###. #...# ....# ...#. ..#.. .#... #####", // 2
    "##### ...#. ..#.. ...#. ....# #...# .###.", // 3
    "...#. ..##. .#.#. #..#. ##### ...#. ...#.", // 4
    "##### #.... ####. ....# ....# #...# .###.", // 5
    "..##. .#... #.... ####. #...# #...# .###.", // 6
    "##### ....# ...#. ..#.. .#... .#... .#...", // 7
    ".###. #...# #...# .###. #...# #...# .###.", // 8
    ".###. #...# #...# .#### ....# ...#. .##..", // 9
    "..... .##.. .##.. ..... .##.. .##.. .....", // :
    "..... .##.. .##.. ..... .##.. ..#.. .#...", // ;
    "...#. ..#.. .#... #.... .#... ..#.. ...#.", // <
    "..... ..... ##### ..... ##### ..... .....", // =
    ".#... ..#.. ...#. ....# ...#. ..#.. .#...", // >
    ".###. #...# ....# ...#. ..#.. ..... ..#..", // ?
    ".###. #...# ....# .##.# #.#.# #.#.# .###.", // @
    ".###. #...# #...# #...# ##### #...# #...#", // A
    "####. #...# #...# ####. #...# #...# ####.", // B
    ".###. #...# #.... #.... #.... #...# .###.", // C
    "###.. #..#. #...# #...# #...# #..#. ###..", // D
    "##### #.... #.... ####. #.... #.... #####", // E
    "##### #.... #.... ####. #.... #.... #....", // F
    ".###. #...# #.... #.### #...# #...# .####", // G
    "#...# #...# #...# ##### #...# #...# #...#", // H
    ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.", // I
    "..### ...#. ...#. ...#. ...#. #..#. .##..", // J
    "#...# #..#. #.#.. ##... #.#.. #..#. #...#", // K
    "#.... #.... #.... #.... #.... #.... #####", // L
    "#...# ##.## #.#.# #.#.# #...# #...# #...#", // M
    "#...# #...# ##..# #.#.# #..## #...# #...#", // N
    ".###. #...# #...# #...# #...# #...# .###.", // O
    "####. #...# #...# ####. #.... #.... #....", // P
    ".###. #...# #...# #...# #.#.# #..#. .##.#", // Q
    "####. #...# #...# ####. #.#.. #..#. #...#", // R
    ".#### #.... #.... .###. ....# ....# ####.", // S
    "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..", // T
    "#...# #...# #...# #...# #...# #...# .###.", // U
    "#...# #...# #...# #...# #...# .#.#. ..#..", // V
    "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.", // W
    "#...# #...# .#.#. ..#.. .#.#. #...# #...#", // X
    "#...# #...# #...# .#.#. ..#.. ..#.. ..#..", // Y
    "##### ....# ...#. ..#.. .#... #.... #####", // Z
    ".###. .#... .#... .#... .#... .#... .###.", // [
    "..... #.... .#... ..#.. ...#. ....# .....", // backslash
    ".###. ...#. ...#. ...#. ...#. ...#. .###.", // ]
    "..#.. .#.#. #...# ..... ..... ..... .....", // ^
    "..... ..... ..... ..... ..... ..... #####", // _
    ".#... ..#.. ...#. ..... ..... ..... .....", // `
    "..... ..... .###. ....# .#### #...# .####", // a
    "#.... #.... #.##. ##..# #...# #...# ####.", // b
    "..... ..... .###. #.... #.... #...# .###.", // c
    "....# ....# .##.# #..## #...# #...# .####", // d
    "..... ..... .###. #...# ##### #.... .###.", // e
    "..##. .#..# .#... ###.. .#... .#... .#...", // f
    "..... .#### #...# #...# .#### ....# .###.", // g
    "#.... #.... #.##. ##..# #...# #...# #...#", // h
    "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.", // i
    "...#. ..... ..##. ...#. ...#. #..#. .##..", // j
    "#.... #.... #..#. #.#.. ##... #.#.. #..#.", // k
    ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.", // l
    "..... ..... ##.#. #.#.# #.#.# #...# #...#", // m
    "..... ..... #.##. ##..# #...# #...# #...#", // n
    "..... ..... .###. #...# #...# #...# .###.", // o
    "..... ..... ####. #...# ####. #.... #....", // p
    "..... ..... .##.# #..## .#### ....# ....#", // q
    "..... ..... #.##. ##..# #.... #.... #....", // r
    "..... ..... .###. #.... .###. ....# ####.", // s
    ".#... .#... ###.. .#... .#... .#..# ..##.", // t
    "..... ..... #...# #...# #...# #..## .##.#", // u
    "..... ..... #...# #...# #...# .#.#. ..#..", // v
    "..... ..... #...# #...# #.#.# #.#.# .#.#.", // w
    "..... ..... #...# .#.#. ..#.. .#.#. #...#", // x
    "..... ..... #...# #...# .#### ....# .###.", // y
    "..... ..... ##### ...#. ..#.. .#... #####", // z
    "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.", // {
    "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..", // |
    ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#...", // }
    "..... ..... .#... #.#.# ...#. ..... .....", // ~
];

/// What a character outside 32..=126 is drawn as: an empty box, so it is visibly "unknown".
const BOX: [u8; 7] = [31, 17, 17, 17, 17, 17, 31];

/// Parses one art string at compile time; a malformed string stops the build.
const fn parse(art: &str) -> [u8; 7] {
    let b = art.as_bytes();
    assert!(b.len() == 7 * 6 - 1, "glyph art must be 7 rows of 5");
    let mut rows = [0u8; 7];
    let mut r = 0;
    while r < 7 {
        let mut c = 0;
        while c < 5 {
            match b[r * 6 + c] {
                b'#' => rows[r] |= 1 << (4 - c),
                b'.' => {}
                _ => panic!("glyph art holds only '#' and '.'"),
            }
            c += 1;
        }
        assert!(
            r == 6 || b[r * 6 + 5] == b' ',
            "glyph rows are separated by one space"
        );
        r += 1;
    }
    rows
}

const fn build() -> [[u8; 7]; 95] {
    let mut t = [[0u8; 7]; 95];
    let mut i = 0;
    while i < 95 {
        t[i] = parse(ART[i]);
        i += 1;
    }
    t
}

static FONT: [[u8; 7]; 95] = build();

/// The 5x7 bitmap of `c`: one byte per row, top first, low 5 bits, leftmost pixel = bit 4.
/// Characters outside printable ASCII give a hollow box.
pub fn glyph(c: char) -> [u8; 7] {
    match c as u32 {
        32..=126 => FONT[c as usize - 32],
        _ => BOX,
    }
}

/// Width in pixels of `text` drawn at `scale` (no trailing gap after the last character).
pub fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    (n * ADVANCE).saturating_sub(1).saturating_mul(scale)
}

/// Height in pixels of one line of text at `scale`.
pub fn text_height(scale: u32) -> u32 {
    GLYPH_H * scale
}

/// Calls `put(u, v)` for every lit pixel of `text` at `scale`, in unrotated text coordinates
/// (u along the line, v down), so horizontal and vertical drawing share one rasteriser.
fn rasterise(text: &str, scale: u32, mut put: impl FnMut(u64, u64)) {
    let s = scale as u64;
    for (i, c) in text.chars().enumerate() {
        let x0 = i as u64 * ADVANCE as u64 * s;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_W as u64 {
                if bits >> (4 - col) & 1 == 1 {
                    for sy in 0..s {
                        for sx in 0..s {
                            put(x0 + col * s + sx, row as u64 * s + sy);
                        }
                    }
                }
            }
        }
    }
}

/// Sets pixel (x, y) if it lies inside the image; coordinates are u64 so positions near the
/// u32 limit cannot overflow.
fn put_clipped(img: &mut RgbImage, x: u64, y: u64, color: Rgb<u8>) {
    if x < img.width() as u64 && y < img.height() as u64 {
        img.put_pixel(x as u32, y as u32, color);
    }
}

/// Writes `text` with its top-left corner at (x, y), each font pixel a `scale`x`scale` block,
/// without touching the background. Pixels outside the image are dropped.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: Rgb<u8>) {
    rasterise(text, scale, |u, v| {
        put_clipped(img, x as u64 + u, y as u64 + v, color)
    });
}

/// Like `draw_text`, on a darkened box one font pixel larger on each side, so it reads on any
/// image. (x, y) is the box's top-left corner.
pub fn draw_text_boxed(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: Rgb<u8>) {
    let (w, h) = img.dimensions();
    let box_w = text_width(text, scale).saturating_add(2 * scale);
    let box_h = (GLYPH_H + 2) * scale;
    for by in y..y.saturating_add(box_h).min(h) {
        for bx in x..x.saturating_add(box_w).min(w) {
            let p = img.get_pixel_mut(bx, by);
            p.0 = p.0.map(|v| v / 4);
        }
    }
    draw_text(
        img,
        x.saturating_add(scale),
        y.saturating_add(scale),
        text,
        scale,
        color,
    );
}

/// Writes `text` turned 90° anticlockwise (reading bottom to top, as a y-axis label). (x, y)
/// is the top-left corner of its box, which is `text_height(scale)` wide and
/// `text_width(text, scale)` tall.
pub fn draw_text_vertical(
    img: &mut RgbImage,
    x: u32,
    y: u32,
    text: &str,
    scale: u32,
    color: Rgb<u8>,
) {
    let len = text_width(text, scale) as u64;
    rasterise(text, scale, |u, v| {
        // u runs up the image from the bottom of the box; the glyphs' tops face left.
        put_clipped(img, x as u64 + v, y as u64 + len - 1 - u, color)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

    fn lit(img: &RgbImage, color: Rgb<u8>) -> usize {
        img.pixels().filter(|p| **p == color).count()
    }

    #[test]
    fn every_printable_character_has_its_own_glyph() {
        let mut seen = std::collections::HashMap::new();
        for c in '!'..='~' {
            let g = glyph(c);
            assert!(g.iter().any(|&r| r != 0), "{c:?} is blank");
            assert!(g.iter().all(|&r| r < 32), "{c:?} is wider than 5");
            assert_ne!(g, BOX, "{c:?} looks like the unknown box");
            if let Some(other) = seen.insert(g, c) {
                panic!("{c:?} and {other:?} share a bitmap");
            }
        }
        assert_eq!(glyph(' '), [0; 7]);
        assert_eq!(glyph('é'), BOX);
        assert_eq!(glyph('\n'), BOX);
    }

    #[test]
    fn known_glyphs_match_their_pictures() {
        // 'A': a rounded top, a crossbar on row 4; 'T': a full top bar then one centre column.
        assert_eq!(glyph('A'), [14, 17, 17, 17, 31, 17, 17]);
        assert_eq!(glyph('T'), [31, 4, 4, 4, 4, 4, 4]);
        assert_eq!(glyph('0'), [14, 17, 19, 21, 25, 17, 14]);
    }

    #[test]
    fn draw_text_lights_exactly_the_glyph_pixels() {
        // 'H' has 7 + 7 + 3 = 17 lit font pixels; at scale 3 each is a 3x3 block.
        let ones: u32 = glyph('H').iter().map(|r| r.count_ones()).sum();
        assert_eq!(ones, 17);
        let mut img = RgbImage::new(40, 40);
        draw_text(&mut img, 4, 5, "H", 3, WHITE);
        assert_eq!(lit(&img, WHITE), 17 * 9);
        // top-left pixel of 'H' is lit, the top of its middle column is not
        assert_eq!(*img.get_pixel(4, 5), WHITE);
        assert_eq!(*img.get_pixel(4 + 2 * 3, 5), Rgb([0, 0, 0]));
        // two characters: counts add, the second starts one advance to the right
        let mut two = RgbImage::new(40, 20);
        draw_text(&mut two, 0, 0, "HI", 1, WHITE);
        let i_ones: u32 = glyph('I').iter().map(|r| r.count_ones()).sum();
        assert_eq!(lit(&two, WHITE) as u32, 17 + i_ones);
        assert_eq!(*two.get_pixel(ADVANCE + 1, 0), WHITE); // top bar of 'I'
    }

    #[test]
    fn text_width_and_clipping() {
        assert_eq!(text_width("", 2), 0);
        assert_eq!(text_width("a", 1), 5);
        assert_eq!(text_width("abc", 2), (3 * 6 - 1) * 2);
        // drawing past the edges (and at huge coordinates) clips instead of panicking
        let mut img = RgbImage::new(10, 10);
        draw_text(&mut img, 7, 7, "Hello", 2, WHITE);
        draw_text(&mut img, u32::MAX - 3, u32::MAX - 3, "Hello", 4, WHITE);
        draw_text_vertical(&mut img, u32::MAX, 0, "x", 1, WHITE);
        draw_text_boxed(&mut img, u32::MAX - 1, 8, "long text", 3, WHITE);
        assert!(lit(&img, WHITE) > 0);
    }

    #[test]
    fn vertical_text_is_the_horizontal_text_turned() {
        let mut h = RgbImage::new(30, 10);
        let mut v = RgbImage::new(10, 30);
        draw_text(&mut h, 0, 0, "Fy", 1, WHITE);
        draw_text_vertical(&mut v, 0, 0, "Fy", 1, WHITE);
        let w = text_width("Fy", 1);
        for x in 0..w {
            for y in 0..GLYPH_H {
                // horizontal (x, y) lands at (y, w-1-x) when turned anticlockwise
                assert_eq!(h.get_pixel(x, y), v.get_pixel(y, w - 1 - x), "at {x},{y}");
            }
        }
        assert_eq!(lit(&h, WHITE), lit(&v, WHITE));
    }

    #[test]
    fn boxed_text_darkens_its_box_only() {
        let mut img = RgbImage::from_pixel(40, 20, Rgb([200, 100, 40]));
        draw_text_boxed(&mut img, 2, 2, "1", 1, WHITE);
        // box is (5 + 2) x 9 px from (2, 2); a corner is darkened, outside is untouched
        assert_eq!(img.get_pixel(2, 2).0, [50, 25, 10]);
        assert_eq!(img.get_pixel(8, 10).0, [50, 25, 10]);
        assert_eq!(img.get_pixel(9, 2).0, [200, 100, 40]);
        assert_eq!(img.get_pixel(2, 11).0, [200, 100, 40]);
        let ones: u32 = glyph('1').iter().map(|r| r.count_ones()).sum();
        assert_eq!(lit(&img, WHITE) as u32, ones);
    }
}

//! A band of consecutive full-width rows of an image, as raw bytes: rows are appended at the
//! bottom as they are read and dropped from the top once no tile needs them.
use image::{ColorType, DynamicImage, ImageBuffer};

use super::RowSource;

/// An image of `color` from raw bytes in native byte order (as `DynamicImage::as_bytes`).
pub fn image_from_bytes(color: ColorType, w: u32, h: u32, bytes: Vec<u8>) -> DynamicImage {
    let u16s = |b: Vec<u8>| -> Vec<u16> { bytemuck::pod_collect_to_vec(&b) };
    let short = "image_from_bytes: buffer size matches the region";
    match color {
        ColorType::L8 => DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, bytes).expect(short)),
        ColorType::La8 => {
            DynamicImage::ImageLumaA8(ImageBuffer::from_raw(w, h, bytes).expect(short))
        }
        ColorType::Rgb8 => {
            DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, bytes).expect(short))
        }
        ColorType::Rgba8 => {
            DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, bytes).expect(short))
        }
        ColorType::L16 => {
            DynamicImage::ImageLuma16(ImageBuffer::from_raw(w, h, u16s(bytes)).expect(short))
        }
        ColorType::La16 => {
            DynamicImage::ImageLumaA16(ImageBuffer::from_raw(w, h, u16s(bytes)).expect(short))
        }
        ColorType::Rgb16 => {
            DynamicImage::ImageRgb16(ImageBuffer::from_raw(w, h, u16s(bytes)).expect(short))
        }
        ColorType::Rgba16 => {
            DynamicImage::ImageRgba16(ImageBuffer::from_raw(w, h, u16s(bytes)).expect(short))
        }
        other => panic!("image_from_bytes: unsupported pixel type {other:?}"),
    }
}

/// Rows [y0, y0 + rows) of an image `width` pixels wide.
pub struct Band {
    pub width: u32,
    pub height: u32,
    pub color: ColorType,
    pub y0: u32,
    pub rows: u32,
    bytes: Vec<u8>,
    bpp: usize,
}

impl Band {
    pub fn new(width: u32, height: u32, color: ColorType) -> Band {
        Band {
            width,
            height,
            color,
            y0: 0,
            rows: 0,
            bytes: Vec::new(),
            bpp: color.bytes_per_pixel() as usize,
        }
    }

    fn row_bytes(&self) -> usize {
        self.width as usize * self.bpp
    }

    /// The first row after the band.
    pub fn end(&self) -> u32 {
        self.y0 + self.rows
    }

    /// Reads rows from `src` (whose next row is `self.end()`) until the band reaches row `y`
    /// (exclusive) or the image ends.
    pub fn fill_to(&mut self, src: &mut dyn RowSource, y: u32) -> Result<(), String> {
        let y = y.min(self.height);
        while self.end() < y {
            let got = src.read_rows(y - self.end(), &mut self.bytes)?;
            if got == 0 {
                return Err(format!(
                    "the image ends at row {} of {} (truncated)",
                    self.end(),
                    self.height
                ));
            }
            self.rows += got;
        }
        Ok(())
    }

    /// Drops the rows above `y`.
    pub fn drop_before(&mut self, y: u32) {
        if y <= self.y0 {
            return;
        }
        let n = (y - self.y0).min(self.rows);
        self.bytes.drain(..n as usize * self.row_bytes());
        self.y0 += n;
        self.rows -= n;
    }

    /// The region (x, y, w, h) in image coordinates, which the band must hold, as an image of
    /// the band's pixel type: what `DynamicImage::crop_imm` gives on the whole image.
    pub fn region(&self, x: u32, y: u32, w: u32, h: u32) -> DynamicImage {
        assert!(
            y >= self.y0 && y + h <= self.end() && x + w <= self.width,
            "Band::region: ({x},{y} {w}x{h}) outside rows {}..{}",
            self.y0,
            self.end()
        );
        let rb = self.row_bytes();
        let mut out = Vec::with_capacity(w as usize * h as usize * self.bpp);
        for r in y..y + h {
            let start = (r - self.y0) as usize * rb + x as usize * self.bpp;
            out.extend_from_slice(&self.bytes[start..start + w as usize * self.bpp]);
        }
        image_from_bytes(self.color, w, h, out)
    }

    /// Row `y` (image coordinates) as raw bytes.
    pub fn row(&self, y: u32) -> &[u8] {
        let rb = self.row_bytes();
        let start = (y - self.y0) as usize * rb;
        &self.bytes[start..start + rb]
    }

    /// Bytes held.
    pub fn held_bytes(&self) -> usize {
        self.bytes.len()
    }
}

//! Inputs people have: float32, int16 and uint32 TIFF (refused before), grey+alpha TIFF,
//! planar TIFF, and 16-bit PNG/TIFF, each normalised as `data::image_io` documents.
use std::io::Cursor;
use std::path::Path;

use dcl::data::image_io::{decode, read_image_rgb};
use tiff::encoder::colortype::{self, ColorType};
use tiff::encoder::TiffEncoder;
use tiff::tags::{PhotometricInterpretation, SampleFormat};

const W: u32 = 4;
const H: u32 = 2;

fn tiff<C: ColorType>(path: &Path, data: &[C::Inner])
where
    [C::Inner]: tiff::encoder::TiffValue,
{
    let mut buf = Cursor::new(Vec::new());
    TiffEncoder::new(&mut buf)
        .unwrap()
        .write_image::<C>(W, H, data)
        .unwrap();
    std::fs::write(path, buf.into_inner()).unwrap();
}

/// Grey + alpha, 8 bits a sample (the encoder has no such colour type built in).
struct GreyAlpha8;
impl ColorType for GreyAlpha8 {
    type Inner = u8;
    const TIFF_VALUE: PhotometricInterpretation = PhotometricInterpretation::BlackIsZero;
    const BITS_PER_SAMPLE: &'static [u16] = &[8, 8];
    const SAMPLE_FORMAT: &'static [SampleFormat] = &[SampleFormat::Uint, SampleFormat::Uint];
    fn horizontal_predict(row: &[u8], result: &mut Vec<u8>) {
        result.extend_from_slice(row);
    }
}

/// Grey + alpha, 16 bits a sample.
struct GreyAlpha16;
impl ColorType for GreyAlpha16 {
    type Inner = u16;
    const TIFF_VALUE: PhotometricInterpretation = PhotometricInterpretation::BlackIsZero;
    const BITS_PER_SAMPLE: &'static [u16] = &[16, 16];
    const SAMPLE_FORMAT: &'static [SampleFormat] = &[SampleFormat::Uint, SampleFormat::Uint];
    fn horizontal_predict(row: &[u16], result: &mut Vec<u16>) {
        result.extend_from_slice(row);
    }
}

/// Five samples a pixel: not an image layout dcl reads.
struct Five8;
impl ColorType for Five8 {
    type Inner = u8;
    const TIFF_VALUE: PhotometricInterpretation = PhotometricInterpretation::BlackIsZero;
    const BITS_PER_SAMPLE: &'static [u16] = &[8; 5];
    const SAMPLE_FORMAT: &'static [SampleFormat] = &[SampleFormat::Uint; 5];
    fn horizontal_predict(row: &[u8], result: &mut Vec<u8>) {
        result.extend_from_slice(row);
    }
}

/// The red channel of the RGB [0, 1] image, row-major (all three are equal for grey).
fn grey(path: &Path) -> Vec<f32> {
    let img = read_image_rgb(path).unwrap();
    assert_eq!((img.width, img.height), (W as usize, H as usize));
    let n = img.width * img.height;
    for i in 0..n {
        assert_eq!(img.data[i], img.data[n + i], "grey replicated");
        assert_eq!(img.data[i], img.data[2 * n + i], "grey replicated");
    }
    img.data[..n].to_vec()
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1.0 / 65535.0 + 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn float_tiffs_in_range_are_kept_and_others_rescaled() {
    let d = tempfile::tempdir().unwrap();
    let v = [0.0f32, 0.25, 0.5, 1.0, 0.125, 0.75, 0.0, 0.5];
    let p = d.path().join("f32.tif");
    tiff::<colortype::Gray32Float>(&p, &v);
    close(&grey(&p), &v);
    // values outside [0, 1]: min..max to 0..1; NaN to 0
    let big = [100.0f32, 200.0, 300.0, 500.0, f32::NAN, 100.0, 300.0, 500.0];
    let p = d.path().join("f32_big.tif");
    tiff::<colortype::Gray32Float>(&p, &big);
    close(&grey(&p), &[0.0, 0.25, 0.5, 1.0, 0.0, 0.0, 0.5, 1.0]);
    let p = d.path().join("f64.tif");
    tiff::<colortype::Gray64Float>(&p, &v.map(|x| x as f64 * 4.0 - 1.0));
    close(&grey(&p), &v);
    // float RGB: one min and max over the three colours
    let p = d.path().join("rgbf32.tif");
    let rgb: Vec<f32> = (0..8)
        .flat_map(|i| [i as f32, 2.0 * i as f32, 0.0])
        .collect();
    tiff::<colortype::RGB32Float>(&p, &rgb);
    let img = read_image_rgb(&p).unwrap();
    let n = 8;
    assert!((img.data[7] - 0.5).abs() < 1e-4, "{:?}", &img.data[..n]);
    assert!((img.data[n + 7] - 1.0).abs() < 1e-4);
    assert_eq!(img.data[2 * n + 7], 0.0);
}

#[test]
fn signed_and_32_bit_integer_tiffs_are_rescaled_over_the_image() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("i16.tif");
    tiff::<colortype::GrayI16>(&p, &[-100, 0, 100, 300, -100, -100, 300, 100]);
    close(&grey(&p), &[0.0, 0.25, 0.5, 1.0, 0.0, 0.0, 1.0, 0.5]);
    let p = d.path().join("u32.tif");
    tiff::<colortype::Gray32>(
        &p,
        &[
            70_000, 80_000, 90_000, 110_000, 70_000, 70_000, 70_000, 70_000,
        ],
    );
    close(&grey(&p), &[0.0, 0.25, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0]);
    let p = d.path().join("i32_const.tif");
    tiff::<colortype::GrayI32>(&p, &[7; 8]);
    close(&grey(&p), &[0.0; 8]);
    let p = d.path().join("i8.tif");
    tiff::<colortype::GrayI8>(&p, &[-128, 127, 0, 0, 0, 0, 0, 0]);
    let g = grey(&p);
    assert_eq!((g[0], g[1]), (0.0, 1.0));
}

#[test]
fn grey_alpha_and_16_bit_inputs() {
    let d = tempfile::tempdir().unwrap();
    // grey+alpha: the grey value / 255, the alpha dropped
    let p = d.path().join("ga8.tif");
    let px: Vec<u8> = (0..8u8).flat_map(|i| [i * 30, 255 - i]).collect();
    tiff::<GreyAlpha8>(&p, &px);
    let want: Vec<f32> = (0..8).map(|i| (i * 30) as f32 / 255.0).collect();
    close(&grey(&p), &want);
    let p = d.path().join("ga16.tif");
    let px: Vec<u16> = (0..8u16).flat_map(|i| [i * 8000, 100]).collect();
    tiff::<GreyAlpha16>(&p, &px);
    let want: Vec<f32> = (0..8).map(|i| (i * 8000) as f32 / 65535.0).collect();
    close(&grey(&p), &want);
    // 16-bit TIFF and PNG: / 65535
    let v: Vec<u16> = (0..8u16).map(|i| i * 9000).collect();
    let want: Vec<f32> = v.iter().map(|&x| x as f32 / 65535.0).collect();
    let p = d.path().join("u16.tif");
    tiff::<colortype::Gray16>(&p, &v);
    close(&grey(&p), &want);
    let p = d.path().join("u16.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(W, H, v.clone())
        .unwrap()
        .save(&p)
        .unwrap();
    close(&grey(&p), &want);
    // 16-bit grey+alpha PNG
    let p = d.path().join("ga16.png");
    let px: Vec<u16> = v.iter().flat_map(|&x| [x, 65535]).collect();
    image::ImageBuffer::<image::LumaA<u16>, _>::from_raw(W, H, px)
        .unwrap()
        .save(&p)
        .unwrap();
    close(&grey(&p), &want);
    // 8-bit TIFF still goes through the image crate, unchanged
    let p = d.path().join("u8.tif");
    tiff::<colortype::Gray8>(&p, &[0, 51, 102, 255, 0, 0, 0, 0]);
    close(&grey(&p), &[0.0, 0.2, 0.4, 1.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn unreadable_layouts_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("five.tif");
    tiff::<Five8>(&p, &[0u8; 40]);
    let e = decode(&p).unwrap_err().to_string();
    assert!(
        e.contains("five.tif") && e.contains("5 samples a pixel"),
        "{e}"
    );
}

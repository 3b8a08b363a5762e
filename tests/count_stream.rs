//! Whole-slide images in bounded memory, and honest limits:
//! - tiled and striped TIFF, BigTIFF and PNG read a band of rows at a time give exactly the
//!   pixels decoding them whole gives (8 and 16 bits, grey and colour, compressions);
//! - counting region by region gives the in-memory path's count, coarse map, density map and
//!   points bit for bit (several tilings and batch sizes, with and without resizing);
//! - `dcl count` streams above `--stream-pixels` with the same outputs as in memory, the
//!   density map at the image's size and scaled to the count included;
//! - a decompression bomb (a 48 KB PNG declaring 20000x20000 pixels) is refused at once from
//!   its header, in one line naming the file, its size and `--max-pixels`; a valid 14000x14000
//!   RGB image is not refused by any decoder's memory limit.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use dcl::checkpoint::{load_counter, load_localizer};
use dcl::data::image_io::{decode, read_tiff_f32};
use dcl::data::stream::{self, image_from_bytes, Band};
use dcl::infer::stream::{predict_stream, predict_stream_with, Readout, Sinks};
use dcl::infer::{predict, predict_with, InferOptions};
use dcl::tensor::Tensor;
use image::DynamicImage;

/// A network ("counter" or "localizer") of a shipped model (models/MODEL).
fn shipped(model: &str, net: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model)
        .join(format!("{net}.safetensors"))
}

/// A network of the shipped `vgg-cells` model, trained on VGG cells.
fn vgg_cells(net: &str) -> PathBuf {
    shipped("vgg-cells", net)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A mid-size test image: VGG fixture cells tiled (so the networks see cells), cropped to an
/// odd size, with a gradient so that no two tiles are alike.
fn cells(w: u32, h: u32) -> image::RgbImage {
    let tiles: Vec<image::RgbImage> = ["001", "005", "007", "008"]
        .iter()
        .map(|n| {
            image::open(fixture(&format!("vgg/{n}cell.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    image::RgbImage::from_fn(w, h, |x, y| {
        let t = &tiles[((x / 256 + y / 256 * 3) % 4) as usize];
        let mut p = *t.get_pixel(x % 256, y % 256);
        p.0[2] = p.0[2].saturating_add((x * 40 / w) as u8);
        p
    })
}

/// Writes a tiled TIFF (uncompressed or Deflate, classic or BigTIFF) of 8-bit or 16-bit
/// samples: the `tiff` encoder writes strips only.
#[allow(clippy::too_many_arguments)]
fn write_tiled(
    path: &Path,
    w: u32,
    h: u32,
    spp: u16,
    bits: u16,
    raw: &[u8],
    tile: u32,
    big: bool,
    deflate: bool,
) {
    let bpp = (spp * bits / 8) as usize;
    let (across, down) = (w.div_ceil(tile), h.div_ceil(tile));
    let mut out: Vec<u8> = if big {
        [
            b"II".as_slice(),
            &43u16.to_le_bytes(),
            &8u16.to_le_bytes(),
            &0u16.to_le_bytes(),
            &0u64.to_le_bytes(),
        ]
        .concat()
    } else {
        [b"II".as_slice(), &42u16.to_le_bytes(), &0u32.to_le_bytes()].concat()
    };
    let (mut offs, mut counts) = (Vec::new(), Vec::new());
    for ty in 0..down {
        for tx in 0..across {
            let mut t = vec![0u8; (tile * tile) as usize * bpp];
            for r in 0..tile {
                let (y, x0) = (ty * tile + r, tx * tile);
                if y >= h {
                    break;
                }
                let n = tile.min(w - x0) as usize * bpp;
                let src = (y as usize * w as usize + x0 as usize) * bpp;
                t[r as usize * tile as usize * bpp..][..n].copy_from_slice(&raw[src..src + n]);
            }
            if deflate {
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(&t).unwrap();
                t = z.finish().unwrap();
            }
            offs.push(out.len() as u64);
            counts.push(t.len() as u64);
            out.extend(t);
        }
    }
    let arr = |v: &[u64]| -> Vec<u8> {
        if big {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        } else {
            v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect()
        }
    };
    let bits_at = out.len() as u64;
    out.extend((0..spp).flat_map(|_| bits.to_le_bytes()));
    let offs_at = out.len() as u64;
    out.extend(arr(&offs));
    let counts_at = out.len() as u64;
    out.extend(arr(&counts));
    if !out.len().is_multiple_of(2) {
        out.push(0);
    }
    let ifd_at = out.len() as u64;
    let long = if big { 16u16 } else { 4 };
    let word = if big { 8 } else { 4 };
    let bits_inline = spp as u64 * 2 <= word;
    let mut bits_val = [0u8; 8];
    for s in 0..spp as usize {
        bits_val[2 * s..2 * s + 2].copy_from_slice(&bits.to_le_bytes());
    }
    let entries: Vec<(u16, u16, u64, u64)> = vec![
        (256, 4, 1, w as u64),
        (257, 4, 1, h as u64),
        (
            258,
            3,
            spp as u64,
            if bits_inline {
                u64::from_le_bytes(bits_val)
            } else {
                bits_at
            },
        ),
        (259, 3, 1, if deflate { 8 } else { 1 }),
        (262, 3, 1, if spp >= 3 { 2 } else { 1 }),
        (277, 3, 1, spp as u64),
        (284, 3, 1, 1),
        (322, 3, 1, tile as u64),
        (323, 3, 1, tile as u64),
        (
            324,
            long,
            offs.len() as u64,
            if offs.len() == 1 { offs[0] } else { offs_at },
        ),
        (
            325,
            long,
            counts.len() as u64,
            if counts.len() == 1 {
                counts[0]
            } else {
                counts_at
            },
        ),
    ];
    let mut entries = entries;
    if spp == 2 || spp == 4 {
        entries.push((338, 3, 1, 2)); // unassociated alpha
        entries.sort();
    }
    if big {
        out.extend((entries.len() as u64).to_le_bytes());
    } else {
        out.extend((entries.len() as u16).to_le_bytes());
    }
    for (tag, ty, count, v) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(ty.to_le_bytes());
        if big {
            out.extend(count.to_le_bytes());
            out.extend(v.to_le_bytes());
        } else {
            out.extend((count as u32).to_le_bytes());
            if ty == 3 && count == 1 {
                out.extend((v as u16 as u32).to_le_bytes());
            } else {
                out.extend((v as u32).to_le_bytes());
            }
        }
    }
    out.extend(vec![0u8; word as usize]);
    if big {
        out[8..16].copy_from_slice(&ifd_at.to_le_bytes());
    } else {
        out[4..8].copy_from_slice(&(ifd_at as u32).to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// A striped TIFF through the `tiff` encoder.
fn write_striped<C: tiff::encoder::colortype::ColorType>(
    path: &Path,
    w: u32,
    h: u32,
    data: &[C::Inner],
    rows: u32,
    big: bool,
    compression: tiff::encoder::Compression,
) where
    [C::Inner]: tiff::encoder::TiffValue,
{
    let f = std::fs::File::create(path).unwrap();
    macro_rules! go {
        ($enc:expr) => {{
            let mut enc = $enc.unwrap().with_compression(compression);
            let mut img = enc.new_image::<C>(w, h).unwrap();
            img.rows_per_strip(rows).unwrap();
            img.write_data(data).unwrap();
        }};
    }
    if big {
        go!(tiff::encoder::TiffEncoder::new_big(f))
    } else {
        go!(tiff::encoder::TiffEncoder::new(f))
    }
}

/// Everything a source gives, read in uneven pieces.
fn read_all(path: &Path) -> DynamicImage {
    let mut src = stream::open(path).unwrap();
    let (w, h, c) = (src.width(), src.height(), src.color());
    let mut bytes = Vec::new();
    let mut k = 1;
    while src.read_rows(k, &mut bytes).unwrap() > 0 {
        k = k % 37 + 5;
    }
    image_from_bytes(c, w, h, bytes)
}

#[test]
fn streamed_readers_give_the_decoded_pixels() {
    let d = tempfile::tempdir().unwrap();
    let (w, h) = (613u32, 389u32);
    let rgb = cells(w, h);
    let grey16: Vec<u16> = (0..w * h)
        .map(|i| (i.wrapping_mul(2654435761u32) >> 16) as u16)
        .collect();
    let rgba: Vec<u8> = rgb
        .pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2], p.0[0] ^ 0x5a])
        .collect();
    let la: Vec<u8> = rgb.pixels().flat_map(|p| [p.0[1], 255 - p.0[0]]).collect();
    let mut files = Vec::new();
    // PNG: 8-bit RGB, 16-bit grey, grey+alpha, RGBA
    let p = d.path().join("rgb.png");
    rgb.save(&p).unwrap();
    files.push(p);
    let p = d.path().join("grey16.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w, h, grey16.clone())
        .unwrap()
        .save(&p)
        .unwrap();
    files.push(p);
    let p = d.path().join("la.png");
    image::ImageBuffer::<image::LumaA<u8>, _>::from_raw(w, h, la.clone())
        .unwrap()
        .save(&p)
        .unwrap();
    files.push(p);
    let p = d.path().join("rgba.png");
    image::RgbaImage::from_raw(w, h, rgba.clone())
        .unwrap()
        .save(&p)
        .unwrap();
    files.push(p);
    // tiled TIFF and BigTIFF (grey+alpha TIFFs are read by neither decoder), uncompressed and
    // Deflate, tiles that do and do not divide the image
    let g16: Vec<u8> = bytemuck::cast_slice(&grey16).to_vec();
    for (name, spp, bits, raw) in [
        ("rgb", 3u16, 8u16, rgb.as_raw().clone()),
        ("g16", 1, 16, g16.clone()),
        ("rgba", 4, 8, rgba.clone()),
    ] {
        for (tile, big, deflate) in [(256, false, false), (128, true, true), (64, false, true)] {
            let p = d.path().join(format!("{name}-t{tile}-{big}-{deflate}.tif"));
            write_tiled(&p, w, h, spp, bits, &raw, tile, big, deflate);
            files.push(p);
        }
    }
    // striped TIFF and BigTIFF through the tiff encoder: LZW, Deflate, PackBits, none
    use tiff::encoder::{colortype, Compression, DeflateLevel};
    for (rows, big, comp) in [
        (1, false, Compression::Lzw),
        (17, true, Compression::Deflate(DeflateLevel::Fast)),
        (64, false, Compression::Packbits),
        (1000, false, Compression::Uncompressed),
    ] {
        let p = d.path().join(format!("rgb-s{rows}-{big}.tif"));
        write_striped::<colortype::RGB8>(&p, w, h, rgb.as_raw(), rows, big, comp);
        files.push(p);
        let p = d.path().join(format!("g16-s{rows}-{big}.tif"));
        write_striped::<colortype::Gray16>(&p, w, h, &grey16, rows, big, comp);
        files.push(p);
    }
    for p in &files {
        let probe = stream::probe(p).unwrap();
        assert_eq!(
            (probe.width, probe.height),
            (w as u64, h as u64),
            "{}",
            p.display()
        );
        assert!(
            probe.streamable.is_ok(),
            "{}: {:?}",
            p.display(),
            probe.streamable
        );
        let got = read_all(p);
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let want = match name.split(['.', '-']).next().unwrap() {
            "rgb" => DynamicImage::ImageRgb8(rgb.clone()),
            "grey16" | "g16" => DynamicImage::ImageLuma16(
                image::ImageBuffer::from_raw(w, h, grey16.clone()).unwrap(),
            ),
            "la" => {
                DynamicImage::ImageLumaA8(image::ImageBuffer::from_raw(w, h, la.clone()).unwrap())
            }
            _ => DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, rgba.clone()).unwrap()),
        };
        assert!(got == want, "{}: streamed pixels differ", p.display());
        // and the in-memory decoder's (which does not read BigTIFF)
        if probe.format != "BigTIFF" {
            assert!(
                got == decode(p).unwrap(),
                "{}: differs from decode",
                p.display()
            );
        }
    }
    // what is decoded whole says why
    // (the png encoder writes no Adam7: a header saying so is enough for the probe)
    let p = d.path().join("inter.png");
    let mut b = std::fs::read(&files[0]).unwrap();
    b[28] = 1;
    let mut crc = flate2::Crc::new();
    crc.update(&b[12..29]);
    b[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    std::fs::write(&p, b).unwrap();
    assert!(stream::probe(&p)
        .unwrap()
        .streamable
        .unwrap_err()
        .contains("interlaced"));
    let p = d.path().join("f.tif");
    write_striped::<colortype::Gray32Float>(
        &p,
        8,
        8,
        &[0.5f32; 64],
        8,
        false,
        Compression::Uncompressed,
    );
    assert!(stream::probe(&p)
        .unwrap()
        .streamable
        .unwrap_err()
        .contains("floating-point"));
    // a truncated streamed PNG is an error, not fewer rows
    let good = std::fs::read(&files[0]).unwrap();
    let cut = d.path().join("cut.png");
    std::fs::write(&cut, &good[..good.len() - 20]).unwrap();
    let mut src = stream::open(&cut).unwrap();
    let mut bytes = Vec::new();
    let mut failed = false;
    for _ in 0..h {
        match src.read_rows(64, &mut bytes) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a PNG cut in its last bytes reads without an error");
}

/// A "counter" whose coarse map is local (see tests/count_tiling.rs).
fn local_map(images: Tensor) -> dcl::Result<Vec<f32>> {
    let d = images.dims().to_vec();
    let (n, h, w) = (d[0], d[2], d[3]);
    let v = images.to_vec();
    let mut out = Vec::with_capacity(n * (h / 8) * (w / 8));
    for k in 0..n {
        let g = &v[(k * 3 + 1) * h * w..(k * 3 + 2) * h * w];
        for by in 0..h / 8 {
            for bx in 0..w / 8 {
                let s: f32 = (by * 8..by * 8 + 8)
                    .flat_map(|y| (bx * 8..bx * 8 + 8).map(move |x| (x, y)))
                    .map(|(x, y)| g[y * w + x])
                    .sum();
                out.push(s / 64.0 + 3.0);
            }
        }
    }
    Ok(out)
}

struct Got {
    count: f64,
    coarse: Vec<f32>,
    density: Vec<f32>,
    points: Option<Vec<dcl::infer::points::Point>>,
    rows_seen: u32,
    tiles: u64,
}

fn streamed(
    coarse_of: impl Fn(Tensor) -> dcl::Result<Vec<f32>>,
    scale: f32,
    loc: Option<(&dcl::nn::Localizer, Readout)>,
    path: &Path,
    opts: &InferOptions,
) -> Got {
    let mut density = Vec::new();
    let mut density_row = |r: &[f32]| -> dcl::Result<()> {
        density.extend_from_slice(r);
        Ok(())
    };
    let mut rows_seen = 0;
    let mut image_rows = |_: &Band, y0: u32, y1: u32| {
        assert_eq!(y0, rows_seen);
        rows_seen = y1;
    };
    let done = std::sync::atomic::AtomicU64::new(0);
    let progress = |n: u64| {
        done.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    };
    let open = || stream::open(path).map_err(|e| dcl::Error::file(path, e));
    let s = predict_stream_with(
        coarse_of,
        scale,
        loc,
        &open,
        opts,
        Sinks {
            density_row: &mut density_row,
            image_rows: &mut image_rows,
            progress: &progress,
        },
    )
    .unwrap();
    assert_eq!(s.tiles, done.load(std::sync::atomic::Ordering::SeqCst));
    Got {
        count: s.count,
        coarse: s.coarse.data,
        density,
        points: s.points,
        rows_seen,
        tiles: s.tiles,
    }
}

/// Counting region by region gives the in-memory count, coarse map, density map and points
/// exactly: the trained fixture networks on a 1100x900 image of cells (4x5 tiles), as PNG
/// and as tiled TIFF, with the default tiling and with other overlaps and batch sizes.
#[test]
fn streamed_counts_maps_and_points_are_the_in_memory_ones() {
    let d = tempfile::tempdir().unwrap();
    let net = dcl::nn::CountNet::Counter(load_counter(&vgg_cells("counter")).unwrap().0);
    let counter = net.counter().expect("a counter");
    let (loc, _) = load_localizer(&vgg_cells("localizer")).unwrap();
    let img = cells(1100, 900);
    let png = d.path().join("cells.png");
    img.save(&png).unwrap();
    let tif = d.path().join("cells.tif");
    write_tiled(&tif, 1100, 900, 3, 8, img.as_raw(), 192, false, true);
    let readout = Readout {
        threshold: loc.config.point_threshold,
        min_distance: loc.config.min_distance,
    };
    let whole = DynamicImage::ImageRgb8(img);
    for (path, opts) in [
        (&png, InferOptions::default()),
        (
            &tif,
            InferOptions {
                overlap: 64,
                batch: 3,
                ..InferOptions::default()
            },
        ),
        (
            &png,
            InferOptions {
                tile: 320,
                overlap: 200,
                batch: 5,
            },
        ),
    ] {
        let p = predict(&net, Some(&loc), &whole, &opts).unwrap();
        let want_points = p.points(readout.threshold, readout.min_distance).unwrap();
        let open = || stream::open(path).map_err(|e| dcl::Error::file(path, e));
        let mut density = Vec::new();
        let mut density_row = |r: &[f32]| -> dcl::Result<()> {
            density.extend_from_slice(r);
            Ok(())
        };
        let s = predict_stream(
            counter,
            Some((&loc, readout)),
            &open,
            &opts,
            Sinks {
                density_row: &mut density_row,
                image_rows: &mut |_, _, _| {},
                progress: &|_| {},
            },
        )
        .unwrap();
        let label = format!("{} {opts:?}", path.display());
        assert_eq!(
            s.count.to_bits(),
            p.count.to_bits(),
            "{label}: {} vs {}",
            s.count,
            p.count
        );
        assert!(s.coarse == p.coarse, "{label}: coarse maps differ");
        assert!(
            density == p.density.as_ref().unwrap().data,
            "{label}: density maps differ"
        );
        assert_eq!(s.points.unwrap(), want_points, "{label}");
        assert!(!want_points.is_empty());
    }
}

/// The same with resizing (input_scale != 1), a local counter and the fixture localizer, and
/// a 16-bit grey image; every image row passes the first pass once.
#[test]
fn streamed_resized_images_match_too() {
    let d = tempfile::tempdir().unwrap();
    let (loc, _) = load_localizer(&vgg_cells("localizer")).unwrap();
    let readout = Readout {
        threshold: 0.0005,
        min_distance: 1.5,
    };
    let img = cells(530, 470);
    let png = d.path().join("c.png");
    img.save(&png).unwrap();
    let g16: Vec<u16> = img
        .pixels()
        .map(|p| p.0[1] as u16 * 257 + p.0[0] as u16)
        .collect();
    let g16img = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(530, 470, g16).unwrap();
    let g = d.path().join("g16.png");
    g16img.save(&g).unwrap();
    for (path, whole) in [
        (&png, DynamicImage::ImageRgb8(img.clone())),
        (&g, DynamicImage::ImageLuma16(g16img.clone())),
    ] {
        for scale in [0.61f32, 1.0, 1.37] {
            let opts = InferOptions::default();
            let p = predict_with(local_map, scale, Some(&loc), &whole, &opts).unwrap();
            let s = streamed(local_map, scale, Some((&loc, readout)), path, &opts);
            let label = format!("{} x{scale}", path.display());
            assert_eq!(s.count.to_bits(), p.count.to_bits(), "{label}");
            assert!(s.coarse == p.coarse.data, "{label}");
            assert!(s.density == p.density.as_ref().unwrap().data, "{label}");
            assert_eq!(
                s.points.unwrap(),
                p.points(readout.threshold, readout.min_distance).unwrap(),
                "{label}"
            );
            assert_eq!(s.rows_seen as usize, (470.0 * scale).round() as usize);
            assert!(s.tiles > 0);
            // without a localizer: the counter alone
            let s = streamed(local_map, scale, None, path, &opts);
            assert_eq!(s.count.to_bits(), p.count.to_bits(), "{label}");
            assert!(s.points.is_none() && s.density.is_empty());
        }
    }
}

fn dcl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(args)
        .output()
        .unwrap()
}

/// `dcl count` streams images above --stream-pixels: counts.csv, points and density maps
/// are those of the in-memory run, and a bar in tiles is not needed for that.
#[test]
fn count_streams_with_the_same_outputs() {
    let d = tempfile::tempdir().unwrap();
    let img = cells(700, 520);
    let dir = d.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    img.save(dir.join("a.png")).unwrap();
    write_tiled(
        &dir.join("b.tif"),
        700,
        520,
        3,
        8,
        img.as_raw(),
        256,
        false,
        true,
    );
    // BigTIFF, which the in-memory decoder does not read, is streamed in both runs
    write_tiled(
        &dir.join("c.tif"),
        700,
        520,
        3,
        8,
        img.as_raw(),
        128,
        true,
        false,
    );
    let (c, l) = (vgg_cells("counter"), vgg_cells("localizer"));
    let run = |out: &Path, dens: &Path, extra: &[&str]| {
        let mut args = vec![
            "count",
            "--quiet",
            "--counter",
            c.to_str().unwrap(),
            "--localizer",
            l.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--density-dir",
            dens.to_str().unwrap(),
        ];
        args.extend(extra);
        args.push(dir.to_str().unwrap());
        let o = dcl(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (m, md) = (d.path().join("mem"), d.path().join("memd"));
    let (s, sd) = (d.path().join("str"), d.path().join("strd"));
    run(&m, &md, &[]);
    run(&s, &sd, &["--stream-pixels", "1"]);
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(read(s.join("counts.csv")), read(m.join("counts.csv")));
    assert_eq!(read(m.join("counts.csv")).lines().count(), 4);
    for name in ["a", "b", "c"] {
        for f in [
            format!("points/{name}.csv"),
            format!("points/{name}.geojson"),
        ] {
            assert_eq!(read(s.join(&f)), read(m.join(&f)), "{f}");
        }
        let tif = |p: PathBuf| read_tiff_f32(&p).unwrap();
        // the map at the image's size, scaled to the count: made in a second pass when streamed
        let f = format!("density/{name}.tif");
        assert!(tif(s.join(&f)) == tif(m.join(&f)), "{f}");
        for f in [format!("{name}.coarse.tif"), format!("{name}.density.tif")] {
            assert!(tif(sd.join(&f)) == tif(md.join(&f)), "{f}");
        }
        // a small image's preview is the image itself: the same overlay
        let ov = |p: PathBuf| image::open(p).unwrap().to_rgb8();
        assert!(
            ov(s.join(format!("overlays/{name}.png")))
                == ov(m.join(format!("overlays/{name}.png")))
        );
    }
}

/// The same for a model that resizes (mbm-bone-marrow: input scale 0.853), with its localizer
/// (the map resampled to the image as its rows come, then scaled) and without (the coarse map
/// spread over the image): density/NAME.tif is the in-memory run's, bit for bit.
#[test]
fn count_streams_resized_density_maps_as_in_memory() {
    let d = tempfile::tempdir().unwrap();
    let img = cells(610, 433);
    let dir = d.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    write_tiled(
        &dir.join("t.tif"),
        610,
        433,
        3,
        8,
        img.as_raw(),
        256,
        false,
        true,
    );
    let (c, l) = (
        shipped("mbm-bone-marrow", "counter"),
        shipped("mbm-bone-marrow", "localizer"),
    );
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "count",
            "--quiet",
            "--counter",
            c.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        args.push(dir.to_str().unwrap());
        let o = dcl(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read_tiff_f32(&out.join("density/t.tif")).unwrap()
    };
    let loc = ["--localizer", l.to_str().unwrap()];
    let stream = ["--stream-pixels", "1"];
    for (label, with) in [("localizer", &loc[..]), ("counter alone", &[][..])] {
        let m = run(&d.path().join(format!("m {label}")), with);
        let s = run(
            &d.path().join(format!("s {label}")),
            &[with, &stream].concat(),
        );
        assert_eq!((m.0, m.1), (610, 433), "{label}");
        assert!(m.2.iter().any(|&v| v > 0.0), "{label}");
        assert!(s == m, "{label}: streamed and in-memory maps differ");
    }
}

/// A PNG of `w` x `h` 1-bit pixels, all zero, written with flate2: 48 KB for 20000x20000.
fn bomb(path: &Path, w: u32, h: u32) {
    let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        let mut crc = flate2::Crc::new();
        crc.update(&c);
        out.extend(crc.sum().to_be_bytes());
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([1, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let row = vec![0u8; 1 + w.div_ceil(8) as usize];
    for _ in 0..h {
        z.write_all(&row).unwrap();
    }
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn a_decompression_bomb_is_refused_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let b = dir.join("bomb.png");
    bomb(&b, 20000, 20000);
    assert!(std::fs::metadata(&b).unwrap().len() < 100_000);
    image::RgbImage::new(40, 40)
        .save(dir.join("ok.png"))
        .unwrap();
    let c = vgg_cells("counter");
    let t = std::time::Instant::now();
    let o = dcl(&[
        "count",
        "--quiet",
        "--counter",
        c.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    let first = e.lines().next().unwrap();
    assert!(
        first.contains("bomb.png")
            && first.contains("20000x20000 PNG")
            && first.contains("--max-pixels 256M")
            && first.contains("--max-pixels 400M or more"),
        "{e}"
    );
    // in a folder: the others are counted, the bomb is named, the exit says so
    let o = dcl(&[
        "count",
        "--quiet",
        "--counter",
        c.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("ok.png") && !out.contains("bomb.png"), "{out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 of 2 images could not be counted"));
    // --max-pixels raised: admitted (and streamed); a bad value is a clear error
    let a: dcl::cli::count_scale::ScaleArgs = Default::default();
    assert!(matches!(
        dcl::cli::count_scale::route(&b, &a),
        dcl::cli::count_scale::Route::Refused(_)
    ));
    let a = dcl::cli::count_scale::ScaleArgs {
        max_pixels: "400M".parse().unwrap(),
        ..Default::default()
    };
    assert!(matches!(
        dcl::cli::count_scale::route(&b, &a),
        dcl::cli::count_scale::Route::Stream(_)
    ));
    let o = dcl(&[
        "count",
        "--max-pixels",
        "lots",
        "--counter",
        c.to_str().unwrap(),
        "x.png",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("256M, 2.5G or 400000000"));
}

/// A valid 14000x14000 RGB PNG (196 Mpixel, 588 MB decoded) is admitted and read to its end
/// region by region (no decoder's memory limit refuses it), and decodes whole too.
#[test]
fn a_14000_square_rgb_image_is_not_refused_by_a_memory_limit() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("big.png");
    let n = 14000u32;
    {
        let f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        let mut e = png::Encoder::new(f, n, n);
        e.set_color(png::ColorType::Rgb);
        e.set_depth(png::BitDepth::Eight);
        e.set_compression(png::Compression::Fastest);
        let mut w = e.write_header().unwrap().into_stream_writer().unwrap();
        let row: Vec<u8> = (0..n * 3).map(|i| (i % 251) as u8).collect();
        for _ in 0..n {
            w.write_all(&row).unwrap();
        }
        w.finish().unwrap();
    }
    let a: dcl::cli::count_scale::ScaleArgs = Default::default();
    assert!(matches!(
        dcl::cli::count_scale::route(&p, &a),
        dcl::cli::count_scale::Route::Stream(_)
    ));
    let mut src = stream::open(&p).unwrap();
    let mut buf = Vec::new();
    let mut rows = 0;
    loop {
        buf.clear();
        let k = src.read_rows(500, &mut buf).unwrap();
        if k == 0 {
            break;
        }
        assert_eq!(buf[3 * 250], (750 % 251) as u8);
        rows += k;
    }
    assert_eq!(rows, n);
    let whole = decode(&p).unwrap();
    assert_eq!((whole.width(), whole.height()), (n, n));
}

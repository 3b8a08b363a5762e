//! Files `dcl count --out` writes per image: points as CSV and GeoJSON, an overlay PNG and the
//! density map as 32-bit float TIFF. Every file is written atomically.
use std::path::Path;

use anyhow::Context;

use crate::data::image_io::write_tiff_f32;
use crate::fsutil::atomic_write;
use crate::infer::points::Point;
use crate::infer::{Map, Prediction};

/// Creates the output folders and checks they are writable, before any work is done.
pub fn prepare(out: &Path, with_points: bool) -> anyhow::Result<()> {
    let mut dirs = vec![out.to_path_buf(), out.join("overlays"), out.join("density")];
    if with_points {
        dirs.push(out.join("points"));
    }
    dirs.iter().try_for_each(|d| prepare_dir(d))
}

/// Creates one output folder and checks it is writable.
pub fn prepare_dir(d: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(d)
        .with_context(|| format!("{}: cannot create output folder", d.display()))?;
    let probe = d.join(".dcl-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("{}: output folder is not writable", d.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Writes a map as a single-channel 32-bit float TIFF, atomically (the data module's writer).
fn write_map(path: &Path, map: &Map) -> anyhow::Result<()> {
    Ok(write_tiff_f32(path, map.width, map.height, &map.data)?)
}

/// The map people get: the localizer's density when there is one (cells per network pixel),
/// else the counter's coarse map (cells per 8x8 block). Either sums to the count.
fn density_of(p: &Prediction) -> &Map {
    p.density.as_ref().unwrap_or(&p.coarse)
}

pub fn write_density(dir: &Path, name: &str, p: &Prediction) -> anyhow::Result<()> {
    write_map(&dir.join(format!("{name}.coarse.tif")), &p.coarse)?;
    if let Some(d) = &p.density {
        write_map(&dir.join(format!("{name}.density.tif")), d)?;
    }
    Ok(())
}

pub fn points_csv(points: &[Point]) -> String {
    let mut s = String::from("x,y,score\n");
    for p in points {
        s += &format!("{:.2},{:.2},{:.6}\n", p.x, p.y, p.score);
    }
    s
}

/// A GeoJSON FeatureCollection of points in image pixel coordinates, as QuPath imports them
/// (objectType "annotation") and napari's GeoJSON readers accept.
pub fn points_geojson(points: &[Point]) -> String {
    let features: Vec<serde_json::Value> = points
        .iter()
        .map(|p| {
            serde_json::json!({
                "type": "Feature",
                "geometry": { "type": "Point", "coordinates": [p.x, p.y] },
                "properties": {
                    "objectType": "annotation",
                    "classification": { "name": "Cell" },
                    "score": p.score
                }
            })
        })
        .collect();
    serde_json::json!({ "type": "FeatureCollection", "features": features }).to_string()
}

pub fn write_image_outputs(
    out: &Path,
    name: &str,
    img: &image::DynamicImage,
    p: &Prediction,
    points: Option<&[Point]>,
) -> anyhow::Result<()> {
    if let Some(pts) = points {
        atomic_write(
            &out.join("points").join(format!("{name}.csv")),
            points_csv(pts).as_bytes(),
        )?;
        atomic_write(
            &out.join("points").join(format!("{name}.geojson")),
            points_geojson(pts).as_bytes(),
        )?;
    }
    let ov = crate::report::overlay::overlay(img, points, p.count);
    let mut png = std::io::Cursor::new(Vec::new());
    ov.write_to(&mut png, image::ImageFormat::Png)?;
    atomic_write(
        &out.join("overlays").join(format!("{name}.png")),
        png.get_ref(),
    )?;
    write_map(
        &out.join("density").join(format!("{name}.tif")),
        density_of(p),
    )?;
    Ok(())
}

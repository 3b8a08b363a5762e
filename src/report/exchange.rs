//! Located cells in the files other tools open: napari's points CSV, QuPath's GeoJSON and
//! ImageJ/Fiji's multi-point ROI (a `.roi`, or a RoiSet `.zip` beyond ImageJ's 65535 points a
//! ROI). `scripts/check_outputs.py` opens each with the tool's own reader (napari, roifile,
//! shapely) and compares the points.
//!
//! Coordinates. Our points are continuous image coordinates with the image's top-left corner
//! at (0, 0), so the centre of pixel (column c, row r) is (c + 0.5, r + 0.5). QuPath uses the
//! same convention (its ROIs are in full-resolution pixel units, origin at the top-left
//! corner), so its coordinates are ours. napari places pixel (r, c) at the integer coordinate
//! (r, c), and ImageJ's point selections do too (`PointRoi` subtracts 0.5 from a click to go
//! "from area to pixel center coordinates"), so both files hold ours minus 0.5.

use crate::infer::points::Point;

/// QuPath classification of the located cells.
pub const CELL_CLASS: &str = "Cell";
/// Its colour (as QuPath writes it, `[r, g, b]`): the overlays' ring colour.
pub const CELL_COLOR: [u8; 3] = [255, 230, 0];

/// The kind of QuPath object each located cell becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectType {
    /// Detections: light objects, as QuPath's own cell detection makes (the default).
    #[default]
    Detection,
    /// Annotations: editable objects (heavier in QuPath with thousands of them).
    Annotation,
}

impl ObjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Detection => "detection",
            ObjectType::Annotation => "annotation",
        }
    }
}

/// A coordinate with 2 decimals (as QuPath writes them), without trailing zeros.
fn coord(v: f64) -> String {
    let s = format!("{:.2}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// A score in JSON: 6 significant digits, finite (a non-finite score is written as 0).
fn score(v: f32) -> String {
    if v.is_finite() {
        let v = format!("{:.6e}", v).parse::<f64>().unwrap_or(0.0);
        serde_json::Number::from_f64(v).map_or("0".into(), |n| n.to_string())
    } else {
        "0".into()
    }
}

/// napari's points CSV (its builtin reader's layout): `index,axis-0,axis-1,score`, one row per
/// cell, axis-0 the row (y) and axis-1 the column (x) in napari's pixel-centre coordinates;
/// the score becomes the layer's `score` feature. Written row by row to `out`, as the GeoJSON.
pub fn write_napari_csv(out: &mut dyn std::io::Write, points: &[Point]) -> std::io::Result<()> {
    out.write_all(b"index,axis-0,axis-1,score\n")?;
    for (i, p) in points.iter().enumerate() {
        writeln!(
            out,
            "{i},{:.2},{:.2},{:.6}",
            p.y as f64 - 0.5,
            p.x as f64 - 0.5,
            p.score
        )?;
    }
    Ok(())
}

/// A GeoJSON FeatureCollection as QuPath reads it (checked against qupath-core's reader,
/// `qupath.lib.io.PathObjectTypeAdapters.PathObjectTypeAdapter.read`, `ROITypeAdapters` and
/// `GsonTools.PathClassTypeAdapter`, and QuPath pull requests #1071 and #1099, v0.4+):
///
/// - each Feature's `geometry` is a `Point` (or, with `multipoint`, one `MultiPoint` holding
///   every cell of the image), coordinates `[x, y]` in pixels from the top-left corner, which
///   `ROITypeAdapters.parseGeometry` turns into a points ROI;
/// - `properties.objectType` is `"detection"` or `"annotation"` (the names QuPath writes;
///   an unknown or missing type would become an annotation);
/// - `properties.classification` is `{"name": ..., "color": [r, g, b]}`, the object form
///   QuPath writes since v0.4 (a class read without a colour gets none);
/// - numbers go under `properties.measurements`, a JSON object of name → number, the only
///   place QuPath keeps them (other unknown properties are dropped): each cell's `score`
///   (its density peak, cells per network pixel); a MultiPoint feature has `cells` (its
///   number of points) and `count` (the image's count, which the points need not match).
///
/// No `id` is written: QuPath reads one only as a UUID and otherwise makes its own.
///
/// Written feature by feature to `out`: a whole-slide image's millions of cells (about 200
/// bytes each) are never held as one string.
pub fn write_qupath_geojson(
    out: &mut dyn std::io::Write,
    points: &[Point],
    object_type: ObjectType,
    multipoint: bool,
    count: f64,
) -> std::io::Result<()> {
    let [r, g, b] = CELL_COLOR;
    let props = |measurements: &str| {
        format!(
            "\"properties\":{{\"objectType\":\"{}\",\"classification\":{{\"name\":\"{CELL_CLASS}\",\
             \"color\":[{r},{g},{b}]}},\"measurements\":{{{measurements}}}}}",
            object_type.as_str()
        )
    };
    let xy = |p: &Point| format!("[{},{}]", coord(p.x as f64), coord(p.y as f64));
    out.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[")?;
    if multipoint {
        if !points.is_empty() {
            let count = serde_json::Number::from_f64((count * 1000.0).round() / 1000.0)
                .map_or("0".into(), |n| n.to_string());
            out.write_all(
                b"{\"type\":\"Feature\",\"geometry\":{\"type\":\"MultiPoint\",\"coordinates\":[",
            )?;
            for (i, p) in points.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                out.write_all(xy(p).as_bytes())?;
            }
            write!(
                out,
                "]}},{}}}",
                props(&format!("\"cells\":{},\"count\":{count}", points.len()))
            )?;
        }
    } else {
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            write!(
                out,
                "{{\"type\":\"Feature\",\"geometry\":{{\"type\":\"Point\",\"coordinates\":{}}},{}}}",
                xy(p),
                props(&format!("\"score\":{}", score(p.score)))
            )?;
        }
    }
    out.write_all(b"]}\n")
}

/// The most points ImageJ keeps in one point selection (its ROI header counts them in 16 bits).
pub const IMAGEJ_MAX_POINTS: usize = 65535;

/// One ImageJ multi-point ROI (`Iout` format, version 228, as `ij.io.RoiEncoder` writes a
/// `PointRoi`): big-endian 64-byte header (type 10 = point, bounds, point count, the
/// sub-pixel flag), the integer coordinates relative to the bounds, the sub-pixel float
/// coordinates (absolute, pixel-centre convention), then the second header holding `name`.
/// At most `IMAGEJ_MAX_POINTS` points (more are cut: callers split them).
pub fn imagej_roi(points: &[Point], name: &str) -> Vec<u8> {
    let pts: Vec<(f32, f32)> = points
        .iter()
        .take(IMAGEJ_MAX_POINTS)
        .map(|p| (p.x - 0.5, p.y - 0.5))
        .collect();
    let n = pts.len();
    let fmin = |f: fn(&(f32, f32)) -> f32| pts.iter().map(f).fold(f32::INFINITY, f32::min);
    let fmax = |f: fn(&(f32, f32)) -> f32| pts.iter().map(f).fold(f32::NEG_INFINITY, f32::max);
    let (left, top, right, bottom) = if n == 0 {
        (0, 0, 0, 0)
    } else {
        (
            fmin(|p| p.0).floor().max(0.0) as i32,
            fmin(|p| p.1).floor().max(0.0) as i32,
            fmax(|p| p.0).floor().max(0.0) as i32 + 1,
            fmax(|p| p.1).floor().max(0.0) as i32 + 1,
        )
    };
    let name: Vec<u16> = name.encode_utf16().collect();
    let header2 = 64 + n * 4 + n * 8;
    let mut d = vec![0u8; header2 + 64 + name.len() * 2];
    let put16 =
        |d: &mut Vec<u8>, at: usize, v: u16| d[at..at + 2].copy_from_slice(&v.to_be_bytes());
    let put32 =
        |d: &mut Vec<u8>, at: usize, v: u32| d[at..at + 4].copy_from_slice(&v.to_be_bytes());
    d[0..4].copy_from_slice(b"Iout");
    put16(&mut d, 4, 228); // version
    d[6] = 10; // point
    let clamp16 = |v: i32| v.clamp(0, 65535) as u16;
    put16(&mut d, 8, clamp16(top));
    put16(&mut d, 10, clamp16(left));
    put16(&mut d, 12, clamp16(bottom));
    put16(&mut d, 14, clamp16(right));
    put16(&mut d, 16, n as u16);
    put16(&mut d, 50, 128); // options: sub-pixel resolution
    put32(&mut d, 60, header2 as u32);
    for (i, &(x, y)) in pts.iter().enumerate() {
        put16(&mut d, 64 + 2 * i, clamp16(x.round() as i32 - left));
        put16(&mut d, 64 + 2 * n + 2 * i, clamp16(y.round() as i32 - top));
        put32(&mut d, 64 + 4 * n + 4 * i, x.to_bits());
        put32(&mut d, 64 + 8 * n + 4 * i, y.to_bits());
    }
    // second header: name offset and length (in UTF-16 units)
    let name_at = header2 + 64;
    put32(&mut d, header2 + 16, name_at as u32);
    put32(&mut d, header2 + 20, name.len() as u32);
    for (i, c) in name.iter().enumerate() {
        put16(&mut d, name_at + 2 * i, *c);
    }
    d
}

/// CRC-32 (ISO-HDLC, as ZIP uses).
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A ZIP archive stored uncompressed (ImageJ's RoiSet: one `.roi` per entry), written entry by
/// entry to `out`: only the central directory (about 60 bytes an entry) is held.
struct ZipStored<'a> {
    out: &'a mut dyn std::io::Write,
    at: u32,
    central: Vec<u8>,
    entries: u16,
}

impl<'a> ZipStored<'a> {
    fn new(out: &'a mut dyn std::io::Write) -> ZipStored<'a> {
        ZipStored {
            out,
            at: 0,
            central: Vec::new(),
            entries: 0,
        }
    }

    fn add(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let (crc, size, at) = (crc32(data), data.len() as u32, self.at);
        let header = |v: &mut Vec<u8>, central: bool| {
            le32(v, if central { 0x0201_4b50 } else { 0x0403_4b50 });
            if central {
                le16(v, 20); // made by
            }
            le16(v, 20); // version needed
            le16(v, 0x0800); // flags: UTF-8 names
            le16(v, 0); // stored
            le16(v, 0); // time
            le16(v, 0x21); // date: 1980-01-01
            le32(v, crc);
            le32(v, size);
            le32(v, size);
            le16(v, name.len() as u16);
            le16(v, 0); // extra
            if central {
                le16(v, 0); // comment
                le16(v, 0); // disk
                le16(v, 0); // internal attributes
                le32(v, 0); // external attributes
                le32(v, at);
            }
            v.extend_from_slice(name.as_bytes());
        };
        let mut local = Vec::new();
        header(&mut local, false);
        self.out.write_all(&local)?;
        self.out.write_all(data)?;
        header(&mut self.central, true);
        self.at += (local.len() + data.len()) as u32;
        self.entries += 1;
        Ok(())
    }

    fn finish(self) -> std::io::Result<()> {
        let mut end = self.central;
        let cd_len = end.len() as u32;
        le32(&mut end, 0x0605_4b50);
        le16(&mut end, 0);
        le16(&mut end, 0);
        le16(&mut end, self.entries);
        le16(&mut end, self.entries);
        le32(&mut end, cd_len);
        le32(&mut end, self.at);
        le16(&mut end, 0);
        self.out.write_all(&end)
    }
}

fn le16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes())
}
fn le32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes())
}

/// The file kind an image's cells go to in ImageJ: `roi` (one multi-point ROI) when ImageJ can
/// hold them in one (at most 65535 points), else `zip` (a RoiSet).
pub fn imagej_extension(points: usize) -> &'static str {
    if points <= IMAGEJ_MAX_POINTS {
        "roi"
    } else {
        "zip"
    }
}

/// An image's cells for ImageJ, written to `out` as the file `imagej_extension` names: one
/// multi-point ROI, or a RoiSet of ROIs of up to 65535 points each, named NAME-1, NAME-2, ...,
/// which the ROI Manager opens (built a ROI at a time: a whole slide has millions of cells).
pub fn write_imagej_points(
    out: &mut dyn std::io::Write,
    points: &[Point],
    name: &str,
) -> std::io::Result<()> {
    if imagej_extension(points.len()) == "roi" {
        return out.write_all(&imagej_roi(points, name));
    }
    let mut zip = ZipStored::new(out);
    for (i, c) in points.chunks(IMAGEJ_MAX_POINTS).enumerate() {
        let part = format!("{name}-{}", i + 1);
        zip.add(&format!("{part}.roi"), &imagej_roi(c, &part))?;
    }
    zip.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geojson(points: &[Point], object_type: ObjectType, multipoint: bool, count: f64) -> String {
        let mut out = Vec::new();
        write_qupath_geojson(&mut out, points, object_type, multipoint, count).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn pts() -> Vec<Point> {
        vec![
            Point {
                x: 10.5,
                y: 20.5,
                score: 0.25,
            },
            Point {
                x: 3.25,
                y: 7.75,
                score: 0.125,
            },
        ]
    }

    #[test]
    fn napari_rows_are_y_then_x_at_pixel_centres() {
        let mut s = Vec::new();
        write_napari_csv(&mut s, &pts()).unwrap();
        assert_eq!(
            String::from_utf8(s).unwrap(),
            "index,axis-0,axis-1,score\n0,20.00,10.00,0.250000\n1,7.25,2.75,0.125000\n"
        );
    }

    #[test]
    fn geojson_has_what_qupath_reads() {
        let v: serde_json::Value =
            serde_json::from_str(&geojson(&pts(), ObjectType::Detection, false, 2.0)).unwrap();
        let f = &v["features"][0];
        assert_eq!(f["geometry"]["type"], "Point");
        assert_eq!(
            f["geometry"]["coordinates"],
            serde_json::json!([10.5, 20.5])
        );
        assert_eq!(f["properties"]["objectType"], "detection");
        assert_eq!(
            f["properties"]["classification"],
            serde_json::json!({"name": "Cell", "color": [255, 230, 0]})
        );
        assert_eq!(f["properties"]["measurements"]["score"], 0.25);
        let v: serde_json::Value =
            serde_json::from_str(&geojson(&pts(), ObjectType::Annotation, true, 2.4)).unwrap();
        assert_eq!(v["features"].as_array().unwrap().len(), 1);
        let f = &v["features"][0];
        assert_eq!(f["geometry"]["type"], "MultiPoint");
        assert_eq!(
            f["geometry"]["coordinates"],
            serde_json::json!([[10.5, 20.5], [3.25, 7.75]])
        );
        assert_eq!(f["properties"]["objectType"], "annotation");
        assert_eq!(f["properties"]["measurements"]["cells"], 2);
        assert_eq!(f["properties"]["measurements"]["count"], 2.4);
        // no cells: an empty collection
        let v: serde_json::Value =
            serde_json::from_str(&geojson(&[], ObjectType::Detection, true, 0.0)).unwrap();
        assert_eq!(v["features"], serde_json::json!([]));
    }

    #[test]
    fn imagej_roi_layout() {
        let r = imagej_roi(&pts(), "img");
        assert_eq!(&r[0..4], b"Iout");
        assert_eq!(r[6], 10);
        let be16 = |at: usize| u16::from_be_bytes([r[at], r[at + 1]]);
        let be32 = |at: usize| u32::from_be_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
        // bounds: left 2, top 7, 2 points
        assert_eq!((be16(8), be16(10), be16(16)), (7, 2, 2));
        // the float coordinates, pixel-centre convention
        assert_eq!(f32::from_bits(be32(64 + 8)), 10.0);
        assert_eq!(f32::from_bits(be32(64 + 16 + 4)), 7.25);
        let h2 = be32(60) as usize;
        assert_eq!(be32(h2 + 20), 3);
        assert_eq!(r.len(), h2 + 64 + 6);
    }

    #[test]
    fn many_points_go_to_a_roiset() {
        let many: Vec<Point> = (0..IMAGEJ_MAX_POINTS + 10)
            .map(|i| Point {
                x: (i % 1000) as f32 + 0.5,
                y: (i / 1000) as f32 + 0.5,
                score: 1.0,
            })
            .collect();
        assert_eq!(imagej_extension(many.len()), "zip");
        let mut z = Vec::new();
        write_imagej_points(&mut z, &many, "big").unwrap();
        assert_eq!(&z[0..4], b"PK\x03\x04");
        // two entries of 65535 and 10 points, then the central directory and its end record
        let first = imagej_roi(&many[..IMAGEJ_MAX_POINTS], "big-1");
        let second = imagej_roi(&many[IMAGEJ_MAX_POINTS..], "big-2");
        let local = |name: &str| 30 + name.len();
        let data_end = local("big-1.roi") + first.len() + local("big-2.roi") + second.len();
        assert_eq!(&z[local("big-1.roi")..][..first.len()], &first[..]);
        assert_eq!(&z[data_end..data_end + 4], b"PK\x01\x02");
        let end = &z[z.len() - 22..];
        assert_eq!(&end[0..4], b"PK\x05\x06");
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2);
        assert_eq!(
            u32::from_le_bytes([end[16], end[17], end[18], end[19]]) as usize,
            data_end
        );
        assert_eq!(imagej_extension(pts().len()), "roi");
        let mut r = Vec::new();
        write_imagej_points(&mut r, &pts(), "small").unwrap();
        assert_eq!(r, imagej_roi(&pts(), "small"));
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}

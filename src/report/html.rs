//! One self-contained HTML page per run (`dcl count --out`, `dcl eval --out`): a summary, the
//! plots, a table of every image that sorts by any column (a few lines of inline script, no
//! library, nothing fetched: the page works offline from its folder), thumbnails linking to
//! the full-size overlays, and the run's settings and checkpoint hashes. Every file it shows is
//! linked relative to the page, so the folder can be moved or zipped as a whole.
use std::fmt::Write;

/// A table column; numeric columns sort by value, others by text (numbers within text in
/// order: img2 before img10).
#[derive(Clone, Debug)]
pub struct Column {
    pub title: String,
    pub numeric: bool,
}

impl Column {
    pub fn text(title: &str) -> Column {
        Column {
            title: title.into(),
            numeric: false,
        }
    }
    pub fn num(title: &str) -> Column {
        Column {
            title: title.into(),
            numeric: true,
        }
    }
}

/// One table cell.
#[derive(Clone, Debug)]
pub enum Cell {
    Text(String),
    /// A number, sorted by `value` and shown as `shown`.
    Num {
        value: f64,
        shown: String,
    },
    /// A thumbnail (`src`, relative to the page) linking to `href`; sorted by `alt`.
    Thumb {
        src: String,
        href: String,
        alt: String,
    },
    Empty,
}

impl Cell {
    pub fn num(value: f64, decimals: usize) -> Cell {
        Cell::Num {
            value,
            shown: format!("{value:.decimals$}"),
        }
    }
}

/// What a page shows, top to bottom.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub title: String,
    /// Key figures, shown as a row of boxes.
    pub summary: Vec<(String, String)>,
    /// (caption, image path relative to the page).
    pub plots: Vec<(String, String)>,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
    /// Settings of the run: checkpoints and their hashes, read-out parameters, versions.
    pub settings: Vec<(String, String)>,
    /// A line under the table (e.g. where the files are).
    pub note: String,
}

/// Text escaped for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A relative path as a URL: every byte outside the unreserved set (and '/') percent-encoded,
/// so names with spaces, '#', '?' or '%' link to their files.
pub fn href(path: &str) -> String {
    let mut o = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1e1e1e;background:#fafafa}
h1{font-size:22px;margin:0 0 12px}h2{font-size:17px;margin:28px 0 8px}
.summary{display:flex;flex-wrap:wrap;gap:10px}
.summary div{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.summary b{display:block;font-size:18px}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plots figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
.plots img{max-width:560px;width:100%;display:block}
.plots figcaption{font-size:12px;color:#555;text-align:center}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:middle}
th{background:#f0f0f0;cursor:pointer;user-select:none;position:sticky;top:0;white-space:nowrap}
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td img{max-width:96px;max-height:96px;display:block}
#filter{margin:0 0 8px;padding:4px 8px;width:280px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px}
dt{color:#555}dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
.note{color:#555;font-size:12px}
";

/// Sorting by a header click (again: the other way), filtering by name, and `#sort=COLUMN`
/// (or `#sort=-COLUMN`, descending) in the address to open the page sorted.
const SCRIPT: &str = "
(function(){
var t=document.getElementById('images');if(!t)return;var b=t.tBodies[0];var hs=t.tHead.rows[0].cells;
function sortBy(i,desc){var num=hs[i].dataset.type==='num';var rows=Array.prototype.slice.call(b.rows);
rows.sort(function(r,s){var x=r.cells[i].dataset.v,y=s.cells[i].dataset.v;
var c=num?(parseFloat(x)-parseFloat(y)):x.localeCompare(y,undefined,{numeric:true,sensitivity:'base'});
if(num&&isNaN(c))c=isNaN(parseFloat(x))?(isNaN(parseFloat(y))?0:1):-1;return desc?-c:c;});
rows.forEach(function(r){b.appendChild(r);});
for(var k=0;k<hs.length;k++)hs[k].removeAttribute('aria-sort');
hs[i].setAttribute('aria-sort',desc?'descending':'ascending');}
for(var i=0;i<hs.length;i++)(function(i){hs[i].addEventListener('click',function(){
sortBy(i,hs[i].getAttribute('aria-sort')==='ascending');});})(i);
var m=/sort=(-?)([^&]+)/.exec(decodeURIComponent(location.hash));
if(m)for(var j=0;j<hs.length;j++)if(hs[j].dataset.key===m[2])sortBy(j,m[1]==='-');
var f=document.getElementById('filter');if(f)f.addEventListener('input',function(){var q=f.value.toLowerCase();
Array.prototype.forEach.call(b.rows,function(r){r.style.display=r.cells[0].dataset.v.toLowerCase().indexOf(q)<0?'none':'';});});
})();
";

/// A column's key for `#sort=`: its title in lower case, spaces as '-'.
pub fn column_key(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect()
}

/// The page as one HTML document (inline style and script, images linked relative to it).
pub fn render(p: &Page) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(&p.title),
        esc(&p.title)
    );
    if !p.summary.is_empty() {
        h.push_str("<div class=\"summary\" id=\"summary\">");
        for (k, v) in &p.summary {
            let _ = write!(h, "<div>{}<b>{}</b></div>", esc(k), esc(v));
        }
        h.push_str("</div>\n");
    }
    if !p.plots.is_empty() {
        h.push_str("<h2>Plots</h2><div class=\"plots\">");
        for (caption, src) in &p.plots {
            let _ = write!(
                h,
                "<figure><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a><figcaption>{1}</figcaption></figure>",
                esc(&href(src)),
                esc(caption)
            );
        }
        h.push_str("</div>\n");
    }
    let _ = write!(
        h,
        "<h2>Images ({})</h2><input id=\"filter\" type=\"search\" placeholder=\"filter by name\">\n\
         <table id=\"images\"><thead><tr>",
        p.rows.len()
    );
    for c in &p.columns {
        let _ = write!(
            h,
            "<th data-type=\"{}\" data-key=\"{}\" title=\"sort\">{}</th>",
            if c.numeric { "num" } else { "text" },
            esc(&column_key(&c.title)),
            esc(&c.title)
        );
    }
    h.push_str("</tr></thead><tbody>\n");
    for row in &p.rows {
        h.push_str("<tr>");
        for cell in row {
            match cell {
                Cell::Text(t) => {
                    let _ = write!(h, "<td data-v=\"{0}\">{0}</td>", esc(t));
                }
                Cell::Num { value, shown } => {
                    let v = if value.is_finite() {
                        value.to_string()
                    } else {
                        String::new()
                    };
                    let _ = write!(h, "<td class=\"num\" data-v=\"{v}\">{}</td>", esc(shown));
                }
                Cell::Thumb { src, href: to, alt } => {
                    let _ = write!(
                        h,
                        "<td data-v=\"{0}\"><a href=\"{1}\"><img loading=\"lazy\" src=\"{2}\" alt=\"{0}\"></a></td>",
                        esc(alt),
                        esc(&href(to)),
                        esc(&href(src))
                    );
                }
                Cell::Empty => h.push_str("<td data-v=\"\"></td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
    if !p.note.is_empty() {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", esc(&p.note));
    }
    if !p.settings.is_empty() {
        h.push_str("<h2>Settings</h2><dl id=\"settings\">");
        for (k, v) in &p.settings {
            let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
        }
        h.push_str("</dl>\n");
    }
    let _ = write!(h, "<script>{SCRIPT}</script>\n</body></html>\n");
    h
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_links_encoded() {
        assert_eq!(esc("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        assert_eq!(href("overlays/a b#1%.png"), "overlays/a%20b%231%25.png");
        assert_eq!(href("thumbs/é.png"), "thumbs/%C3%A9.png");
        let page = Page {
            title: "t".into(),
            columns: vec![Column::text("image"), Column::num("count")],
            rows: vec![vec![Cell::Text("<x>".into()), Cell::num(2.5, 1)]],
            ..Page::default()
        };
        let h = render(&page);
        assert!(h.contains("<td data-v=\"&lt;x&gt;\">&lt;x&gt;</td>"), "{h}");
        assert!(h.contains("data-v=\"2.5\">2.5</td>"), "{h}");
        assert!(!h.contains("http"), "nothing fetched: {h}");
        assert!(utc_now().ends_with(" UTC") && utc_now().len() == 23);
    }
}

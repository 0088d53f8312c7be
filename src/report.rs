//! Reading, merging and rendering filter reports.
//!
//! - [`read_report`] reads back a report written by `h2e filter` (`--report`
//!   CSV or `--jsonl`; the format is recognised from the content).
//! - [`merge_shards`] combines the reports of a sharded run (`--shard i/n`)
//!   into the report the unsharded run gives: shard `i` holds the samples
//!   whose index modulo `n` is `i`, in source order, so taking rows
//!   round-robin from shards `0, 1, ..., n-1` restores the source order.
//!   Flags are kept as each shard decided them: under the default
//!   `confident-learning` rule, or with `--max-flag-rate` or
//!   `--min-per-class`, the decision was per shard, and the merged report
//!   still says so; with `--operating-point argmax` (or `threshold=T`) and
//!   `--min-per-class 0` the merge equals the unsharded run byte for byte.
//! - [`render_html`] makes one self-contained HTML page (inline CSS, inline
//!   SVG, thumbnails as `data:` URLs, no external resource): a summary,
//!   per-class bars of kept / flagged / error counts, and the most
//!   suspicious samples of every class with their given and predicted labels.
//!
//! ```no_run
//! use h2e::report::{read_report, save_html, HtmlOptions};
//! let report = read_report("report.csv".as_ref()).unwrap();
//! let src = h2e::data::open_source("new_images/".as_ref()).unwrap();
//! save_html("report.html".as_ref(), &report, Some(src.as_ref()), &HtmlOptions::default()).unwrap();
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::data::{encode_png, resize, Source};
use crate::error::{Error, Result};
use crate::filter::{FilterReport, FilterRow, CSV_COLUMNS};
use crate::fsutil::write_atomic;

/// Default number of thumbnails per class.
pub const DEFAULT_TOP_K: usize = 8;

/// Escapes `& < > " '` for HTML text and attribute values.
pub fn escape_html(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Splits RFC 4180 CSV text into records (quoted fields may hold commas,
/// doubled quotes and newlines). `name` is used in errors.
pub fn parse_csv(text: &str, name: &str) -> Result<Vec<Vec<String>>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut at_start, mut line) = (false, true, 1usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',' | '\n' | '\r')) {
                    return Err(Error::invalid(name, "CSV report", format!("line {line}: text after a closing quote")));
                }
            }
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                at_start = true;
                continue;
            }
            (false, c) => field.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err(Error::invalid(name, "CSV report", "unterminated quoted field at the end of the file"));
    }
    if !at_start {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// A JSONL row as `h2e filter --jsonl` writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    path: String,
    given_label: String,
    predicted_label: String,
    label_score: Option<f32>,
    noise_score: Option<f32>,
    is_label_issue: bool,
    error: Option<String>,
}

fn rows_from_csv(text: &str, name: &str) -> Result<Vec<FilterRow>> {
    let records = parse_csv(text, name)?;
    let bad = |line: usize, why: String| Error::invalid(name, "CSV report", format!("record {line}: {why}"));
    match records.first() {
        Some(h) if h.iter().map(String::as_str).eq(CSV_COLUMNS) => {}
        Some(h) => {
            return Err(Error::invalid(
                name,
                "CSV report",
                format!(
                    "header is {:?}, expected {:?} (written by `h2e filter --report`)",
                    h.join(","),
                    CSV_COLUMNS.join(",")
                ),
            ))
        }
        None => return Err(Error::invalid(name, "CSV report", "the file is empty (no header)")),
    }
    let mut rows = Vec::with_capacity(records.len() - 1);
    for (i, r) in records.into_iter().enumerate().skip(1) {
        let [path, given_label, predicted_label, score, flag, error]: [String; 6] =
            r.try_into().map_err(|r: Vec<String>| bad(i + 1, format!("{} fields, expected 6", r.len())))?;
        let label_score = match score.as_str() {
            "" => None,
            s => Some(s.parse::<f32>().map_err(|_| bad(i + 1, format!("label_score {s:?} is not a number")))?),
        };
        let is_label_issue = match flag.as_str() {
            "true" => true,
            "false" => false,
            f => return Err(bad(i + 1, format!("is_label_issue {f:?} is not true or false"))),
        };
        rows.push(FilterRow {
            path,
            given_label,
            predicted_label,
            label_score,
            noise_score: label_score.map(|s| (1.0 - s).clamp(0.0, 1.0)),
            is_label_issue,
            error: (!error.is_empty()).then_some(error),
        });
    }
    Ok(rows)
}

fn rows_from_jsonl(text: &str, name: &str) -> Result<Vec<FilterRow>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: JsonRow = serde_json::from_str(line)
            .map_err(|e| Error::invalid(name, "JSONL report", format!("line {}: {e}", i + 1)))?;
        rows.push(FilterRow {
            path: r.path,
            given_label: r.given_label,
            predicted_label: r.predicted_label,
            label_score: r.label_score,
            noise_score: r.noise_score.or(r.label_score.map(|s| (1.0 - s).clamp(0.0, 1.0))),
            is_label_issue: r.is_label_issue,
            error: r.error,
        });
    }
    Ok(rows)
}

/// Parses a report held in memory: JSON lines when it starts with `{`,
/// else the CSV of `h2e filter --report` (header checked). `name` is used
/// in errors.
pub fn parse_report(text: &str, name: &str) -> Result<FilterReport> {
    let rows = match text.trim_start().starts_with('{') {
        true => rows_from_jsonl(text, name)?,
        false => rows_from_csv(text, name)?,
    };
    Ok(FilterReport { rows, seconds: 0.0 })
}

/// Reads a report written by `h2e filter` (`--report` CSV or `--jsonl`).
/// Rows read from CSV get `noise_score = 1 - label_score`.
pub fn read_report(path: &Path) -> Result<FilterReport> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    parse_report(&text, &path.display().to_string())
}

/// Rows in shard `k` of `n` when the whole run has `total` rows.
fn shard_len(total: usize, k: usize, n: usize) -> usize {
    (total + n - 1 - k) / n
}

/// Merges the reports of shards `0/n, 1/n, ..., n-1/n` (named, in that
/// order) into the unsharded report: row `j` comes from shard `j % n`.
/// Errors when the row counts cannot be those of shards in that order
/// (shard `k` of `N` rows has `ceil((N - k) / n)`), e.g. when a file is
/// missing or the files are out of order. Flags are kept as given.
pub fn merge_shards(shards: Vec<(String, FilterReport)>) -> Result<FilterReport> {
    let n = shards.len();
    if n == 0 {
        return Err(Error::Argument("merge: no shard reports given".into()));
    }
    let total: usize = shards.iter().map(|s| s.1.rows.len()).sum();
    for (k, (name, report)) in shards.iter().enumerate() {
        let expected = shard_len(total, k, n);
        if report.rows.len() != expected {
            let counts: Vec<String> = shards.iter().map(|s| s.1.rows.len().to_string()).collect();
            return Err(Error::dataset(
                name,
                format!(
                    "has {} rows, but shard {k}/{n} of a {total}-row run has {expected} (row counts given: {}); \
                     pass every shard's report, in shard order 0/{n} .. {}/{n}",
                    report.rows.len(),
                    counts.join(", "),
                    n - 1
                ),
            ));
        }
    }
    let mut iters: Vec<_> = shards.into_iter().map(|s| s.1.rows.into_iter()).collect();
    let rows = (0..total).map(|j| iters[j % n].next().expect("row counts checked")).collect();
    Ok(FilterReport { rows, seconds: 0.0 })
}

/// Options of [`render_html`].
#[derive(Debug, Clone, PartialEq)]
pub struct HtmlOptions {
    /// Thumbnails per class: the samples with the highest noise score.
    pub top_k: usize,
    /// Longest thumbnail side in pixels (larger images are scaled down).
    pub thumb_size: u32,
    /// Page title.
    pub title: String,
    /// Error rows listed at most.
    pub max_errors: usize,
}

impl Default for HtmlOptions {
    fn default() -> Self {
        HtmlOptions { top_k: DEFAULT_TOP_K, thumb_size: 128, title: "h2e label issue report".into(), max_errors: 200 }
    }
}

/// Per-class counts of a report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassSummary {
    /// The given label ("" for unlabelled samples).
    pub class: String,
    /// Rows of the class.
    pub samples: usize,
    /// Flagged rows.
    pub flagged: usize,
    /// Rows with an error.
    pub errors: usize,
    /// Row indices of the top-K scored rows, highest noise score first.
    pub top: Vec<usize>,
}

/// Per-class counts (largest class first, then by name) and each class's
/// `top_k` most suspicious rows.
pub fn class_summaries(report: &FilterReport, top_k: usize) -> Vec<ClassSummary> {
    let mut by: HashMap<&str, ClassSummary> = HashMap::new();
    for (i, r) in report.rows.iter().enumerate() {
        let c = by
            .entry(&r.given_label)
            .or_insert_with(|| ClassSummary { class: r.given_label.clone(), ..Default::default() });
        c.samples += 1;
        c.flagged += r.is_label_issue as usize;
        c.errors += r.error.is_some() as usize;
        if r.error.is_none() && r.noise_score.is_some() {
            c.top.push(i);
        }
    }
    let mut out: Vec<ClassSummary> = by.into_values().collect();
    let score = |i: usize| report.rows[i].noise_score.unwrap_or(0.0);
    for c in &mut out {
        c.top.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
        c.top.truncate(top_k);
    }
    out.sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| a.class.cmp(&b.class)));
    out
}

/// A thumbnail: `(data URL, width, height)`, or why there is none.
type Thumb = std::result::Result<(String, u32, u32), String>;

fn thumbnail(src: &dyn Source, index: Option<usize>, max: u32) -> Thumb {
    let i = index.ok_or("not in the data source")?;
    let img = src.load(i).map_err(|e| e.to_string())?;
    let scale = (max as f64 / img.width.max(img.height) as f64).min(1.0);
    let (w, h) =
        (((img.width as f64 * scale).round() as u32).max(1), ((img.height as f64 * scale).round() as u32).max(1));
    let img = if scale < 1.0 { resize(&img, img.channels, w, h) } else { img };
    Ok((format!("data:image/png;base64,{}", base64(&encode_png(&img))), w, h))
}

/// Thumbnails of `rows` (indices into `report`), decoded on all cores.
fn thumbnails(report: &FilterReport, rows: &[usize], src: Option<&dyn Source>, max: u32) -> Vec<Thumb> {
    let Some(src) = src else { return rows.iter().map(|_| Err("no data source given".to_string())).collect() };
    let index: HashMap<&str, usize> = src.samples().iter().enumerate().map(|(i, s)| (s.path.as_str(), i)).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = rows.len().div_ceil(threads).max(1);
    let index = &index;
    std::thread::scope(|s| {
        let parts: Vec<_> = rows
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|&r| thumbnail(src, index.get(report.rows[r].path.as_str()).copied(), max))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().expect("thumbnail decoder panicked")).collect()
    })
}

const CSS: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #ddd}h3{margin:18px 0 6px;font-size:15px}
.sub{color:#666;margin:0 0 16px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:22px}.card span{color:#666}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child,.left td,.left th{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.thumb{margin:0;width:136px;background:#fff;border:2px solid #ddd;border-radius:6px;padding:4px;font-size:12px}
.thumb.flagged{border-color:#d9534f}
.thumb img,.thumb .missing{display:block;width:128px;height:128px;object-fit:contain;background:#eee}
.thumb img.px{image-rendering:pixelated}
.thumb .missing{color:#999;font-size:11px;overflow:hidden}
.thumb figcaption{word-break:break-all}
.path{color:#666}.pred{color:#b52b27;font-weight:600}.ok{color:#2d7a3a}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
";

fn pct(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

fn class_name(c: &str) -> &str {
    if c.is_empty() {
        "(unlabelled)"
    } else {
        c
    }
}

/// Horizontal stacked bars (kept, flagged, errors) per class as inline SVG.
fn bars_svg(classes: &[ClassSummary]) -> String {
    let (label_w, bar_w, row_h) = (200.0, 620.0, 22.0);
    let max = classes.iter().map(|c| c.samples).max().unwrap_or(1).max(1) as f64;
    let height = row_h * classes.len() as f64 + 8.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="bars" width="{w}" height="{height}" viewBox="0 0 {w} {height}" role="img" aria-label="kept and flagged samples per class">"#,
        w = label_w + bar_w + 260.0
    );
    for (i, c) in classes.iter().enumerate() {
        let y = 4.0 + row_h * i as f64;
        let name = class_name(&c.class);
        let short: String =
            if name.chars().count() > 26 { name.chars().take(25).chain(['…']).collect() } else { name.to_string() };
        let kept = c.samples - c.flagged - c.errors;
        let _ = write!(
            s,
            r#"<g><title>{t}: {kept} kept, {f} flagged, {e} errors</title><text x="{x}" y="{ty}" text-anchor="end" font-size="12">{short}</text>"#,
            t = escape_html(name),
            f = c.flagged,
            e = c.errors,
            x = label_w - 8.0,
            ty = y + 15.0,
            short = escape_html(&short),
        );
        let mut x = label_w;
        for (n, colour) in [(kept, "#8fbf94"), (c.flagged, "#d9534f"), (c.errors, "#aaaaaa")] {
            let w = bar_w * n as f64 / max;
            if n > 0 {
                let _ = write!(
                    s,
                    r#"<rect x="{x:.1}" y="{y}" width="{w:.1}" height="{h}" fill="{colour}"/>"#,
                    h = row_h - 4.0
                );
            }
            x += w;
        }
        let _ = write!(
            s,
            r##"<text x="{x:.1}" y="{ty}" font-size="12" fill="#444">{f} of {n} flagged ({p:.1}%){e}</text></g>"##,
            x = x + 6.0,
            ty = y + 15.0,
            f = c.flagged,
            n = c.samples,
            p = pct(c.flagged, c.samples),
            e = match c.errors {
                0 => String::new(),
                1 => ", 1 error".into(),
                e => format!(", {e} errors"),
            },
        );
    }
    s.push_str("</svg>");
    s
}

/// Renders the report as one self-contained HTML page. Thumbnails are
/// decoded from `src` by path (the report's `path` is the source's sample
/// path); without a source, or for a path it lacks, a placeholder says why.
pub fn render_html(report: &FilterReport, src: Option<&dyn Source>, opts: &HtmlOptions) -> String {
    let classes = class_summaries(report, opts.top_k);
    let rows: Vec<usize> = classes.iter().flat_map(|c| c.top.iter().copied()).collect();
    let mut thumbs = thumbnails(report, &rows, src, opts.thumb_size.max(1)).into_iter();
    let (n, flagged, errors) = (report.rows.len(), report.flagged(), report.errors());
    let e = |s: &str| escape_html(s).into_owned();

    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t}</title><style>{CSS}</style></head><body>\n<h1>{t}</h1>\n",
        t = e(&opts.title)
    );
    if let Some(src) = src {
        let _ = writeln!(h, "<p class=\"sub\">data: {}</p>", e(src.location()));
    }
    let _ = write!(h, "<section class=\"cards\" id=\"summary\">");
    let labelled = classes.iter().filter(|c| !c.class.is_empty()).count();
    for (v, label) in [
        (n.to_string(), "samples"),
        (format!("{flagged} <small>({:.1}%)</small>", pct(flagged, n)), "flagged"),
        (errors.to_string(), "errors"),
        (labelled.to_string(), "classes"),
    ] {
        let _ = write!(h, "<div class=\"card\"><b>{v}</b><span>{label}</span></div>");
    }
    h.push_str("</section>\n<h2>Per class</h2>\n<p class=\"legend\"><span style=\"background:#8fbf94\"></span>kept<span style=\"background:#d9534f\"></span>flagged<span style=\"background:#aaa\"></span>error</p>\n");
    h.push_str(&bars_svg(&classes));
    h.push_str("\n<table><thead><tr><th>class</th><th>samples</th><th>kept</th><th>flagged</th><th>flagged %</th><th>errors</th></tr></thead><tbody>\n");
    for c in &classes {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
            e(class_name(&c.class)),
            c.samples,
            c.samples - c.flagged - c.errors,
            c.flagged,
            pct(c.flagged, c.samples),
            c.errors
        );
    }
    h.push_str("</tbody></table>\n");

    let _ = writeln!(
        h,
        "<h2>Most suspicious samples</h2>\n<p class=\"sub\">Up to {} per class, highest noise score (1 &minus; probability of the given label) first; flagged ones have a red border.</p>",
        opts.top_k
    );
    for c in classes.iter().filter(|c| !c.top.is_empty()) {
        let _ = write!(
            h,
            "<h3>{} <small>&mdash; {} of {} flagged</small></h3>\n<div class=\"grid\">",
            e(class_name(&c.class)),
            c.flagged,
            c.samples
        );
        for &i in &c.top {
            let r = &report.rows[i];
            let img = match thumbs.next().expect("one thumbnail per row") {
                Ok((url, w, hgt)) => {
                    let px = if w.max(hgt) < 96 { " class=\"px\"" } else { "" };
                    format!("<img{px} src=\"{url}\" width=\"{w}\" height=\"{hgt}\" alt=\"{}\">", e(&r.path))
                }
                Err(why) => format!("<div class=\"missing\" title=\"{0}\">no image: {0}</div>", e(&why)),
            };
            let same = r.predicted_label == r.given_label;
            let _ = write!(
                h,
                "<figure class=\"thumb{}\">{img}<figcaption><div class=\"path\">{}</div>given <b>{}</b><br>predicted <span class=\"{}\">{}</span><br>noise {:.3}</figcaption></figure>",
                if r.is_label_issue { " flagged" } else { "" },
                e(&r.path),
                e(class_name(&r.given_label)),
                if same { "ok" } else { "pred" },
                e(&r.predicted_label),
                r.noise_score.unwrap_or(0.0),
            );
        }
        h.push_str("</div>\n");
    }

    if errors > 0 {
        let _ = writeln!(h, "<h2>Errors</h2>\n<table class=\"left\"><thead><tr><th>path</th><th>given</th><th>error</th></tr></thead><tbody>");
        for r in report.rows.iter().filter(|r| r.error.is_some()).take(opts.max_errors) {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                e(&r.path),
                e(&r.given_label),
                e(r.error.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</tbody></table>\n");
        if errors > opts.max_errors {
            let _ = writeln!(h, "<p class=\"sub\">and {} more</p>", errors - opts.max_errors);
        }
    }
    // A harmless script (the page works without it): counts the thumbnails,
    // so a headless browser can tell that the page loaded and ran.
    h.push_str(
        "<p class=\"sub\" id=\"footer\">written by h2e</p>\n<script>\
         document.getElementById('footer').textContent = 'written by h2e; ' + document.querySelectorAll('figure.thumb').length + ' thumbnails';\
         document.body.dataset.thumbs = document.querySelectorAll('figure.thumb img').length;\
         </script>\n</body></html>\n",
    );
    h
}

/// Renders the page and writes it to `path` atomically.
pub fn save_html(path: &Path, report: &FilterReport, src: Option<&dyn Source>, opts: &HtmlOptions) -> Result<()> {
    write_atomic(path, render_html(report, src, opts).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &str, given: &str, score: Option<f32>, flag: bool) -> FilterRow {
        FilterRow {
            path: path.into(),
            given_label: given.into(),
            predicted_label: if score.is_some() { "b".into() } else { String::new() },
            label_score: score,
            noise_score: score.map(|s| 1.0 - s),
            is_label_issue: flag,
            error: score.is_none().then(|| "cannot decode".to_string()),
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn escaping_and_csv_round_trip() {
        assert_eq!(escape_html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let report = FilterReport {
            rows: vec![
                row("a/1.png", "a", Some(0.25), true),
                row("a/x,\"y\"\n.png", "a", None, false),
                row("b/2.png", "b", Some(0.9), false),
            ],
            seconds: 0.0,
        };
        let mut csv = Vec::new();
        report.write_csv(&mut csv).unwrap();
        let back = parse_report(std::str::from_utf8(&csv).unwrap(), "r.csv").unwrap();
        assert_eq!(back.rows, report.rows);
        let mut jsonl = Vec::new();
        report.write_jsonl(&mut jsonl).unwrap();
        assert_eq!(parse_report(std::str::from_utf8(&jsonl).unwrap(), "r.jsonl").unwrap().rows, report.rows);
        assert!(parse_report("path,label\n", "bad.csv").unwrap_err().to_string().contains("header"));
        assert!(parse_report(&format!("{}\na,b\n", CSV_COLUMNS.join(",")), "bad.csv")
            .unwrap_err()
            .to_string()
            .contains("record 2"));
    }

    #[test]
    fn merge_interleaves_and_checks_counts() {
        let rows: Vec<FilterRow> = (0..7).map(|i| row(&format!("{i}.png"), "a", Some(0.5), false)).collect();
        let shard = |k: usize| FilterReport { rows: rows.iter().skip(k).step_by(3).cloned().collect(), seconds: 0.0 };
        let merged = merge_shards((0..3).map(|k| (format!("s{k}"), shard(k))).collect()).unwrap();
        assert_eq!(merged.rows, rows);
        let e = merge_shards([2, 0, 1].iter().map(|&k| (format!("s{k}"), shard(k))).collect()).unwrap_err().to_string();
        assert!(e.contains("s2") && e.contains("shard order"), "{e}");
    }

    #[test]
    fn summaries_rank_by_noise_score() {
        let report = FilterReport {
            rows: vec![
                row("1", "a", Some(0.9), false),
                row("2", "a", Some(0.1), true),
                row("3", "a", None, false),
                row("4", "b", Some(0.5), false),
            ],
            seconds: 0.0,
        };
        let c = class_summaries(&report, 1);
        assert_eq!(
            (c[0].class.as_str(), c[0].samples, c[0].flagged, c[0].errors, c[0].top.clone()),
            ("a", 3, 1, 1, vec![1])
        );
        let html = render_html(&report, None, &HtmlOptions::default());
        assert_eq!(html.matches("<figure").count(), 3);
        assert!(html.contains("no image: no data source given") && !html.contains("http"));
    }
}

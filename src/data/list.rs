//! A list of images given by a manifest file: CSV with a `path` column and
//! an optional `label` column (class names), or JSONL with `{"path": ..,
//! "label": ..}` objects. Relative paths are resolved against the manifest's
//! folder. Without labels the data is *unlabelled*: `h2e filter` then gives
//! predictions and confidence only.

use super::{SampleMeta, Source, Split};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Images listed in a CSV or JSONL manifest.
#[derive(Debug)]
pub struct ListSource {
    location: String,
    base: PathBuf,
    classes: Vec<String>,
    samples: Vec<SampleMeta>,
    labelled: bool,
}

/// Splits one CSV line into fields (RFC 4180 quoting; no embedded newlines).
pub(crate) fn csv_fields(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut cur)),
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(cur);
    Ok(fields)
}

impl ListSource {
    /// True for `.csv` and `.jsonl` files.
    pub fn is_list_file(path: &Path) -> bool {
        matches!(path.extension().and_then(|e| e.to_str()), Some("csv" | "jsonl"))
    }

    /// Reads the manifest at `path`.
    pub fn open(path: &Path) -> Result<ListSource> {
        let location = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let jsonl = path.extension().is_some_and(|e| e == "jsonl");
        let mut rows: Vec<(String, Option<String>)> = Vec::new();
        let bad = |line: usize, r: String| Error::invalid(format!("{location}:{line}"), "image list", r);
        if jsonl {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
                let p = v
                    .get("path")
                    .and_then(|p| p.as_str())
                    .ok_or_else(|| bad(i + 1, "missing string \"path\"".into()))?;
                let label = match v.get("label") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    Some(o) => return Err(bad(i + 1, format!("\"label\" must be a string, got {o}"))),
                };
                rows.push((p.to_string(), label));
            }
        } else {
            let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
            let (_, header) =
                lines.next().ok_or_else(|| bad(1, "empty file (expected a header with a `path` column)".into()))?;
            let header = csv_fields(header.trim_end_matches('\r')).map_err(|e| bad(1, e))?;
            let pcol = header
                .iter()
                .position(|h| h == "path")
                .ok_or_else(|| bad(1, "no `path` column in the header".into()))?;
            let lcol = header.iter().position(|h| h == "label" || h == "given_label");
            for (i, line) in lines {
                let f = csv_fields(line.trim_end_matches('\r')).map_err(|e| bad(i + 1, e))?;
                let p = f
                    .get(pcol)
                    .ok_or_else(|| bad(i + 1, format!("{} fields, header has {}", f.len(), header.len())))?;
                let label = lcol.and_then(|c| f.get(c)).filter(|l| !l.is_empty()).cloned();
                rows.push((p.clone(), label));
            }
        }
        if rows.is_empty() {
            return Err(Error::dataset(&location, "the list names no images"));
        }
        let with = rows.iter().filter(|r| r.1.is_some()).count();
        if with != 0 && with != rows.len() {
            return Err(Error::dataset(
                &location,
                format!("{with} of {} rows have a label; label all rows or none", rows.len()),
            ));
        }
        let labelled = with != 0;
        let mut classes: Vec<String> = rows.iter().filter_map(|r| r.1.clone()).collect();
        classes.sort();
        classes.dedup();
        let samples = rows
            .into_iter()
            .map(|(p, l)| SampleMeta {
                label: l.map(|l| classes.binary_search(&l).expect("listed")).unwrap_or(0),
                path: p,
                split: Split::Train,
                true_label: None,
            })
            .collect();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(ListSource { location, base, classes, samples, labelled })
    }
}

impl Source for ListSource {
    fn location(&self) -> &str {
        &self.location
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn samples(&self) -> &[SampleMeta] {
        &self.samples
    }
    fn labelled(&self) -> bool {
        self.labelled
    }
    fn read_encoded(&self, index: usize) -> Result<Vec<u8>> {
        let path = self.base.join(&self.samples[index].path);
        std::fs::read(&path).map_err(|e| Error::io("reading", path, e))
    }
    fn load(&self, index: usize) -> Result<super::Image> {
        let bytes = self.read_encoded(index)?;
        let name = self.base.join(&self.samples[index].path).display().to_string();
        super::decode_image(&bytes, &name, &super::DecodeLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_fields(r#"a,"b,c","d""e",,"#).unwrap(), vec!["a", "b,c", "d\"e", "", ""]);
        assert!(csv_fields(r#""open"#).is_err());
    }

    #[test]
    fn lists_in_both_formats_and_mixed_labels_refused() {
        let t = tempfile::tempdir().unwrap();
        let csv = t.path().join("l.csv");
        std::fs::write(&csv, "path,label\nx/1.png,cat\n\"x/2,b.png\",dog\nx/3.png,cat\n").unwrap();
        let s = ListSource::open(&csv).unwrap();
        assert!(s.labelled());
        assert_eq!(s.classes(), ["cat", "dog"]);
        assert_eq!(s.samples()[1].path, "x/2,b.png");
        assert_eq!(s.samples()[1].label, 1);
        let jl = t.path().join("l.jsonl");
        std::fs::write(&jl, "{\"path\": \"a.png\"}\n{\"path\": \"b.png\"}\n").unwrap();
        assert!(!ListSource::open(&jl).unwrap().labelled());
        std::fs::write(&jl, "{\"path\": \"a.png\", \"label\": \"x\"}\n{\"path\": \"b.png\"}\n").unwrap();
        let e = ListSource::open(&jl).unwrap_err().to_string();
        assert!(e.contains("label all rows or none"), "{e}");
        std::fs::write(&csv, "file,label\n").unwrap();
        let e = ListSource::open(&csv).unwrap_err().to_string();
        assert!(e.contains("l.csv:1") && e.contains("no `path` column"), "{e}");
    }
}

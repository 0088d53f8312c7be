//! `manifest.json` of a dataset bundle: types and validation.

use crate::data::Split;
use crate::error::{Error, Result};
use crate::fsutil::is_safe_member;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Value of the manifest's `format` field.
pub const FORMAT: &str = "h2e-dataset";
/// Newest manifest version this build reads and the one it writes.
pub const VERSION: u32 = 1;

/// The manifest of a dataset bundle (see `bundles/README.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Class names; a label is an index into this list.
    pub classes: Vec<String>,
    /// Every sample in the bundle.
    pub samples: Vec<ManifestSample>,
    /// Free-form provenance (how the bundle was made), optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<serde_json::Value>,
}

/// One sample entry of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSample {
    /// Zip member name, laid out `split/class/file`.
    pub path: String,
    /// Given label (class index).
    pub label: usize,
    /// `train`, `val` or `test`.
    pub split: Split,
    /// Ground-truth label when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub true_label: Option<usize>,
    /// Hex SHA-256 of the member's bytes, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Manifest {
    /// Parses and validates manifest JSON. `name` is used in errors.
    pub fn parse(bytes: &[u8], name: &str) -> Result<Manifest> {
        // Format and version are checked first, so a newer or foreign file
        // gets an error about that rather than about some field.
        #[derive(Deserialize)]
        struct Header {
            format: Option<serde_json::Value>,
            version: Option<serde_json::Value>,
        }
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| Error::invalid(name, "manifest", format!("not JSON: {e}")))?;
        let format = header.format.as_ref().and_then(|v| v.as_str());
        if format != Some(FORMAT) {
            return Err(Error::invalid(
                name,
                "manifest",
                format!("field \"format\" is {format:?}, expected \"{FORMAT}\"; is this an h2e dataset bundle?"),
            ));
        }
        let version = header
            .version
            .as_ref()
            .and_then(|v| v.as_u64())
            .ok_or_else(|| Error::invalid(name, "manifest", "missing or non-integer \"version\""))?;
        if version > VERSION as u64 {
            return Err(Error::NewerVersion {
                path: name.to_string(),
                what: "dataset manifest",
                found: version.min(u32::MAX as u64) as u32,
                supported: VERSION,
            });
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::invalid(name, "manifest", e.to_string()))?;
        m.validate(name)?;
        Ok(m)
    }

    /// Checks labels, paths and class names.
    pub fn validate(&self, name: &str) -> Result<()> {
        let bad = |r: String| Error::invalid(name, "manifest", r);
        if self.classes.is_empty() {
            return Err(bad("\"classes\" is empty".into()));
        }
        let mut seen = HashSet::new();
        for c in &self.classes {
            if !seen.insert(c.as_str()) {
                return Err(bad(format!("class {c:?} listed twice")));
            }
        }
        let n = self.classes.len();
        let mut paths = HashSet::new();
        for (i, s) in self.samples.iter().enumerate() {
            if s.label >= n {
                return Err(bad(format!("sample {i} ({}) has label {} but there are {n} classes", s.path, s.label)));
            }
            if let Some(t) = s.true_label {
                if t >= n {
                    return Err(bad(format!("sample {i} ({}) has true_label {t} but there are {n} classes", s.path)));
                }
            }
            if !is_safe_member(&s.path) || s.path.ends_with('/') {
                return Err(bad(format!("sample {i} has unsafe path {:?}", s.path)));
            }
            if s.path == "manifest.json" {
                return Err(bad("a sample cannot be named manifest.json".into()));
            }
            if !paths.insert(s.path.as_str()) {
                return Err(bad(format!("path {:?} listed twice", s.path)));
            }
            if let Some(h) = &s.sha256 {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(format!("sample {i} ({}) has a malformed sha256", s.path)));
                }
            }
        }
        Ok(())
    }
}

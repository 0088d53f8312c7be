//! `inspect`, `verify` and `unpack`.

use super::reader::{BundleSource, SafeZip, MAX_MEMBER_BYTES};
use crate::data::{decode_image, DecodeLimits, Source, Split};
use crate::error::{Error, Result};
use crate::fsutil::is_safe_member;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Per-class counts of one split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassStats {
    /// Class name.
    pub class: String,
    /// Samples labelled with this class.
    pub count: usize,
    /// Of those, how many have a different ground truth (when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noisy: Option<usize>,
}

/// Counts of one split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitStats {
    /// Samples in the split.
    pub total: usize,
    /// One entry per class, label order.
    pub per_class: Vec<ClassStats>,
}

/// What `h2e bundle inspect --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InspectReport {
    /// Class names.
    pub classes: Vec<String>,
    /// Split name to counts (only splits that have samples).
    pub splits: BTreeMap<String, SplitStats>,
}

/// Counts samples per split and class (and noisy ones where ground truth is
/// known) for any source.
pub fn inspect(source: &dyn Source) -> InspectReport {
    let classes = source.classes().to_vec();
    let mut splits = BTreeMap::new();
    for split in Split::ALL {
        let samples: Vec<_> = source.samples().iter().filter(|s| s.split == split).collect();
        if samples.is_empty() {
            continue;
        }
        let known = samples.iter().all(|s| s.true_label.is_some());
        let per_class = classes
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let of_c = samples.iter().filter(|s| s.label == c);
                ClassStats {
                    class: name.clone(),
                    count: of_c.clone().count(),
                    noisy: known.then(|| of_c.filter(|s| s.true_label != Some(c)).count()),
                }
            })
            .collect();
        splits.insert(split.as_str().to_string(), SplitStats { total: samples.len(), per_class });
    }
    InspectReport { classes, splits }
}

/// Result of [`verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Samples checked.
    pub checked: usize,
    /// One line per problem found (checksum mismatch, undecodable image, ...).
    pub problems: Vec<String>,
}

/// Opens the bundle (structure, manifest, member names) and checks every
/// sample's checksum and that it decodes.
pub fn verify(path: &Path, on_progress: &mut dyn FnMut(usize, usize)) -> Result<VerifyReport> {
    let bundle = BundleSource::open(path)?;
    let mut report = VerifyReport::default();
    let total = bundle.samples().len();
    let limits = DecodeLimits::default();
    for (i, s) in bundle.manifest().samples.iter().enumerate() {
        report.checked += 1;
        match bundle.read_encoded(i) {
            Err(e) => report.problems.push(e.to_string()),
            Ok(bytes) => {
                if let Some(want) = &s.sha256 {
                    let got = format!("{:x}", Sha256::digest(&bytes));
                    if !got.eq_ignore_ascii_case(want) {
                        report.problems.push(format!("{}: sha256 mismatch (manifest {want}, member {got})", s.path));
                    }
                }
                if let Err(e) = decode_image(&bytes, &format!("{}!{}", path.display(), s.path), &limits) {
                    report.problems.push(e.to_string());
                }
            }
        }
        on_progress(i + 1, total);
    }
    Ok(report)
}

struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Extracts a bundle to `out` (which must not exist or be empty): every
/// member, `manifest.json` included. Extraction goes to a temporary folder
/// beside `out` that is renamed into place at the end, so a failure leaves
/// nothing; no member can land outside `out`.
pub fn unpack(path: &Path, out: &Path) -> Result<usize> {
    // Validates the manifest and member names before anything is written.
    drop(BundleSource::open(path)?);
    if out.exists() {
        let empty = out.is_dir() && std::fs::read_dir(out).map_err(|e| Error::io("reading", out, e))?.next().is_none();
        if !empty {
            return Err(Error::io(
                "unpacking into",
                out,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "destination exists and is not an empty folder"),
            ));
        }
        std::fs::remove_dir(out).map_err(|e| Error::io("replacing", out, e))?;
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp_path = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::create_dir_all(&tmp_path).map_err(|e| Error::io("creating", &tmp_path, e))?;
    let mut tmp = TempDir(Some(tmp_path.clone()));
    let mut zip = SafeZip::open_file(path)?;
    let mut names: Vec<(String, usize)> = zip.by_name.iter().map(|(k, v)| (k.clone(), *v)).collect();
    names.sort();
    let mut written = 0;
    for (member, idx) in names {
        if !is_safe_member(&member) {
            return Err(Error::UnsafeMember { path: path.to_path_buf(), member });
        }
        let dest = tmp_path.join(&member);
        if member.ends_with('/') {
            std::fs::create_dir_all(&dest).map_err(|e| Error::io("creating", &dest, e))?;
            continue;
        }
        let bytes = zip.read_index(idx, MAX_MEMBER_BYTES.max(super::MAX_MANIFEST_BYTES))?;
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::io("creating", p, e))?;
        }
        std::fs::write(&dest, bytes).map_err(|e| Error::io("writing", &dest, e))?;
        written += 1;
    }
    std::fs::rename(&tmp_path, out).map_err(|e| Error::io("renaming into place", out, e))?;
    tmp.0 = None;
    Ok(written)
}

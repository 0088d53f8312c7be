//! Writing dataset bundles: deterministic bytes, images stored without
//! re-compression, written atomically.

use super::manifest::{Manifest, ManifestSample, FORMAT, VERSION};
use crate::data::{decode_image, DecodeLimits, Source, Split};
use crate::error::{Error, Result};
use crate::fsutil::{safe_component, AtomicFile};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Builds a bundle member by member. Nothing appears at the destination
/// until [`BundleWriter::finish`] succeeds.
pub struct BundleWriter {
    zip: ZipWriter<AtomicFile>,
    dest: std::path::PathBuf,
    classes: Vec<String>,
    samples: Vec<ManifestSample>,
    names: HashSet<String>,
}

fn options(method: CompressionMethod) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(method)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644)
}

impl BundleWriter {
    /// Starts a bundle at `out` with these classes.
    pub fn create(out: &Path, classes: Vec<String>) -> Result<BundleWriter> {
        if classes.is_empty() {
            return Err(Error::Argument("a bundle needs at least one class".into()));
        }
        let file = AtomicFile::create(out)?;
        Ok(BundleWriter {
            zip: ZipWriter::new(file),
            dest: out.to_path_buf(),
            classes,
            samples: Vec::new(),
            names: HashSet::new(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::io("writing", &self.dest, std::io::Error::other(e.to_string()))
    }

    /// Adds an image (already encoded) as `split/<class of label>/file_name`.
    /// A name already used gets a numeric prefix. Returns the member name.
    pub fn add(
        &mut self,
        split: Split,
        label: usize,
        true_label: Option<usize>,
        file_name: &str,
        bytes: &[u8],
    ) -> Result<String> {
        if label >= self.classes.len() || true_label.is_some_and(|t| t >= self.classes.len()) {
            return Err(Error::Argument(format!("label out of range for {} classes", self.classes.len())));
        }
        let dir = format!("{}/{}", split.as_str(), safe_component(&self.classes[label]));
        let base = safe_component(file_name);
        let mut name = format!("{dir}/{base}");
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{dir}/{k}_{base}");
            k += 1;
        }
        self.zip.start_file(name.as_str(), options(CompressionMethod::Stored)).map_err(|e| self.err(e))?;
        self.zip.write_all(bytes).map_err(|e| self.err(e))?;
        let sha = format!("{:x}", Sha256::digest(bytes));
        self.names.insert(name.clone());
        self.samples.push(ManifestSample { path: name.clone(), label, split, true_label, sha256: Some(sha) });
        Ok(name)
    }

    /// Number of samples added so far.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Writes the manifest and renames the bundle into place.
    pub fn finish(mut self, provenance: Option<serde_json::Value>) -> Result<Manifest> {
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            classes: self.classes.clone(),
            samples: std::mem::take(&mut self.samples),
            provenance,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        self.zip.start_file("manifest.json", options(CompressionMethod::Deflated)).map_err(|e| self.err(e))?;
        self.zip.write_all(&json).map_err(|e| self.err(e))?;
        let file =
            self.zip.finish().map_err(|e| Error::io("writing", &self.dest, std::io::Error::other(e.to_string())))?;
        file.commit()?;
        Ok(manifest)
    }
}

/// Options for [`pack`].
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// Skip images that fail to decode (reporting them) instead of failing.
    pub skip_bad: bool,
    /// Provenance stored in the manifest.
    pub provenance: Option<serde_json::Value>,
}

/// What [`pack`] did.
#[derive(Debug, Clone, Default)]
pub struct PackSummary {
    /// Samples written.
    pub written: usize,
    /// Samples skipped with `skip_bad`, with the reason.
    pub skipped: Vec<String>,
}

/// Packs every sample of `source` into a bundle at `out`, checking that each
/// image decodes. `on_progress(done, total)` is called per sample.
pub fn pack(
    source: &dyn Source,
    out: &Path,
    opts: &PackOptions,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<PackSummary> {
    let mut w = BundleWriter::create(out, source.classes().to_vec())?;
    let mut summary = PackSummary::default();
    let total = source.samples().len();
    let limits = DecodeLimits::default();
    for (i, meta) in source.samples().iter().enumerate() {
        let checked = source.read_encoded(i).and_then(|bytes| {
            decode_image(&bytes, &format!("{}/{}", source.location(), meta.path), &limits).map(|_| bytes)
        });
        match checked {
            Ok(bytes) => {
                let file_name = meta.path.rsplit('/').next().unwrap_or(&meta.path);
                w.add(meta.split, meta.label, meta.true_label, file_name, &bytes)?;
            }
            Err(e) if opts.skip_bad => summary.skipped.push(e.to_string()),
            Err(e) => return Err(e),
        }
        on_progress(i + 1, total);
    }
    if w.is_empty() {
        return Err(Error::dataset(source.location(), "no readable images to pack"));
    }
    summary.written = w.len();
    w.finish(opts.provenance.clone())?;
    Ok(summary)
}

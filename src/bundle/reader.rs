//! Reading a dataset bundle in place, without extracting it.

use super::manifest::Manifest;
use crate::data::{SampleMeta, Source};
use crate::error::{Error, Result};
use crate::fsutil::is_safe_member;
use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zip::ZipArchive;

/// Largest decompressed size accepted for one image member (zip-bomb guard).
pub const MAX_MEMBER_BYTES: u64 = 64 * 1024 * 1024;
/// Largest decompressed size accepted for `manifest.json`.
pub const MAX_MANIFEST_BYTES: u64 = 512 * 1024 * 1024;

pub(crate) trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// A zip opened with every member name checked: no unsafe paths, no
/// duplicates. Shared by dataset and identifier bundles.
pub(crate) struct SafeZip {
    pub path: PathBuf,
    pub archive: ZipArchive<Box<dyn ReadSeek>>,
    pub by_name: HashMap<String, usize>,
}

impl SafeZip {
    pub fn open_file(path: &Path) -> Result<SafeZip> {
        let f = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
        Self::new(path.to_path_buf(), Box::new(std::io::BufReader::new(f)))
    }

    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<SafeZip> {
        Self::new(PathBuf::from(name), Box::new(Cursor::new(bytes)))
    }

    pub fn new(path: PathBuf, mut reader: Box<dyn ReadSeek>) -> Result<SafeZip> {
        // The zip crate keeps only the last of several same-named entries, so
        // duplicates are looked for in the central directory itself.
        if let Some(names) = central_directory_names(&mut reader) {
            let mut seen = HashSet::new();
            for name in names {
                if !seen.insert(name.clone()) {
                    return Err(Error::DuplicateMember { path, member: name });
                }
            }
        }
        let mut archive = ZipArchive::new(reader).map_err(|error| Error::Zip { path: path.clone(), error })?;
        let mut by_name = HashMap::new();
        let mut seen = HashSet::new();
        for i in 0..archive.len() {
            let name = {
                let f = archive.by_index_raw(i).map_err(|error| Error::Zip { path: path.clone(), error })?;
                f.name().to_string()
            };
            if !is_safe_member(&name) {
                return Err(Error::UnsafeMember { path, member: name });
            }
            if !seen.insert(name.clone()) {
                return Err(Error::DuplicateMember { path, member: name });
            }
            by_name.insert(name, i);
        }
        Ok(SafeZip { path, archive, by_name })
    }

    /// Reads member `name`, refusing more than `limit` decompressed bytes.
    pub fn read(&mut self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let idx = *self.by_name.get(name).ok_or_else(|| {
            Error::dataset(self.path.display().to_string(), format!("member {name:?} is missing from the zip"))
        })?;
        self.read_index(idx, limit)
    }

    pub fn read_index(&mut self, idx: usize, limit: u64) -> Result<Vec<u8>> {
        let path = self.path.clone();
        let mut f = self.archive.by_index(idx).map_err(|error| Error::Zip { path: path.clone(), error })?;
        let member = f.name().to_string();
        if f.size() > limit {
            return Err(Error::MemberTooLarge { path, member, limit });
        }
        let mut out = Vec::with_capacity(f.size() as usize);
        (&mut f)
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::io("decompressing", path.join(&member), e))?;
        if out.len() as u64 > limit {
            return Err(Error::MemberTooLarge { path, member, limit });
        }
        Ok(out)
    }
}

/// Entry names listed in the central directory, in order, for a plain
/// (non-zip64) archive; `None` when the directory cannot be read this way
/// (the zip crate then reports what is wrong).
fn central_directory_names(r: &mut Box<dyn ReadSeek>) -> Option<Vec<String>> {
    use std::io::SeekFrom;
    let len = r.seek(SeekFrom::End(0)).ok()?;
    let tail_len = len.min(22 + 65535);
    r.seek(SeekFrom::Start(len - tail_len)).ok()?;
    let mut tail = vec![0u8; tail_len as usize];
    r.read_exact(&mut tail).ok()?;
    let eocd = tail.windows(4).rposition(|w| w == [0x50, 0x4b, 0x05, 0x06])?;
    let e = tail.get(eocd..eocd + 22)?;
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as u64;
    let (count, size, offset) = (u16_at(e, 10), u32_at(e, 12), u32_at(e, 16));
    if count == 0xFFFF || offset == 0xFFFF_FFFF || offset + size > len || size > 256 << 20 {
        return None;
    }
    r.seek(SeekFrom::Start(offset)).ok()?;
    let mut cd = vec![0u8; size as usize];
    r.read_exact(&mut cd).ok()?;
    let mut names = Vec::with_capacity(count);
    let mut i = 0;
    for _ in 0..count {
        let h = cd.get(i..i + 46)?;
        if h[..4] != [0x50, 0x4b, 0x01, 0x02] {
            return None;
        }
        let (n, x, c) = (u16_at(h, 28), u16_at(h, 30), u16_at(h, 32));
        names.push(String::from_utf8_lossy(cd.get(i + 46..i + 46 + n)?).into_owned());
        i += 46 + n + x + c;
    }
    r.seek(SeekFrom::Start(0)).ok()?;
    Some(names)
}

/// A dataset bundle read in place: the manifest is parsed on open, images
/// are decompressed one at a time on demand.
pub struct BundleSource {
    location: String,
    zip: Mutex<SafeZip>,
    manifest: Manifest,
    samples: Vec<SampleMeta>,
    members: Vec<usize>,
}

impl std::fmt::Debug for BundleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSource").field("location", &self.location).field("samples", &self.samples.len()).finish()
    }
}

impl BundleSource {
    /// Opens a bundle file.
    pub fn open(path: &Path) -> Result<BundleSource> {
        Self::from_zip(SafeZip::open_file(path)?)
    }

    /// Opens a bundle held in memory; `name` stands for its path in errors.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<BundleSource> {
        Self::from_zip(SafeZip::from_bytes(name, bytes)?)
    }

    fn from_zip(mut zip: SafeZip) -> Result<BundleSource> {
        let location = zip.path.display().to_string();
        if !zip.by_name.contains_key("manifest.json") {
            return Err(Error::invalid(
                &location,
                "manifest",
                "manifest.json is missing; is this an h2e dataset bundle? (make one with `h2e bundle pack DIR -o X.zip`)",
            ));
        }
        let bytes = zip.read("manifest.json", MAX_MANIFEST_BYTES)?;
        let manifest = Manifest::parse(&bytes, &format!("{location}!manifest.json"))?;
        let mut members = Vec::with_capacity(manifest.samples.len());
        for s in &manifest.samples {
            match zip.by_name.get(&s.path) {
                Some(&i) => members.push(i),
                None => {
                    return Err(Error::dataset(
                        &location,
                        format!("manifest lists {:?} but the zip has no such member", s.path),
                    ))
                }
            }
        }
        let samples = manifest
            .samples
            .iter()
            .map(|s| SampleMeta { path: s.path.clone(), label: s.label, split: s.split, true_label: s.true_label })
            .collect();
        Ok(BundleSource { location, zip: Mutex::new(zip), manifest, samples, members })
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

impl Source for BundleSource {
    fn location(&self) -> &str {
        &self.location
    }
    fn classes(&self) -> &[String] {
        &self.manifest.classes
    }
    fn samples(&self) -> &[SampleMeta] {
        &self.samples
    }
    fn read_encoded(&self, index: usize) -> Result<Vec<u8>> {
        let mut zip = self.zip.lock().unwrap_or_else(|p| p.into_inner());
        zip.read_index(self.members[index], MAX_MEMBER_BYTES)
    }
}

//! ImageFolder: `root/<class>/<file>`, or with splits
//! `root/<split>/<class>/<file>` (what `unzip` of a dataset bundle gives).

use super::{SampleMeta, Source, Split};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A directory of images, one sub-folder per class.
///
/// Classes are sorted by name (byte order), files within a class likewise,
/// so labels and sample order are the same on every machine. Files whose
/// extension is not an image format are skipped (with a `log` warning);
/// an image format this build cannot decode is an error naming the file.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    location: String,
    classes: Vec<String>,
    samples: Vec<SampleMeta>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("reading folder", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("reading folder", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let is_dir = std::fs::metadata(&path).map_err(|e| Error::io("reading", &path, e))?.is_dir();
        out.push((name, path, is_dir));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// True when `name`'s extension is an image format; errors when it is one
/// this build cannot decode.
pub(crate) fn is_image_file(path: &Path) -> Result<bool> {
    let Some(ext) = path.extension().and_then(|e| e.to_str()) else { return Ok(false) };
    match image::ImageFormat::from_extension(ext) {
        Some(fmt) if fmt.reading_enabled() => Ok(true),
        Some(fmt) => Err(Error::dataset(
            path.display().to_string(),
            format!("unsupported image format {fmt:?} (this build decodes png, jpeg, gif, bmp, tiff, webp, pnm, tga, ico, qoi, hdr, dds, farbfeld); convert it first"),
        )),
        None => Ok(false),
    }
}

impl ImageFolder {
    /// Scans `root`. Errors on a missing root, a class folder with no
    /// images, or a folder with no classes.
    pub fn open(root: &Path) -> Result<ImageFolder> {
        let location = root.display().to_string();
        let top = sorted_entries(root)?;
        let dirs: Vec<_> = top.iter().filter(|e| e.2).collect();
        if dirs.is_empty() {
            return Err(Error::dataset(&location, "no class folders found (expected ROOT/<class>/<image>)"));
        }
        let split_layout = dirs.iter().all(|d| Split::parse(&d.0).is_some());
        // (split, class name, folder)
        let mut class_dirs: Vec<(Split, String, PathBuf)> = Vec::new();
        if split_layout {
            for (name, path, _) in dirs {
                let split = Split::parse(name).expect("checked");
                for (cname, cpath, is_dir) in sorted_entries(path)? {
                    if is_dir {
                        class_dirs.push((split, cname, cpath));
                    }
                }
            }
        } else {
            for (name, path, _) in dirs {
                class_dirs.push((Split::Train, name.clone(), path.clone()));
            }
        }
        let mut classes: Vec<String> = class_dirs.iter().map(|c| c.1.clone()).collect();
        classes.sort();
        classes.dedup();
        let mut samples = Vec::new();
        for (split, cname, cpath) in &class_dirs {
            let label = classes.binary_search(cname).expect("class listed");
            let before = samples.len();
            for (fname, fpath, is_dir) in sorted_entries(cpath)? {
                if is_dir {
                    continue;
                }
                if !is_image_file(&fpath)? {
                    log::warn!("skipping non-image file {}", fpath.display());
                    continue;
                }
                let rel = fpath.strip_prefix(root).unwrap_or(&fpath);
                let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                let _ = fname;
                samples.push(SampleMeta { path: rel, label, split: *split, true_label: None });
            }
            if samples.len() == before {
                return Err(Error::dataset(cpath.display().to_string(), "class folder contains no images"));
            }
        }
        Ok(ImageFolder { root: root.to_path_buf(), location, classes, samples })
    }

    /// The folder scanned.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Source for ImageFolder {
    fn location(&self) -> &str {
        &self.location
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn samples(&self) -> &[SampleMeta] {
        &self.samples
    }
    fn read_encoded(&self, index: usize) -> Result<Vec<u8>> {
        let path = self.root.join(&self.samples[index].path);
        std::fs::read(&path).map_err(|e| Error::io("reading", path, e))
    }
    fn load(&self, index: usize) -> Result<super::Image> {
        let bytes = self.read_encoded(index)?;
        let name = self.root.join(&self.samples[index].path).display().to_string();
        super::decode_image(&bytes, &name, &super::DecodeLimits::default())
    }
}

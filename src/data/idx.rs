//! IDX files (the MNIST / Fashion-MNIST format), raw or gzipped.
//!
//! The four files are decoded into memory (47 MB for Fashion-MNIST's 60k
//! training images): gzip gives no random access, and the format is only
//! used for MNIST-sized sets.

use super::{encode_png, Image, SampleMeta, Source, Split};
use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package installs its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The ten Fashion-MNIST class names, label order.
pub fn fashion_mnist_classes() -> Vec<String> {
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Images and labels from IDX files (`train-*` and `t10k-*`).
#[derive(Debug)]
pub struct IdxSource {
    location: String,
    classes: Vec<String>,
    samples: Vec<SampleMeta>,
    rows: usize,
    cols: usize,
    /// Pixels of sample i live at `i * rows * cols`.
    pixels: Vec<u8>,
}

const MAX_IDX_BYTES: u64 = 1 << 30;

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_IDX_BYTES)
            .read_to_end(&mut out)
            .map_err(|e| Error::invalid(path.display().to_string(), "gzip stream", e.to_string()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of u8 values; returns (dims, data).
pub(crate) fn parse_idx(bytes: &[u8], name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |r: String| Error::invalid(name, "IDX file", r);
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("bad magic number (expected 0x0000 08 NN)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x} unsupported (only unsigned byte 0x08)", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let total =
        dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("dimensions overflow".into()))?;
    if bytes.len() - header != total {
        return Err(bad(format!("expected {total} data bytes for dims {dims:?}, found {}", bytes.len() - header)));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()].into_iter().map(|n| dir.join(n)).find(|p| p.exists())
}

impl IdxSource {
    /// True when `dir` holds `train-images-idx3-ubyte[.gz]`.
    pub fn looks_like_idx_dir(dir: &Path) -> bool {
        find(dir, "train-images-idx3-ubyte").is_some()
    }

    /// Fashion-MNIST from `dir` with its class names.
    pub fn fashion_mnist(dir: &Path) -> Result<IdxSource> {
        if !dir.exists() {
            return Err(Error::dataset(
                dir.display().to_string(),
                "Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist`",
            ));
        }
        let mut s = Self::open_dir(dir)?;
        if s.classes.len() > 10 {
            return Err(Error::dataset(&s.location, "labels above 9 in a Fashion-MNIST folder"));
        }
        s.classes = fashion_mnist_classes();
        Ok(s)
    }

    /// Reads `train-{images,labels}` and, when present, `t10k-*` from `dir`.
    /// Class names come from `classes.txt` (one per line) when present, else
    /// the label numbers.
    pub fn open_dir(dir: &Path) -> Result<IdxSource> {
        let location = dir.display().to_string();
        let mut samples = Vec::new();
        let mut pixels = Vec::new();
        let mut shape = None;
        let mut max_label = 0usize;
        for (split, prefix) in [(Split::Train, "train"), (Split::Test, "t10k")] {
            let (Some(ip), Some(lp)) =
                (find(dir, &format!("{prefix}-images-idx3-ubyte")), find(dir, &format!("{prefix}-labels-idx1-ubyte")))
            else {
                if split == Split::Train {
                    return Err(Error::dataset(
                        &location,
                        "missing train-images-idx3-ubyte[.gz] or train-labels-idx1-ubyte[.gz]",
                    ));
                }
                continue;
            };
            let (idims, idata) = parse_idx(&read_maybe_gz(&ip)?, &ip.display().to_string())?;
            let (ldims, ldata) = parse_idx(&read_maybe_gz(&lp)?, &lp.display().to_string())?;
            if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
                return Err(Error::invalid(
                    &location,
                    "IDX files",
                    format!("images {idims:?} and labels {ldims:?} do not match"),
                ));
            }
            let s = (idims[1], idims[2]);
            if *shape.get_or_insert(s) != s {
                return Err(Error::invalid(&location, "IDX files", "train and test image sizes differ"));
            }
            for (i, &l) in ldata.iter().enumerate() {
                max_label = max_label.max(l as usize);
                samples.push(SampleMeta {
                    path: format!("{prefix}-{i:05}.png"),
                    label: l as usize,
                    split,
                    true_label: None,
                });
            }
            pixels.extend_from_slice(&idata);
        }
        let (rows, cols) = shape.expect("train present");
        let names_file = dir.join("classes.txt");
        let classes = if names_file.exists() {
            let text = std::fs::read_to_string(&names_file).map_err(|e| Error::io("reading", &names_file, e))?;
            let c: Vec<String> = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
            if c.len() <= max_label {
                return Err(Error::invalid(
                    names_file.display().to_string(),
                    "classes.txt",
                    format!("{} names but labels go up to {max_label}", c.len()),
                ));
            }
            c
        } else {
            (0..=max_label).map(|l| l.to_string()).collect()
        };
        Ok(IdxSource { location, classes, samples, rows, cols, pixels })
    }

    /// The image of sample `index` without PNG round trip.
    pub fn image(&self, index: usize) -> Image {
        let n = self.rows * self.cols;
        Image {
            width: self.cols as u32,
            height: self.rows as u32,
            channels: 1,
            pixels: self.pixels[index * n..(index + 1) * n].to_vec(),
        }
    }
}

impl Source for IdxSource {
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
        Ok(encode_png(&self.image(index)))
    }
    fn load(&self, index: usize) -> Result<Image> {
        Ok(self.image(index))
    }
}

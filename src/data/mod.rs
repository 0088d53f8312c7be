//! Dataset sources: one interface over ImageFolder directories, dataset
//! bundles (read in place from the zip) and IDX files.
//!
//! A [`Source`] lists its samples up front (path, label, split, optional ground
//! truth) and decodes an image only when [`Source::load`] asks for it, so a
//! 60k-image source costs a few MB of metadata, not its pixels.
//!
//! ```no_run
//! use h2e::data::{open_source, Split};
//! let src = open_source(std::path::Path::new("my_images/")).unwrap();
//! let first = src.samples().iter().position(|s| s.split == Split::Train).unwrap();
//! let img = src.load(first).unwrap();
//! println!("{} classes, first image {}x{}", src.classes().len(), img.width, img.height);
//! ```

mod folder;
mod idx;
mod image_io;
mod list;
mod set;

pub use folder::ImageFolder;
pub use idx::{fashion_mnist_classes, IdxSource, FASHION_MNIST_DIR};
pub use image_io::{decode_image, encode_png, resize, DecodeLimits};
pub use list::ListSource;
pub use set::{load_split, load_train_test, TensorSet};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which part of a data set a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training data (the noisy labels live here).
    Train,
    /// Validation data.
    Val,
    /// Test data (clean in NLT benchmarks).
    Test,
}

impl Split {
    /// All splits in manifest order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The lowercase name used in manifests and folder layouts.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// Parses `train`, `val` or `test`.
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "val" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

/// One sample's metadata; the pixels are decoded on demand by [`Source::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleMeta {
    /// File path relative to the source root, or zip member name.
    pub path: String,
    /// The given (possibly noisy) label, an index into [`Source::classes`].
    pub label: usize,
    /// Which split it belongs to.
    pub split: Split,
    /// Ground-truth label when the source knows it (NLT benchmarks).
    pub true_label: Option<usize>,
}

/// A decoded image: 8-bit pixels, row-major, channels interleaved (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: u8,
    /// `height * width * channels` bytes.
    pub pixels: Vec<u8>,
}

/// A data set: its class names, its samples, and a way to decode each one.
pub trait Source: Send + Sync {
    /// Human-readable location used in error messages (a path).
    fn location(&self) -> &str;
    /// Class names; a label is an index into this list.
    fn classes(&self) -> &[String];
    /// Every sample, in a deterministic order.
    fn samples(&self) -> &[SampleMeta];
    /// False when the source carries no labels (an unlabelled image list);
    /// every `label` is then 0 and meaningless.
    fn labelled(&self) -> bool {
        true
    }
    /// The encoded bytes of sample `index` (PNG/JPEG/... as stored; IDX
    /// samples are encoded to PNG).
    fn read_encoded(&self, index: usize) -> Result<Vec<u8>>;
    /// Decodes sample `index`.
    fn load(&self, index: usize) -> Result<Image> {
        let bytes = self.read_encoded(index)?;
        let name = format!("{}!{}", self.location(), self.samples()[index].path);
        decode_image(&bytes, &name, &DecodeLimits::default())
    }
}

/// Opens a folder (ImageFolder, or a folder holding IDX files), a dataset
/// bundle (`.zip`), an image list (`.csv` / `.jsonl` with `path` and
/// optional `label`), or the Debian Fashion-MNIST package by the name
/// `fashion-mnist`.
pub fn open_source(path: &Path) -> Result<Box<dyn Source>> {
    if path.as_os_str() == "fashion-mnist" && !path.exists() {
        return Ok(Box::new(IdxSource::fashion_mnist(Path::new(FASHION_MNIST_DIR))?));
    }
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::dataset(path.display().to_string(), "no such file or folder"),
        _ => Error::io("opening data source", path, e),
    })?;
    if meta.is_dir() {
        if IdxSource::looks_like_idx_dir(path) {
            return Ok(Box::new(IdxSource::open_dir(path)?));
        }
        return Ok(Box::new(ImageFolder::open(path)?));
    }
    if ListSource::is_list_file(path) {
        return Ok(Box::new(ListSource::open(path)?));
    }
    Ok(Box::new(crate::bundle::BundleSource::open(path)?))
}

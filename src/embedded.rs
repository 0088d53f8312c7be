//! The default dataset compiled into the binary: a small noisy long-tailed
//! Fashion-MNIST benchmark (see `bundles/README.md` for how it was made and
//! for Fashion-MNIST's MIT licence).

use crate::bundle::BundleSource;
use crate::error::Result;

/// Name used for the embedded bundle in messages and reports.
pub const DEFAULT_NAME: &str = "<embedded fashion-nlt-default.zip>";

/// The bytes of `bundles/fashion-nlt-default.zip`.
pub const DEFAULT_BUNDLE: &[u8] = include_bytes!("../bundles/fashion-nlt-default.zip");

/// Opens the embedded default bundle.
pub fn default_source() -> Result<BundleSource> {
    BundleSource::from_bytes(DEFAULT_NAME, DEFAULT_BUNDLE.to_vec())
}

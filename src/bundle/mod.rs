//! Dataset bundle v1: a zip holding `manifest.json` and the images as
//! stored (uncompressed) members laid out `split/class/file`, so that plain
//! `unzip` gives a usable ImageFolder. The spec is `bundles/README.md`.
//!
//! ```no_run
//! use h2e::bundle::{pack, PackOptions, BundleSource};
//! use h2e::data::{ImageFolder, Source};
//! let folder = ImageFolder::open("photos/".as_ref()).unwrap();
//! pack(&folder, "photos.zip".as_ref(), &PackOptions::default(), &mut |_, _| {}).unwrap();
//! let bundle = BundleSource::open("photos.zip".as_ref()).unwrap();
//! assert_eq!(bundle.samples().len(), folder.samples().len());
//! ```

mod manifest;
mod ops;
mod reader;
mod writer;

pub use manifest::{Manifest, ManifestSample, FORMAT, VERSION};
pub use ops::{inspect, unpack, verify, ClassStats, InspectReport, SplitStats, VerifyReport};
pub(crate) use reader::SafeZip;
pub use reader::{BundleSource, MAX_MANIFEST_BYTES, MAX_MEMBER_BYTES};
pub use writer::{pack, BundleWriter, PackOptions, PackSummary};

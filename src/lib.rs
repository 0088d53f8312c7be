//! # h2e: find mislabeled samples in long-tailed image datasets
//!
//! An implementation of H2E ("Identifying Hard Noise in Long-Tailed Sample
//! Distribution", ECCV 2022) with the data plumbing around it: dataset
//! sources and bundles, benchmark construction, training on Burn's wgpu,
//! CUDA or CPU backends, and identifiers saved as zip bundles.
//!
//! The library never prints, never installs a logger or panic hook: it logs
//! through `log` and reports progress through [`progress::Progress`].
#![warn(missing_docs)]

pub mod baselines;
pub mod bench;
pub mod bundle;
pub mod classify;
pub mod data;
pub mod device;
pub mod embedded;
pub mod error;
pub mod filter;
pub mod fsutil;
pub mod identifier;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod nlt;
pub mod progress;
pub mod report;
pub mod rescore;
pub mod rng;
pub mod score;
pub mod train;
pub mod weights;

pub use error::{Error, Result};

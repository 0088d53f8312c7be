//! Command-line interface: flag definitions and dispatch. Each command
//! group lives in its own file; the library does the work.

mod bench;
mod classify;
mod data;
mod filter;
mod model;
mod report;
mod term;

use clap::{Parser, Subcommand};

/// Find mislabeled samples in long-tailed image datasets (H2E).
#[derive(Debug, Parser)]
#[command(name = "h2e", version, about)]
pub struct Cli {
    /// Log level for library messages on stderr (error, warn, info, debug).
    #[arg(long, global = true, default_value = "warn")]
    pub log: log::LevelFilter,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pack, inspect, verify or unpack dataset bundles.
    #[command(subcommand)]
    Bundle(data::BundleCmd),
    /// Benchmarks: noise-detection quality against the baselines.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Build a noisy long-tailed benchmark bundle with known ground truth.
    MakeNlt(data::MakeNltArgs),
    /// Train a noise identifier (H2E or a baseline) and save it as a bundle.
    Train(model::TrainArgs),
    /// Print the noise-detection quality recorded in an identifier bundle.
    Eval(model::EvalArgs),
    /// Apply a saved identifier to new data and report suspected label issues.
    Filter(filter::FilterArgs),
    /// Predict classes with the stage-2 classifier of an identifier trained with --classifier.
    Classify(classify::ClassifyArgs),
    /// Render a filter report as one self-contained HTML page with thumbnails.
    Report(report::ReportArgs),
    /// Merge the reports of a sharded filter run into the unsharded report.
    Merge(report::MergeArgs),
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    term::init_logger(cli.log);
    let result = match cli.command {
        Command::Bundle(cmd) => data::bundle(cmd),
        Command::Bench(cmd) => bench::bench(cmd),
        Command::MakeNlt(args) => data::make_nlt(args),
        Command::Train(args) => model::train(args),
        Command::Eval(args) => model::eval(args),
        Command::Filter(args) => filter::filter(args),
        Command::Classify(args) => classify::classify(args),
        Command::Report(args) => report::report(args),
        Command::Merge(args) => report::merge(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

//! Command-line interface: flag definitions and dispatch. Each command
//! group lives in its own file; the library does the work.

mod bench;
mod classify;
mod data;
mod filter;
mod model;
mod out;
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
            eprintln!("error: {}", render(&e));
            1
        }
    }
}

/// An error and its causes on one line, outermost first, separated by
/// ": ". The library's errors already end their message with their cause
/// (so a library user's `to_string()` is complete) and also expose it as
/// `source()`; a cause the line already ends with is skipped, so it is
/// printed once. A cause that only appears inside an earlier message is
/// still printed.
fn render(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::render;
    use anyhow::Context;

    #[test]
    fn an_io_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::IsADirectory, "Is a directory");
        let lib = h2e::Error::io("reading", "/x/y.json", io);
        let e = Err::<(), _>(lib).context("loading saved results").unwrap_err();
        assert_eq!(render(&e), "loading saved results: reading /x/y.json: Is a directory");
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let e = Err::<(), _>(anyhow::anyhow!("inner")).context("middle").context("outer").unwrap_err();
        assert_eq!(render(&e), "outer: middle: inner");
    }

    #[test]
    fn a_cause_named_inside_an_earlier_message_is_kept() {
        let e = Err::<(), _>(anyhow::anyhow!("inner")).context("the inner part failed").unwrap_err();
        assert_eq!(render(&e), "the inner part failed: inner");
    }

    #[test]
    fn a_zip_cause_chain_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidInput, "Invalid argument");
        let zip = zip::result::ZipError::Io(io);
        let text = zip.to_string();
        let lib = h2e::Error::Zip { path: "/x/a.zip".into(), source: zip };
        let e = Err::<(), _>(lib).context("reading /x/a.zip").unwrap_err();
        assert_eq!(render(&e), format!("reading /x/a.zip: /x/a.zip: invalid zip archive: {text}: Invalid argument"));
    }
}

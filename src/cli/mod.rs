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
///
/// Library errors also begin with the file they are about, and the
/// binary's context often ends with the same file (`cannot open identifier
/// a.zip` over `a.zip: not a zip archive`): such a cause drops its leading
/// `a.zip: `, so the name is printed once.
fn render(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        let text = drop_repeated_subject(&line, &text);
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

/// `text` without a leading `SUBJECT: ` when `line` already ends with
/// `SUBJECT` as whole words, or when both end with the same file name
/// (`opening a.zip` under `cannot open identifier a.zip`); the shortest
/// such subject.
fn drop_repeated_subject<'a>(line: &str, text: &'a str) -> &'a str {
    fn last_word(s: &str) -> &str {
        s.rsplit(' ').next().unwrap_or(s)
    }
    let line_file = Some(last_word(line)).filter(|w| w.contains('/') || w.contains('.'));
    for (i, _) in text.match_indices(": ") {
        let subject = &text[..i];
        if subject.is_empty() {
            continue;
        }
        let whole = line.ends_with(subject) && {
            let before = &line[..line.len() - subject.len()];
            before.is_empty() || before.ends_with(' ')
        };
        if whole || line_file == Some(last_word(subject)) {
            return &text[i + 2..];
        }
    }
    text
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
    fn a_zip_error_names_its_file_and_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidInput, "Invalid argument");
        let lib = h2e::Error::Zip { path: "/x/a.zip".into(), error: zip::result::ZipError::Io(io) };
        let e = Err::<(), _>(lib).context("reading /x/a.zip").unwrap_err();
        assert_eq!(render(&e), "reading /x/a.zip: invalid zip archive: reading it failed: Invalid argument");
        let eocd = zip::result::ZipError::InvalidArchive("Could not find EOCD".into());
        let lib = h2e::Error::Zip { path: "/x/b c.zip".into(), error: eocd };
        let e = Err::<(), _>(lib).context("cannot open identifier /x/b c.zip").unwrap_err();
        let shown = render(&e);
        assert!(shown.starts_with("cannot open identifier /x/b c.zip: not a zip archive ("), "{shown}");
        assert_eq!(shown.matches("b c.zip").count(), 1, "{shown}");
    }

    #[test]
    fn a_subject_is_dropped_only_when_the_line_ends_with_it_as_words() {
        assert_eq!(super::drop_repeated_subject("writing /o/r.csv", "/o/r.csv: disk full"), "disk full");
        // `r.csv` is only the end of a longer name in the line: kept.
        assert_eq!(super::drop_repeated_subject("writing /o/xr.csv", "r.csv: disk full"), "r.csv: disk full");
        assert_eq!(super::drop_repeated_subject("loading results", "reading /x: gone"), "reading /x: gone");
        assert_eq!(super::drop_repeated_subject("", "a: b"), "a: b");
        // The same file name after another verb.
        assert_eq!(
            super::drop_repeated_subject("cannot open identifier /x/a.zip", "opening /x/a.zip: No such file"),
            "No such file"
        );
        // A shared last word that is not a file name is kept.
        assert_eq!(
            super::drop_repeated_subject("training", "stage-2 training: diverged"),
            "stage-2 training: diverged"
        );
    }
}

//! Output files of the commands: created up front (so a bad path fails
//! before the work), written to a temporary name and renamed into place.

use anyhow::{bail, Context, Result};
use h2e::data::Source;
use h2e::filter::FilterReport;
use h2e::fsutil::AtomicFile;
use h2e::report::{render_html, HtmlOptions, DEFAULT_TOP_K};
use std::io::Write;
use std::path::Path;

/// Creates an output file up front, so a bad path fails before the work.
pub fn create(path: &Path) -> Result<AtomicFile> {
    if path.is_dir() {
        bail!("{} is a folder; give a file name", path.display());
    }
    AtomicFile::create(path).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `bytes` into `file` and renames it into place.
pub fn finish(mut file: AtomicFile, bytes: &[u8]) -> Result<()> {
    let dest = file.dest().to_path_buf();
    file.write_all(bytes).with_context(|| format!("writing {}", dest.display()))?;
    file.commit().with_context(|| format!("writing {}", dest.display()))?;
    eprintln!("wrote {}", dest.display());
    Ok(())
}

/// Renders `report` (about `src`) as HTML into the already created `file`.
pub fn write_html(file: AtomicFile, report: &FilterReport, src: &dyn Source, top: usize) -> Result<()> {
    let html = render_html(report, Some(src), &HtmlOptions { top_k: top, ..Default::default() });
    finish(file, html.as_bytes())
}

/// The report files a command was asked for (`--report`, `--jsonl`, `--html`).
pub struct ReportFiles {
    csv: Option<AtomicFile>,
    jsonl: Option<AtomicFile>,
    html: Option<AtomicFile>,
}

impl ReportFiles {
    /// Creates every requested file now. `others` are the command's other
    /// outputs: no two outputs may share a path.
    pub fn create(
        csv: Option<&Path>,
        jsonl: Option<&Path>,
        html: Option<&Path>,
        others: &[&Path],
    ) -> Result<ReportFiles> {
        let all: Vec<&Path> = [csv, jsonl, html].into_iter().flatten().chain(others.iter().copied()).collect();
        for (i, p) in all.iter().enumerate() {
            if all[..i].contains(p) {
                bail!("{} is given as two outputs; give each output its own file name", p.display());
            }
        }
        Ok(ReportFiles {
            csv: csv.map(create).transpose()?,
            jsonl: jsonl.map(create).transpose()?,
            html: html.map(create).transpose()?,
        })
    }

    /// True when neither `--report` nor `--jsonl` was given.
    pub fn no_table(&self) -> bool {
        self.csv.is_none() && self.jsonl.is_none()
    }

    /// Writes `report` (about `src`) into every requested file.
    pub fn write(self, report: &FilterReport, src: &dyn Source) -> Result<()> {
        let table = |mut file: AtomicFile, write: fn(&FilterReport, &mut dyn Write) -> std::io::Result<()>| {
            let dest = file.dest().to_path_buf();
            write(report, &mut file).with_context(|| format!("writing {}", dest.display()))?;
            file.commit().with_context(|| format!("writing {}", dest.display()))?;
            eprintln!("wrote {}", dest.display());
            anyhow::Ok(())
        };
        if let Some(f) = self.csv {
            table(f, FilterReport::write_csv)?;
        }
        if let Some(f) = self.jsonl {
            table(f, FilterReport::write_jsonl)?;
        }
        if let Some(f) = self.html {
            write_html(f, report, src, DEFAULT_TOP_K)?;
        }
        Ok(())
    }
}

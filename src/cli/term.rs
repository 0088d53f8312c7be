//! Terminal side of the binary: a tiny stderr logger and a [`Progress`]
//! that draws bars on a terminal and prints plain lines otherwise.

use h2e::progress::{Event, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

struct StderrLogger(log::LevelFilter);

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) && r.target().starts_with("h2e") {
            eprintln!("{}: {}", r.level().as_str().to_lowercase(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Installs the binary's logger (the library never does).
pub fn init_logger(level: log::LevelFilter) {
    if log::set_boxed_logger(Box::new(StderrLogger(level))).is_ok() {
        log::set_max_level(level);
    }
}

struct Stage {
    name: String,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
}

/// Progress on stderr: a bar per stage on a terminal, else a line when a
/// stage ends (and at most every 10 s while it runs).
pub struct TermProgress {
    tty: bool,
    stage: Mutex<Option<Stage>>,
}

impl TermProgress {
    /// Detects whether stderr is a terminal.
    pub fn new() -> Self {
        TermProgress { tty: std::io::stderr().is_terminal(), stage: Mutex::new(None) }
    }

    /// A `(done, total)` callback for the library's plain progress hooks.
    pub fn counter<'a>(&'a self, stage: &str) -> impl FnMut(usize, usize) + 'a {
        let mut started = false;
        let stage = stage.to_string();
        move |done, total| {
            if !started {
                self.event(Event::Start { stage: &stage, total: total as u64 });
                started = true;
            }
            self.event(Event::Advance { done: done as u64, message: "" });
            if done == total {
                self.event(Event::Finish { summary: &format!("{total} done") });
            }
        }
    }
}

impl Progress for TermProgress {
    fn event(&self, event: Event<'_>) {
        let mut guard = self.stage.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Start { stage, total } => {
                let bar = self.tty.then(|| {
                    let b = ProgressBar::new(total);
                    b.set_style(
                        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                            .expect("valid template")
                            .progress_chars("=> "),
                    );
                    b.set_prefix(stage.to_string());
                    b
                });
                *guard = Some(Stage {
                    name: stage.to_string(),
                    total,
                    bar,
                    started: Instant::now(),
                    last_line: Instant::now(),
                });
            }
            Event::Advance { done, message } => {
                if let Some(s) = guard.as_mut() {
                    if let Some(b) = &s.bar {
                        b.set_position(done);
                        b.set_message(message.to_string());
                    } else if s.last_line.elapsed().as_secs() >= 10 {
                        eprintln!("{}: {done}/{} {message}", s.name, s.total);
                        s.last_line = Instant::now();
                    }
                }
            }
            Event::Finish { summary } => {
                if let Some(s) = guard.take() {
                    let secs = s.started.elapsed().as_secs_f64();
                    if let Some(b) = s.bar {
                        b.finish_and_clear();
                    }
                    eprintln!("{}: {summary} ({secs:.1}s)", s.name);
                }
            }
        }
    }
}

/// "precision P recall R F1 F (head H, tail T), AUROC A": one line of
/// detection quality, as `train` and `filter` print it.
pub fn detection_line(m: &h2e::metrics::DetectionMetrics) -> String {
    format!(
        "precision {:.3} recall {:.3} F1 {:.3} (head {:.3}, tail {:.3}), AUROC {}",
        m.precision,
        m.recall,
        m.f1,
        m.head.f1,
        m.tail.f1,
        m.auroc.map_or("n/a".into(), |a| format!("{a:.3}"))
    )
}

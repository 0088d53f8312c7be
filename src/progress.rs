//! Progress reporting from library to caller. The library never prints: it
//! sends [`Event`]s to a [`Progress`] the caller supplies (the binary draws
//! bars on a terminal and plain lines otherwise).

/// One progress event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// A stage starts; `total` steps are expected (0 when unknown).
    Start {
        /// Stage name, e.g. "round 1 / backbone epoch 3".
        stage: &'a str,
        /// Expected number of steps.
        total: u64,
    },
    /// `done` of the stage's steps are complete; `message` carries live
    /// figures such as loss and images/s.
    Advance {
        /// Steps done so far.
        done: u64,
        /// Short status text.
        message: &'a str,
    },
    /// The stage ended; `summary` is a one-line result.
    Finish {
        /// One-line summary.
        summary: &'a str,
    },
}

/// Receives progress events. Implementations must be cheap: events arrive
/// once per batch.
pub trait Progress: Send + Sync {
    /// Handles one event.
    fn event(&self, event: Event<'_>);
}

/// Discards every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _event: Event<'_>) {}
}

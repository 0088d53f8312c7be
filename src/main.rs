//! The `h2e` command: parses flags, runs, maps errors to exit codes.
//! Exit codes: 0 success, 1 error, 2 usage error (from clap),
//! 3 `bundle verify` found problems.

mod cli;

/// The binary's global allocator, named in `bench speed`'s output. On the
/// CPU backend it matters: glibc's malloc maps fresh pages for every large
/// tensor (README, Speed).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
const ALLOCATOR: &str = "mimalloc";

fn main() {
    std::process::exit(cli::main());
}

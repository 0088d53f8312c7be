//! The `h2e` command: parses flags, runs, maps errors to exit codes.
//! Exit codes: 0 success, 1 error, 2 usage error (from clap),
//! 3 `bundle verify` found problems.

mod cli;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(cli::main());
}

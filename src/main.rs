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
    quiet_wayland_probe();
    std::process::exit(cli::main());
}

/// Looking for a GPU loads Mesa's Vulkan drivers, whose window-system
/// code prints "error: XDG_RUNTIME_DIR is invalid or not set in the
/// environment." twice when that variable is missing (a bare root shell, a
/// container). h2e never opens a window, so point it at the temp folder;
/// nothing is written there. Done first thing in `main`, before any thread
/// exists, and only when the user has not set it.
fn quiet_wayland_probe() {
    if cfg!(target_os = "linux") && std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
}

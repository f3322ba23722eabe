//! `hangar-bench-controller`: the Hangar controller that `hangar-bench watch` measures, with the
//! benchmark's writer in its process, driven over stdin (`hangar_bench::hangar_side`).
//!
//! A binary of its own so that it allocates as `hangar-server` does, with jemalloc also serving
//! C's `malloc` (SQLite's), while `hangar-bench`, the load generator, keeps the system's
//! allocator. Run in the benchmark's process, the controller measured the system allocator's
//! cost instead of Hangar's: when watchers fell behind, glibc grew and trimmed its arenas
//! (`sysmalloc`, `mprotect`, page faults) under the encode buffers (BENCHMARKS.md, "Session of
//! 2026-12-07 (12)").

use clap::Parser;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "hangar-bench-controller",
    about = "Internal to `hangar-bench watch`: the controller under test and the benchmark's writer, driven over stdin"
)]
struct Cli {
    #[command(flatten)]
    args: hangar_bench::hangar_side::ControllerArgs,
}

fn main() -> anyhow::Result<()> {
    hangar_bench::init_logging();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(hangar_bench::hangar_side::serve(cli.args))
}

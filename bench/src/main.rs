//! `hangar-bench`: see the library's documentation (`src/lib.rs`) and BENCHMARKS.md.

fn main() -> anyhow::Result<()> {
    hangar_bench::main()
}

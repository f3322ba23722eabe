//! `hangar-drone conformance`: runs the suite against the executor on a socket and prints one
//! PASS, FAIL or SKIP line per case; the exit code is 0 only when no case failed.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use futures::FutureExt;

use super::{Burst, CASES, Images, Outcome, Subject};

/// Check that the executor on a socket keeps every promise of hangar.executor.v1.
#[derive(Args, Clone, Debug)]
#[command(after_help = "The backends run the test backend (tests/backend; `cargo build -p hangar-test-backend`), \
scripted through TEST_BACKEND_* variables: --image must make the executor run it (for a process runtime, the \
path of the binary; for docker, an image whose entrypoint is /hangar-test-backend). Every backend id of a run \
starts with conf-<8 hex>, and what a failed case leaves behind is stopped and removed after it.\n\nExit codes: \
0 every case passed or was skipped, 1 a case failed, 2 the executor could not be reached or handshaken.")]
pub struct ConformanceArgs {
    /// Unix socket of the executor under test.
    #[arg(long, value_name = "PATH", env = "HANGAR_EXECUTOR_SOCKET")]
    pub socket: PathBuf,

    /// Image (process runtimes: path of the executable) that runs the test backend.
    #[arg(long, value_name = "IMAGE")]
    pub image: String,

    /// An image the executor does not have and cannot obtain [default: by runtime kind].
    #[arg(long, value_name = "IMAGE")]
    pub missing_image: Option<String>,

    /// argv[0] of a backend started without `command` [default: /hangar-test-backend for
    /// docker, the image otherwise].
    #[arg(long, value_name = "PATH")]
    pub entrypoint: Option<String>,

    /// Another program name that runs the test backend, for `command` [default: for process
    /// runtimes, the image linked under another name].
    #[arg(long, value_name = "PATH")]
    pub other_program: Option<String>,

    /// Backends in the burst case [default: 30 for docker, 200 otherwise].
    #[arg(long, value_name = "N")]
    pub burst: Option<usize>,

    /// Run only the cases whose name contains this; repeat for several.
    #[arg(long = "run", value_name = "SUBSTRING")]
    pub filters: Vec<String>,
}

/// Exit code when the executor cannot be reached or handshaken.
pub const EXIT_UNREACHABLE: i32 = 2;

/// Runs the selected cases one after another; returns the process exit code.
pub async fn run(args: ConformanceArgs) -> anyhow::Result<i32> {
    let images = Images {
        image: args.image,
        missing_image: args.missing_image,
        entrypoint: args.entrypoint,
        other_program: args.other_program,
        burst: args.burst.map(|count| Burst { count, parallel: count.clamp(1, 32) }),
    };
    let subject = match Subject::connect(&args.socket, images).await {
        Ok(subject) => Arc::new(subject),
        Err(err) => {
            eprintln!("cannot run the suite: the executor on {} did not handshake: {err}", args.socket.display());
            return Ok(EXIT_UNREACHABLE);
        }
    };
    let info = subject.client.info();
    println!(
        "conformance of {:?} {} ({} runtime, protocol {}.{}, capabilities {:?}) on {}",
        info.executor_name,
        info.executor_version,
        info.kind,
        info.protocol_major,
        info.protocol_minor,
        info.capabilities,
        args.socket.display()
    );
    let selected: Vec<_> = CASES
        .iter()
        .filter(|case| args.filters.is_empty() || args.filters.iter().any(|f| case.name.contains(f.as_str())))
        .collect();
    anyhow::ensure!(!selected.is_empty(), "no case matches {:?}", args.filters);

    // A failing case panics; the hook keeps the message and where, for the FAIL line, instead of
    // printing a backtrace notice in the middle of the report.
    let last_panic = Arc::new(Mutex::new(None::<String>));
    let previous_hook = std::panic::take_hook();
    {
        let last_panic = last_panic.clone();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            let place = info.location().map(|l| format!(" ({}:{})", l.file(), l.line())).unwrap_or_default();
            *last_panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{message}{place}"));
        }));
    }
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for case in selected {
        let begun = Instant::now();
        // Not spawned: some cases' futures are not `Send`; a panic is caught where it surfaces.
        let outcome = AssertUnwindSafe((case.run)(subject.clone())).catch_unwind().await;
        let took = begun.elapsed();
        match outcome {
            Ok(Outcome::Passed) => {
                passed += 1;
                println!("PASS  {} ({took:.1?})", case.name);
            }
            Ok(Outcome::Skipped(why)) => {
                skipped += 1;
                println!("SKIP  {}: {why}", case.name);
            }
            Err(_) => {
                failed += 1;
                let why =
                    last_panic.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| "panicked".into());
                println!("FAIL  {} ({took:.1?}): {why}", case.name);
            }
        }
        match subject.clean_up().await {
            Ok(0) => {}
            Ok(n) => eprintln!("      removed the {n} backends {} left on the executor", case.name),
            Err(err) => eprintln!("      could not clean up after {}: {err}", case.name),
        }
    }
    std::panic::set_hook(previous_hook);
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    Ok(if failed == 0 { 0 } else { 1 })
}

/// For `main`: the suite's exit code, with errors before the first case reported as unreachable.
pub async fn main(args: ConformanceArgs) -> i32 {
    match run(args).await.context("conformance") {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{err:#}");
            EXIT_UNREACHABLE
        }
    }
}

//! `oneiro`: the command-line client. With `--endpoint` it drives a (possibly remote)
//! `oneirod`; without, it starts the same engine in-process on a loopback port and
//! drives that, so one command needs no second process.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

mod cli;

use cli::{Cli, Command};

fn main() -> ExitCode {
    oneiro_daemon::allocator::keep_freed_memory();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// A gRPC status as its message and code; anything else with its causes.
fn describe(e: &anyhow::Error) -> String {
    let status = e
        .downcast_ref::<oneiro_client::ClientError>()
        .and_then(|c| match c {
            oneiro_client::ClientError::Status(s) => Some(s),
            _ => None,
        })
        .or_else(|| e.downcast_ref::<tonic::Status>());
    match status {
        Some(s) => format!("{} ({:?})", s.message(), s.code()),
        None => format!("{e:#}"),
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    // The benchmarks size their own thread pools, which must happen before any runtime
    // thread exists.
    if let Command::Bench(b) = &cli.command {
        return cli::bench::run(b, cli.global.device);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(cli::run(cli))
}

//! `xomcloud`: the whole backend on one machine — a dev server with the production API, a
//! direct downloader, a token minter and a setup check.

mod cli;
mod doctor;
mod dotenv;
mod download;
mod jobs_local;
mod serve;
mod web;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before any thread exists: `.env` fills in the environment.
    dotenv::load(".env");
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            cli::Command::Serve { addr } => serve::run(&addr).await,
            cli::Command::Download { urls, output } => download::run(&urls, &output).await,
            cli::Command::Token { sub, ttl } => cli::token(&sub, ttl),
            cli::Command::Doctor => doctor::run().await,
        }
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

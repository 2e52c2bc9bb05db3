//! `usher`: the one binary. It parses the command line and calls into the library crates; no
//! protocol or server logic lives here.
#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod config;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(1);
        }
    };
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

//! The `kardia` binary: parse flags, set up logging, run the member.

use std::process::ExitCode;

use kardia::config::{self, Parsed};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match config::parse(&args, &|k| std::env::var(k).ok()) {
        Ok(Parsed::Run(cfg)) => cfg,
        Ok(Parsed::Help) => {
            print!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("kardia {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Check(dir)) => {
            return match kardia::check::run(&dir) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("kardia check: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Ok(Parsed::Reshard {
            data_dir,
            shards,
            unit_depth,
        }) => {
            return match kardia::reshard::run(&data_dir, shards, unit_depth) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kardia reshard: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Ok(Parsed::Import(o)) => {
            return match kardia::import::run(&o) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kardia import: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Ok(Parsed::Mirror(o)) => {
            return match kardia::mirror::run(&o) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kardia mirror: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Err(e) => {
            eprintln!("kardia: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match kardia::server::run(*cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kardia: {e}");
            ExitCode::from(1)
        }
    }
}

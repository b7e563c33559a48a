//! The `switchyard` command: `serve` (the default), `check`, `keys`, `usage`, `health`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod health;
use switchyard::{Config, Shared};

// The request path allocates some 80 small blocks per request (headers, JSON strings,
// futures); mimalloc serves them at a fraction of glibc malloc's cost. Built without
// its transparent-huge-page advice (`no_thp`): with it, each 2 MiB of heap the gateway
// touched became resident whole, and an idle gateway held about 10 MB it never used.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An LLM gateway serving the OpenAI and Ollama APIs in front of local and cloud models.
#[derive(Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    /// Config file (default: $SWITCHYARD_CONFIG, else config/switchyard.toml if present,
    /// else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate the configuration and print the backends and routing.
    Check,
    /// Manage the keys file: list, add, disable, enable, remove.
    Keys {
        #[command(subcommand)]
        command: switchyard::keys::cli::KeysCommand,
    },
    /// Totals from the usage ledger: requests, tokens and errors, overall or by user,
    /// model, backend or day. Works while the gateway runs.
    Usage(switchyard::usage::report::UsageArgs),
    /// Ask a running gateway's `/health`: exit 0 when it answers ok, 1 otherwise. Needs
    /// nothing but this binary, so a container's HEALTHCHECK can run it.
    Health {
        /// The gateway's address (default: the configured `server.listen`, with an
        /// unspecified address such as 0.0.0.0 asked on loopback).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if let Some(Command::Health { url: Some(url) }) = &cli.command {
        // An explicit address needs no configuration, which may not be readable here.
        return health::report(url);
    }
    let path = Config::locate(cli.config.as_deref());
    if let Some(Command::Keys { command }) = cli.command {
        // Only the keys file is read: managing keys must not need, say, every upstream
        // key in this shell's environment.
        return match switchyard::keys::cli::run(path.as_deref(), command) {
            Ok(output) => {
                print!("{output}");
                ExitCode::SUCCESS
            }
            Err(problem) => {
                eprintln!("switchyard keys: {problem}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Command::Usage(args)) = &cli.command {
        // Only the ledger's place is read, as for `keys`.
        return match switchyard::usage::report::run(path.as_deref(), args) {
            Ok(output) => {
                print!("{output}");
                ExitCode::SUCCESS
            }
            Err(problem) => {
                eprintln!("switchyard usage: {problem}");
                ExitCode::from(1)
            }
        };
    }
    let shared = match Config::load(path.as_deref())
        .map_err(|e| e.to_string())
        .and_then(Shared::prepare)
    {
        Ok(shared) => shared,
        Err(problem) => {
            eprintln!("switchyard: invalid configuration: {problem}");
            return ExitCode::from(1);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            match &path {
                Some(path) => println!("config: {}", path.display()),
                None => println!("config: built-in defaults"),
            }
            print!("{}", shared.config.describe());
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Keys { .. } | Command::Usage(_) => ExitCode::SUCCESS,
        Command::Health { .. } => health::report(&health::url_for(shared.config.listen)),
        Command::Serve => match actix_web::rt::System::new().block_on(switchyard::serve(shared)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("switchyard: {error}");
                ExitCode::from(1)
            }
        },
    }
}

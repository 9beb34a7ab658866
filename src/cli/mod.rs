//! Command-line parsing, exit codes and output; the work itself is the library's.

mod enqueue_batch;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cloud_tasks::{CloudTasksClient, Error, Settings, Uuid};

/// Enqueue document-processing jobs on Google Cloud Tasks.
///
/// Settings come from the environment (and a `.env` file): GCP_PROJECT_ID, GCP_LOCATION,
/// CLOUD_TASKS_QUEUE, CLOUD_RUN_SERVICE_URL, CLOUD_RUN_SERVICE_ACCOUNT; set
/// CLOUD_TASKS_EMULATOR_HOST=host:port to talk to a local emulator without credentials.
#[derive(Debug, Parser)]
#[command(name = "cloud-tasks", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enqueue one document for processing and print the created task's name.
    Enqueue(EnqueueArgs),
    /// Enqueue every document of a JSON-lines file (or stdin) with BatchCreateTasks; print
    /// the failed ones as JSON lines on stdout and a summary on stderr.
    EnqueueBatch(enqueue_batch::EnqueueBatchArgs),
}

#[derive(Debug, clap::Args)]
struct EnqueueArgs {
    /// The uploaded document's ID (a UUID).
    #[arg(long)]
    document_id: Uuid,
    /// The document's original file name.
    #[arg(long)]
    filename: String,
    /// Print the created task as JSON instead of its name.
    #[arg(long)]
    json: bool,
}

/// Usage and configuration errors: nothing was sent.
const EXIT_USAGE: u8 = 2;
/// A call that was sent and failed.
const EXIT_FAILED: u8 = 1;

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(if error.is_config() {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            })
        }
    }
}

/// Logs go to stderr and are off unless `RUST_LOG` asks for them, so stdout stays clean.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Enqueue(args) => enqueue(args).await,
        Command::EnqueueBatch(args) => enqueue_batch::run(args).await,
    }
}

async fn enqueue(args: EnqueueArgs) -> Result<(), Error> {
    let settings = Settings::from_env()?;
    let client = CloudTasksClient::from_settings(&settings)?;
    let task = client
        .create_document_processing_task(args.document_id, &args.filename)
        .await?;
    if args.json {
        println!("{}", output::task_json(&task));
    } else {
        println!("{}", task.name);
    }
    Ok(())
}

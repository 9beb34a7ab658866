//! Command-line parsing, exit codes and output; the work itself is the library's.

#[cfg(feature = "demo")]
mod demo;
mod documents;
#[cfg(feature = "demo")]
mod emulator;
mod enqueue_batch;
mod lines;
mod output;
mod trace;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cloud_tasks::{CallOptions, CloudTasksClient, DocumentTask, Enqueued, Error, Settings, Uuid};
use tracing::Instrument;

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
    /// Run the whole pipeline locally: embedded emulator, local handler, OIDC verification.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Run the Cloud Tasks emulator for local development and print the environment to export.
    #[cfg(feature = "demo")]
    Emulator(emulator::EmulatorArgs),
    /// Enqueue every document of a JSON-lines file (or stdin) with BatchCreateTasks; print
    /// the failed ones as JSON lines on stdout and a summary on stderr.
    ///
    /// Where the endpoint does not implement BatchCreateTasks (it answers UNIMPLEMENTED and
    /// processes nothing, as some emulators do), the documents go one CreateTask per call
    /// instead, at the same pace and concurrency; a line on stderr says so.
    ///
    /// Pace: Cloud Tasks asks for at most 500 tasks/s to a cold queue, then at most 50% more
    /// every 5 minutes ("500/50/5"). This command follows that ramp by default, against an
    /// emulator (CLOUD_TASKS_EMULATOR_HOST) too: add --no-ramp there. --rate N caps the rate.
    /// RESOURCE_EXHAUSTED halves the rate, which then recovers gradually; tasks refused for
    /// quota are sent again in batch mode (no duplicates: a batch is resent with its
    /// request_id, and tasks the batch reports failed were not created).
    ///
    /// Each failure is one JSON line on stdout, written as soon as it is decided:
    ///   {"document_id", "filename", "line", "code", "may_exist", "error"}
    /// "code" is the gRPC code's name (null if no status came back: a line that holds no
    /// document, an invalid task, a deadline or credentials problem on this side); "may_exist"
    /// is true if the task may have been created anyway, false if it certainly was not.
    /// A line that cannot be read (not UTF-8, over 1 MiB, not JSON, a field missing, a bad
    /// UUID) is such a failure too, and the run goes on.
    ///
    /// A backfill, end to end:
    ///
    ///   1. cloud-tasks enqueue-batch --dry-run docs.jsonl
    ///      counts the documents and prints the time the ramp needs; sends nothing
    ///   2. cloud-tasks enqueue-batch --dedupe docs.jsonl > failed.jsonl
    ///      the progress line shows the achieved rate and the current limit
    ///   3. Ctrl-C or SIGTERM stops reading and waits for the calls in flight (exit 130, or
    ///      143 for SIGTERM); a second one stops at once: the documents still in flight are
    ///      listed with "may_exist": true
    ///   4. { cat failed.jsonl; tail -n +N docs.jsonl; } | cloud-tasks enqueue-batch --dedupe -
    ///      resumes as the summary prints it: the failures, and the input after the last
    ///      line read (N - 1); a task that exists is reported as already enqueued. Without --dedupe, send
    ///      only the failures with "may_exist": false, which created no task:
    ///      jq -c 'select(.may_exist == false)' failed.jsonl
    ///      and never add --dedupe mid-way: tasks created without it have no name to match.
    ///      Running the whole file again with --dedupe recognises a document whose task ran
    ///      only while its name stays taken: about 1 hour after the task ran or was deleted
    ///      (the API reference says up to 24 hours; about 9 days for queue.yaml queues)
    ///   5. cloud-tasks status --document-id <uuid>
    ///      one document's task: scheduled, dispatched, or done (absent)
    ///
    /// When every call for --stop-after (30s) failed before sending with the same cause (a
    /// wrong port, no network, no credentials), the run stops reading, waits for the calls
    /// in flight, says so, and exits 1.
    #[command(verbatim_doc_comment)]
    EnqueueBatch(enqueue_batch::EnqueueBatchArgs),
    /// Show a de-duplicated document's task: schedule time, dispatches, first and last attempt.
    ///
    /// Exit 0 if the task exists; exit 3 if it does not: the document was never enqueued (under
    /// that key), or its task is already done: Cloud Tasks deletes a task once the backend
    /// answered it with a success, once its retries ran out, or when it was cancelled.
    Status(documents::StatusArgs),
    /// Cancel a de-duplicated document's task (DeleteTask); no task to cancel is not an error.
    ///
    /// Exit 0 whether a task was deleted or there was none. Cloud Tasks refuses the task's name
    /// for about 1 hour after the deletion (the API reference says up to 24 hours; about 9 days
    /// for queue.yaml queues): to process the document sooner, enqueue it with a new
    /// --dedupe-key.
    Cancel(documents::CancelArgs),
    /// Dispatch a de-duplicated document's task now (RunTask), to re-drive a stuck document.
    ///
    /// Runs even if the task is scheduled later, is being retried with backoff, or the queue
    /// is paused or rate limited. Exit 3 if the document has no task (never enqueued, or
    /// already done). Not retried once the request may have reached Cloud Tasks, since every
    /// RunTask dispatches the task again.
    Run(documents::RunArgs),
    /// List the tasks waiting in the queue (ListTasks), printing each page as it arrives.
    ///
    /// One line per task: task ID, schedule time, dispatches, answers and the last answer's
    /// status; the count goes to stderr.
    List(documents::ListArgs),
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
    /// Name the task after the document, so enqueuing the same document again creates no
    /// second task (and is reported as already enqueued, exit 0). The de-duplication is Cloud
    /// Tasks' own: it holds only where the endpoint implements it (some emulators create a
    /// second task with the same name; see docs/LOCAL_DEVELOPMENT.md).
    #[arg(long)]
    dedupe: bool,
    /// With --dedupe: a key that makes a deliberate re-run of the same document a new task.
    #[arg(long, requires = "dedupe", value_name = "KEY")]
    dedupe_key: Option<String>,
    /// Total deadline of the call, retries included (e.g. 2s, 500ms) [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
}

/// Usage and configuration errors: nothing was sent.
const EXIT_USAGE: u8 = 2;
/// A call that was sent and failed.
const EXIT_FAILED: u8 = 1;

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let tracing = trace::install();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let code = runtime.block_on(run(cli).instrument(trace::job_span()));
    // A blocking read of stdin (enqueue-batch from a stalled pipe, interrupted with Ctrl-C)
    // cannot be cancelled; waiting for it would hang the exit until more input arrives.
    runtime.shutdown_background();
    tracing.shutdown();
    code
}

/// Prints `error` as the one line on stderr and picks the exit code.
fn report(error: &Error) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(if error.is_config() {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    })
}

/// Each command reports its own outcome and picks its exit code.
async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Enqueue(args) => match enqueue(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => report(&error),
        },
        Command::EnqueueBatch(args) => enqueue_batch::run(args).await,
        Command::Status(args) => documents::status(args).await,
        Command::Cancel(args) => documents::cancel(args).await,
        Command::Run(args) => documents::run(args).await,
        Command::List(args) => documents::list(args).await,
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args).await,
        #[cfg(feature = "demo")]
        Command::Emulator(args) => emulator::run(args).await,
    }
}

async fn enqueue(args: EnqueueArgs) -> Result<(), Error> {
    let settings = Settings::from_env()?;
    let client = CloudTasksClient::from_settings(&settings)?;
    let mut document = DocumentTask::new(args.document_id, args.filename);
    if args.dedupe {
        document = match &args.dedupe_key {
            Some(key) => document.deduplicated_with_key(key),
            None => document.deduplicated(),
        };
    }
    let mut options = CallOptions::new();
    if let Some(timeout) = args.timeout {
        options = options.with_total_timeout(timeout);
    }
    let enqueued = client.enqueue(document, &options).await?;
    if let Enqueued::AlreadyExists { task_name } = &enqueued {
        eprintln!(
            "note: document {} was already enqueued as {task_name}; no new task was created",
            args.document_id
        );
    }
    match enqueued.task() {
        Some(task) if args.json => println!("{}", output::task_json(task)),
        _ if args.json => println!(
            "{}",
            serde_json::json!({ "name": enqueued.task_name(), "alreadyEnqueued": true })
        ),
        _ => println!("{}", enqueued.task_name()),
    }
    Ok(())
}

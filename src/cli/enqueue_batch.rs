//! `cloud-tasks enqueue-batch`: enqueue every document of a JSON-lines file.
//!
//! The input is read line by line and pushed into the library's [`BatchEnqueuer`], which keeps at
//! most `concurrency` calls in flight, so memory does not grow with the file. Outcomes are
//! handled as they arrive: failed documents go to stdout as JSON lines (the input format plus
//! `line` and `error`, so the output can be fed back in), progress and the summary go to stderr.
//! The pace is the library's [`RateLimit`]: Cloud Tasks' 500/50/5 ramp unless `--no-ramp`,
//! capped by `--rate`; `--dry-run` prints what the run would take at that pace.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cloud_tasks::{
    BatchEnqueuer, BatchOptions, CallOptions, CloudTasksClient, DocumentTask, EnqueueMode,
    Enqueued, Error, ProcessDocumentPayload, RAMP_START, RateLimit, Settings,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Calls in flight when `--concurrency` is not given: 8 batches are up to 800 tasks.
const DEFAULT_BATCH_CONCURRENCY: usize = 8;
const DEFAULT_PER_TASK_CONCURRENCY: usize = 64;

/// Exit status after an interruption (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, clap::Args)]
pub(crate) struct EnqueueBatchArgs {
    /// JSON-lines file, one `{"document_id": "<uuid>", "filename": "<name>"}` per line, or `-`
    /// for stdin. Other fields are ignored, so this command's own output can be fed back in.
    input: PathBuf,
    /// Name each task after its document, so a document enqueued within about the last hour is
    /// skipped ("already enqueued"): rerunning the same file after an interruption enqueues
    /// only what is missing. The de-duplication is Cloud Tasks' own: it holds only where the
    /// endpoint implements it (some emulators create a second task with the same name; see
    /// docs/LOCAL_DEVELOPMENT.md).
    #[arg(long)]
    dedupe: bool,
    /// Calls in flight at once (default 8 batches of 100, or 64 single calls with --per-task).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4096))]
    concurrency: Option<u16>,
    /// One CreateTask call per document instead of BatchCreateTasks (which the command also
    /// falls back to, at the batch mode's concurrency, where the endpoint lacks
    /// BatchCreateTasks).
    #[arg(long)]
    per_task: bool,
    /// Create at most N tasks per second: the ramp stops growing at N (and starts at N if N is
    /// below 500); with --no-ramp, N is the rate from the start.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate: Option<u32>,
    /// Skip Cloud Tasks' ramp (start at 500 tasks/s, at most 50% more every 5 minutes): run at
    /// --rate from the start, or without a limit of this command's own if --rate is not given.
    /// For emulators, tests and queues already serving that traffic. RESOURCE_EXHAUSTED still
    /// slows the run down.
    #[arg(long)]
    no_ramp: bool,
    /// Read the input, print the number of documents and how long enqueuing them takes at
    /// the configured pace, and exit without connecting or sending anything.
    #[arg(long)]
    dry_run: bool,
    /// Deadline of each batch (or each document with --per-task): its sending, resends and the
    /// polls of its operation included, e.g. `60s`, `2m`.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION",
          default_value = "120s")]
    timeout: Duration,
}

impl EnqueueBatchArgs {
    /// The pace `--rate` and `--no-ramp` ask for.
    fn rate_limit(&self) -> RateLimit {
        match (self.no_ramp, self.rate) {
            (false, None) => RateLimit::ramp_from(RAMP_START),
            (false, Some(rate)) => RateLimit::ramp_from(RAMP_START).with_ceiling(rate),
            (true, Some(rate)) => RateLimit::fixed(rate),
            (true, None) => RateLimit::none(),
        }
    }

    /// The pace in words, for `--dry-run`.
    fn describe_pace(&self) -> String {
        match (self.no_ramp, self.rate) {
            (false, None) => {
                format!("Cloud Tasks' ramp (from {RAMP_START} tasks/s, 50% more every 5 minutes)")
            }
            (false, Some(rate)) if rate <= RAMP_START => format!("{rate} tasks/s"),
            (false, Some(rate)) => format!(
                "Cloud Tasks' ramp (from {RAMP_START} tasks/s, 50% more every 5 minutes, up to \
                 {rate} tasks/s)"
            ),
            (true, Some(rate)) => format!("{rate} tasks/s"),
            (true, None) => "no limit of this command's own".to_owned(),
        }
    }
}

/// What happened so far, for the progress line and the summary.
#[derive(Debug, Default)]
struct Counts {
    created: u64,
    already: u64,
    failed: u64,
}

impl Counts {
    fn done(&self) -> u64 {
        self.created + self.already + self.failed
    }
}

/// Runs the command: exit 2 for problems before anything is read (settings, client, input),
/// else 1 if any document failed, 130 if interrupted.
pub(crate) async fn run(args: EnqueueBatchArgs) -> ExitCode {
    match enqueue_all(args).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => super::report(&error),
    }
}

async fn enqueue_all(args: EnqueueBatchArgs) -> Result<u8, Error> {
    // A dry run needs no settings: it only reads the input.
    let client = if args.dry_run {
        None
    } else {
        Some(CloudTasksClient::from_settings(&Settings::from_env()?)?)
    };
    let (input, size): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) =
        if args.input.as_os_str() == "-" {
            (Box::new(tokio::io::stdin()), None)
        } else {
            match tokio::fs::File::open(&args.input).await {
                Ok(file) => {
                    let size = file.metadata().await.ok().map(|metadata| metadata.len());
                    (Box::new(file), size)
                }
                Err(error) => {
                    eprintln!("error: cannot open {}: {error}", args.input.display());
                    return Ok(super::EXIT_USAGE);
                }
            }
        };
    let mode = if args.per_task {
        EnqueueMode::PerTask
    } else {
        EnqueueMode::Batch
    };
    let concurrency = args.concurrency.map_or(
        if args.per_task {
            DEFAULT_PER_TASK_CONCURRENCY
        } else {
            DEFAULT_BATCH_CONCURRENCY
        },
        usize::from,
    );
    let input = BufReader::with_capacity(64 * 1024, input);
    let Some(client) = client else {
        return Ok(dry_run(input, &args).await);
    };
    let options = BatchOptions::new()
        .with_mode(mode)
        .with_concurrency(concurrency)
        .with_dedupe(args.dedupe)
        .with_rate_limit(args.rate_limit())
        .with_call_options(CallOptions::new().with_total_timeout(args.timeout));
    let enqueuer = client.batch_enqueuer(options);
    let mut run = Run {
        client,
        said_one_per_call: false,
        counts: Counts::default(),
        in_flight: 0,
        rate_limit: enqueuer.current_rate(),
        line_number: 0,
        started: Instant::now(),
        progress: progress_bar(size),
        stdout: std::io::BufWriter::new(std::io::stdout()),
    };
    let stop = run.enqueue_lines(input, enqueuer).await;
    Ok(run.finish(stop, args.dedupe))
}

/// Why the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The whole input was read and every call answered.
    End,
    /// Ctrl-C: reading stopped, and every call in flight was answered.
    Interrupted,
    /// A second Ctrl-C while waiting for the calls in flight: their outcome is unknown.
    Aborted,
}

struct Run {
    client: CloudTasksClient,
    /// Whether the switch to one CreateTask per document was announced.
    said_one_per_call: bool,
    counts: Counts,
    /// Documents handed to the enqueuer whose outcome has not come back yet.
    in_flight: u64,
    /// The enqueuer's current rate limit in tasks per second, as of the last document.
    rate_limit: Option<f64>,
    /// The last input line read.
    line_number: u64,
    started: Instant,
    progress: Option<ProgressBar>,
    stdout: std::io::BufWriter<std::io::Stdout>,
}

impl Run {
    /// Reads and enqueues every line until the end or Ctrl-C, then waits for the calls in
    /// flight unless a second Ctrl-C comes first.
    async fn enqueue_lines(
        &mut self,
        mut input: impl AsyncBufReadExt + Unpin,
        mut enqueuer: BatchEnqueuer<(u64, ProcessDocumentPayload)>,
    ) -> Stop {
        let interrupt = tokio::signal::ctrl_c();
        tokio::pin!(interrupt);
        let mut line = String::new();
        let mut line_number = 0_u64;
        let mut bytes_read = 0_u64;
        let mut interrupted = false;
        loop {
            line.clear();
            let read = tokio::select! {
                biased;
                _ = &mut interrupt => {
                    interrupted = true;
                    break;
                }
                read = input.read_line(&mut line) => read,
            };
            let read = match read {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) => {
                    // Unreadable input (e.g. invalid UTF-8): report it and stop reading, but
                    // still wait for what was sent.
                    self.counts.failed += 1;
                    self.report_bad_line(line_number + 1, &format!("cannot read input: {error}"));
                    break;
                }
            };
            line_number += 1;
            self.line_number = line_number;
            bytes_read += read as u64;
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<ProcessDocumentPayload>(text) {
                Ok(document) => {
                    self.in_flight += 1;
                    let done = enqueuer
                        .push(
                            (line_number, document.clone()),
                            DocumentTask::from(document),
                        )
                        .await;
                    self.rate_limit = enqueuer.current_rate();
                    self.record(done);
                }
                Err(error) => {
                    self.counts.failed += 1;
                    self.report_bad_line(line_number, &error.to_string());
                }
            }
            if let Some(progress) = &self.progress {
                progress.set_position(bytes_read);
            }
        }
        // Ctrl-C also interrupts the wait for the last calls once the input is read.
        let finish = enqueuer.finish();
        tokio::pin!(finish);
        if !interrupted {
            tokio::select! {
                biased;
                _ = &mut interrupt => {}
                done = &mut finish => {
                    self.record(done);
                    return Stop::End;
                }
            }
        }
        self.println_stderr(
            "interrupted: waiting for the calls in flight (Ctrl-C again to stop now)",
        );
        // The first signal's listener is spent; a second press must not wait for slow calls.
        tokio::select! {
            done = &mut finish => {
                self.record(done);
                Stop::Interrupted
            }
            _ = tokio::signal::ctrl_c() => Stop::Aborted,
        }
    }

    fn record(&mut self, done: Vec<((u64, ProcessDocumentPayload), Result<Enqueued, Error>)>) {
        if done.is_empty() {
            return;
        }
        self.in_flight -= done.len() as u64;
        for ((line, document), outcome) in done {
            match outcome {
                Ok(Enqueued::Created { .. }) => self.counts.created += 1,
                Ok(_) => self.counts.already += 1,
                Err(error) => {
                    self.counts.failed += 1;
                    let failed = serde_json::json!({
                        "document_id": document.document_id,
                        "filename": document.filename,
                        "line": line,
                        "error": error.to_string(),
                    });
                    if let Err(error) = writeln!(self.stdout, "{failed}") {
                        self.println_stderr(&format!("error: cannot write to stdout: {error}"));
                    }
                }
            }
        }
        if let Some(progress) = &self.progress {
            progress.set_message(self.progress_message());
        }
        if !self.said_one_per_call && self.client.batch_create_tasks_unimplemented() {
            self.said_one_per_call = true;
            self.println_stderr(&format!(
                "note: {} does not implement BatchCreateTasks (it answered UNIMPLEMENTED, as an \
                 emulator without it does, and processed nothing): sending one CreateTask per \
                 document instead, at the same pace and concurrency",
                self.client.endpoint()
            ));
        }
    }

    fn progress_message(&self) -> String {
        let Counts {
            created,
            already,
            failed,
        } = self.counts;
        let limit = self.rate_limit.map_or_else(
            || "no limit".to_owned(),
            |limit| format!("limit {limit:.0}/s"),
        );
        format!(
            "{created} created, {already} already enqueued, {failed} failed, {:.0} tasks/s \
             ({limit})",
            rate(self.counts.done(), self.started.elapsed())
        )
    }

    fn report_bad_line(&self, line: u64, error: &str) {
        self.println_stderr(&format!("line {line}: skipped: {error}"));
    }

    fn println_stderr(&self, text: &str) {
        match &self.progress {
            Some(progress) => progress.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// Prints the summary and returns the exit status.
    fn finish(mut self, stop: Stop, dedupe: bool) -> u8 {
        if let Some(progress) = self.progress.take() {
            progress.finish_and_clear();
        }
        // Failed documents that did not reach stdout would be lost: that is a failure.
        let stdout_lost = self.stdout.flush().err().inspect(|error| {
            eprintln!("error: cannot write the failed documents to stdout: {error}");
        });
        let elapsed = self.started.elapsed();
        let Counts {
            created,
            already,
            failed,
        } = self.counts;
        eprintln!(
            "{created} created, {already} already enqueued, {failed} failed in {:.1} s \
             ({:.0} tasks/s)",
            elapsed.as_secs_f64(),
            rate(self.counts.done(), elapsed)
        );
        let resume = if dedupe {
            "run the same command again to enqueue only what is missing"
        } else {
            "rerun with --dedupe to enqueue only what is missing"
        };
        match stop {
            Stop::End => {}
            Stop::Interrupted => {
                eprintln!("interrupted before the end of the input; {resume}");
                return EXIT_INTERRUPTED;
            }
            Stop::Aborted => {
                eprintln!(
                    "aborted: {} documents read up to input line {} got no answer and may or may \
                     not have been enqueued (those counted above are settled); {resume}",
                    self.in_flight, self.line_number
                );
                return EXIT_INTERRUPTED;
            }
        }
        if failed > 0 {
            eprintln!("failed documents are listed on stdout; feed them back in to retry");
            return super::EXIT_FAILED;
        }
        if stdout_lost.is_some() {
            return super::EXIT_FAILED;
        }
        0
    }
}

/// `--dry-run`: counts the documents and prints how long they take at the configured pace.
async fn dry_run(mut input: impl AsyncBufReadExt + Unpin, args: &EnqueueBatchArgs) -> u8 {
    let mut line = String::new();
    let (mut documents, mut skipped) = (0_u64, 0_u64);
    loop {
        line.clear();
        match input.read_line(&mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                eprintln!("error: cannot read input: {error}");
                return super::EXIT_USAGE;
            }
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if serde_json::from_str::<ProcessDocumentPayload>(text).is_ok() {
            documents += 1;
        } else {
            skipped += 1;
        }
    }
    let skipped = if skipped == 0 {
        String::new()
    } else {
        format!(" ({skipped} lines are not documents and would be skipped)")
    };
    let pace = args.describe_pace();
    match args.rate_limit().time_to_send(documents) {
        Some(duration) => println!(
            "{documents} documents{skipped}; at {pace} enqueuing them takes at least {}; \
             nothing was sent",
            humantime::format_duration(Duration::from_secs(duration.as_secs_f64().ceil() as u64))
        ),
        None => println!(
            "{documents} documents{skipped}; with {pace} the duration depends on the server \
             and --concurrency; nothing was sent"
        ),
    }
    0
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// A bar over the file's bytes, or a spinner for stdin; none when stderr is not a terminal.
fn progress_bar(size: Option<u64>) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let progress = match size {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {percent:>3}% {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("a valid template"),
        ),
    };
    progress.enable_steady_tick(Duration::from_millis(200));
    Some(progress)
}

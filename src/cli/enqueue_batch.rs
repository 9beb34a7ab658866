//! `cloud-tasks enqueue-batch`: enqueue every document of a JSON-lines file.
//!
//! The input is read line by line ([`LineReader`], bounded memory) and pushed into the library's
//! [`BatchEnqueuer`], which keeps at most `concurrency` calls in flight, so memory does not grow
//! with the file. One loop waits for whichever comes first: a signal, a finished call, or the
//! next line (read only while a call may start). Each failure is written to stdout and flushed
//! when it is decided, as a JSON line: the input format plus `line`, `code`, `may_exist` and
//! `error`, so the output can be fed back in and sorted with jq, and a killed run loses none.
//! Progress and the summary, with advice on resuming that never creates a duplicate, go to
//! stderr. The pace is the library's [`RateLimit`]: Cloud Tasks' 500/50/5 ramp unless
//! `--no-ramp`, capped by `--rate`; `--dry-run` prints what the run would take at that pace.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cloud_tasks::{
    BatchEnqueuer, BatchOptions, CallOptions, CloudTasksClient, DEFAULT_CEILING, DocumentTask,
    EnqueueMode, Enqueued, Error, ProcessDocumentPayload, RAMP_START, RateLimit, Settings,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncRead, BufReader};

use super::lines::LineReader;

/// Calls in flight when `--concurrency` is not given: 8 batches are up to 800 tasks.
const DEFAULT_BATCH_CONCURRENCY: usize = 8;
const DEFAULT_PER_TASK_CONCURRENCY: usize = 64;

#[derive(Debug, clap::Args)]
pub(crate) struct EnqueueBatchArgs {
    /// JSON-lines file, one `{"document_id": "<uuid>", "filename": "<name>"}` per line, or `-`
    /// for stdin. Other fields are ignored, so this command's own output can be fed back in.
    input: PathBuf,
    /// Name each task after its document, so a document whose task exists, or ran or was
    /// deleted recently, is skipped ("already enqueued"): a name stays taken for about 1 hour
    /// after its task ran or was deleted (the API reference says up to 24 hours; about 9 days
    /// for queues created with queue.yaml). Decide before a backfill starts: tasks created
    /// without it have no name to match. The de-duplication is Cloud Tasks' own: it holds only
    /// where the endpoint implements it (some emulators create a second task with the same
    /// name; see docs/LOCAL_DEVELOPMENT.md).
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
    /// below 500); with --no-ramp, N is the rate from the start. Without it the ramp stops at
    /// 1000, the most Google advises for one queue (creates plus dispatches).
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
    /// Stop reading (and exit 1 once the calls in flight are answered) when every call
    /// answered for this long failed before anything was sent, with the same cause: a wrong
    /// endpoint or port, a network down, no credentials. A call that fails so still waits for
    /// its --timeout first.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION",
          default_value = "30s")]
    stop_after: Duration,
    /// How long a batch that is not full waits for more input before it is sent anyway, so
    /// documents from a stalled or trickling input (a pipe, a queue consumer) are not held
    /// until more arrive or the input ends.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION",
          default_value = "1s")]
    linger: Duration,
}

impl EnqueueBatchArgs {
    /// The pace `--rate` and `--no-ramp` ask for.
    fn rate_limit(&self) -> RateLimit {
        match (self.no_ramp, self.rate) {
            (false, None) => RateLimit::default(),
            (false, Some(rate)) => RateLimit::ramp_from(RAMP_START).with_ceiling(rate),
            (true, Some(rate)) => RateLimit::fixed(rate),
            (true, None) => RateLimit::none(),
        }
    }

    /// The pace in words, for `--dry-run`.
    fn describe_pace(&self) -> String {
        match (self.no_ramp, self.rate) {
            (false, None) => format!(
                "Cloud Tasks' ramp (from {RAMP_START} tasks/s, 50% more every 5 minutes, up to \
                 {DEFAULT_CEILING} tasks/s)"
            ),
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

/// Runs the command: exit 2 for problems before anything is read (settings, client, input),
/// else 1 if any document failed or the run stopped early, 130 or 143 if stopped by SIGINT
/// (Ctrl-C) or SIGTERM.
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
    let from_stdin = args.input.as_os_str() == "-";
    let (input, size): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) = if from_stdin {
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
    let input = LineReader::new(BufReader::with_capacity(64 * 1024, input));
    let Some(client) = client else {
        return Ok(dry_run(input, &args).await);
    };
    // Listening before anything is sent: a signal must never kill a run with calls in flight.
    let signals = match Signals::new() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("error: cannot listen for Ctrl-C and SIGTERM: {error}");
            return Ok(super::EXIT_FAILED);
        }
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
        undecided: BTreeMap::new(),
        concurrency,
        stop_after: args.stop_after,
        linger: args.linger,
        unsent_streak: UnsentStreak::default(),
        rate_limit: enqueuer.current_rate(),
        line_number: 0,
        started: Instant::now(),
        progress: progress_bar(size),
        stdout: std::io::BufWriter::new(std::io::stdout()),
        stdout_error: None,
        signal: None,
        aborted: None,
        dedupe: args.dedupe,
        input: (!from_stdin).then(|| args.input.display().to_string()),
    };
    let stop = run.enqueue_lines(input, enqueuer, signals).await;
    Ok(run.finish(stop))
}

/// The signals that stop a run as Ctrl-C does: SIGINT, and SIGTERM, which Kubernetes, Cloud
/// Run jobs and systemd send before they kill a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT (Ctrl-C)",
            Self::Terminate => "SIGTERM",
        }
    }

    /// 128 + the signal's number, as shells report a process the signal stopped.
    fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

#[derive(Debug)]
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    /// The next signal; cancel safe.
    #[cfg(unix)]
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Signal {
        match tokio::signal::ctrl_c().await {
            Ok(()) => Signal::Interrupt,
            // Without a listener, no signal can be told apart: wait for none.
            Err(_) => std::future::pending().await,
        }
    }
}

/// What happened so far, for the progress line and the summary.
#[derive(Debug, Default)]
struct Counts {
    created: u64,
    already: u64,
    /// Failure records on stdout, of which `may_exist` say the task may exist.
    failed: u64,
    may_exist: u64,
    /// Lines that hold no document (not JSON, no UUID, not UTF-8...).
    unreadable: u64,
}

impl Counts {
    fn done(&self) -> u64 {
        self.created + self.already + self.failed
    }
}

/// Why reading stopped.
#[derive(Debug)]
enum Stop {
    /// The whole input was read.
    End,
    /// SIGINT or SIGTERM ([`Run::signal`]).
    Signal,
    /// Every call answered for `lasted` failed before sending, with `cause`.
    Unreachable { cause: String, lasted: Duration },
    /// The input could not be read any further.
    Input(std::io::Error),
    /// Failure records can no longer be written ([`Run::stdout_error`]).
    Stdout,
}

/// Calls failing one after the other before anything was sent, with the same cause: the sign
/// that no call can get through (a wrong port, no network, no credentials).
#[derive(Debug, Default)]
struct UnsentStreak {
    /// The cause, and when the earliest of these calls' documents was read.
    current: Option<(String, Instant)>,
}

impl UnsentStreak {
    /// Takes one document's outcome: a success, or a failure that may have reached Cloud Tasks
    /// or was not sent for another cause, ends the streak. A task rejected locally is no call
    /// and changes nothing.
    fn observe(&mut self, outcome: Result<(), &Error>, read_at: Instant) {
        let error = match outcome {
            Ok(()) => {
                self.current = None;
                return;
            }
            Err(error) if error.is_config() => return,
            Err(error) => error,
        };
        if !error.was_never_sent() || error.task_may_exist() {
            self.current = None;
            return;
        }
        let cause = error.to_string();
        match &mut self.current {
            Some((current, since)) if *current == cause => *since = (*since).min(read_at),
            _ => self.current = Some((cause, read_at)),
        }
    }

    /// The cause, and how long every call has failed with it, as of `now`.
    fn lasted(&self, now: Instant) -> Option<(&str, Duration)> {
        let (cause, since) = self.current.as_ref()?;
        Some((cause, now.saturating_duration_since(*since)))
    }
}

/// A document handed to the enqueuer whose outcome has not come back yet.
#[derive(Debug)]
struct Undecided {
    document: ProcessDocumentPayload,
    read_at: Instant,
}

struct Run {
    client: CloudTasksClient,
    /// Whether the switch to one CreateTask per document was announced.
    said_one_per_call: bool,
    counts: Counts,
    /// By input line.
    undecided: BTreeMap<u64, Undecided>,
    concurrency: usize,
    stop_after: Duration,
    /// How long a partial batch waits for more input.
    linger: Duration,
    unsent_streak: UnsentStreak,
    /// The enqueuer's current rate limit in tasks per second, as of the last document.
    rate_limit: Option<f64>,
    /// The last input line read.
    line_number: u64,
    started: Instant,
    progress: Option<ProgressBar>,
    stdout: std::io::BufWriter<std::io::Stdout>,
    stdout_error: Option<std::io::Error>,
    /// The first signal: reading stopped, or (after the whole input was read) the wait for
    /// the last calls was interrupted.
    signal: Option<Signal>,
    /// A second signal: the run ended without waiting for the calls in flight.
    aborted: Option<Signal>,
    dedupe: bool,
    /// The input file as given; `None` for stdin.
    input: Option<String>,
}

impl Run {
    /// Reads and enqueues every line until the end, a signal, or an early stop; then sends what
    /// was read and waits for the calls in flight, unless a second signal comes first.
    async fn enqueue_lines(
        &mut self,
        mut input: LineReader<impl AsyncBufRead + Unpin>,
        mut enqueuer: BatchEnqueuer<u64>,
        mut signals: Signals,
    ) -> Stop {
        let mut last_line = tokio::time::Instant::now();
        let stop = loop {
            if self.stdout_error.is_some() {
                break Stop::Stdout;
            }
            if let Some(stop) = self.unreachable() {
                break stop;
            }
            tokio::select! {
                biased;
                signal = signals.next() => {
                    self.signal = Some(signal);
                    break Stop::Signal;
                }
                Some(done) = enqueuer.next_finished(), if enqueuer.in_flight() > 0 => {
                    self.record(done);
                }
                // A line is read only when its call can start, so a push never waits and
                // this loop stays free to take signals and outcomes.
                line = input.next_line(), if enqueuer.in_flight() < self.concurrency => {
                    match line {
                        Ok(None) => break Stop::End,
                        Ok(Some((number, text))) => {
                            last_line = tokio::time::Instant::now();
                            self.line_number = number;
                            self.enqueue_line(number, text, &mut enqueuer).await;
                        }
                        Err(error) => break Stop::Input(error),
                    }
                    if let Some(progress) = &self.progress {
                        progress.set_position(input.bytes_read());
                    }
                }
                // The input paused with a batch not full: send it rather than hold it until
                // more arrives. Only while its call can start, so the flush never waits.
                () = tokio::time::sleep_until(last_line + self.linger),
                    if enqueuer.queued() > 0 && enqueuer.in_flight() < self.concurrency =>
                {
                    let done = enqueuer.flush().await;
                    self.record(done);
                }
            }
        };
        match &stop {
            Stop::End => {}
            Stop::Signal => self.say_waiting(),
            Stop::Unreachable { cause, lasted } => self.println_stderr(&format!(
                "stopping early: every call answered in the last {} failed before anything was \
                 sent, with the same cause: {cause}\nstopped reading after input line {}; \
                 waiting for the calls in flight",
                format_duration(*lasted),
                self.line_number
            )),
            Stop::Input(error) => self.println_stderr(&format!(
                "error: cannot read the input after line {}: {error}; waiting for the calls in \
                 flight",
                self.line_number
            )),
            Stop::Stdout => {}
        }
        // What was read is sent, then every call is waited for. The flush does not wait: a
        // line is read only while a call may start, and a push that leaves tasks queued starts
        // none, so tasks are queued only while there is room for their call.
        let done = enqueuer.flush().await;
        self.record(done);
        loop {
            tokio::select! {
                biased;
                signal = signals.next() => {
                    if self.signal.is_some() {
                        self.aborted = Some(signal);
                        self.record_abandoned();
                        break;
                    }
                    self.signal = Some(signal);
                    self.say_waiting();
                }
                done = enqueuer.next_finished() => match done {
                    Some(done) => self.record(done),
                    None => break,
                },
            }
        }
        stop
    }

    fn say_waiting(&self) {
        if let Some(signal) = self.signal {
            self.println_stderr(&format!(
                "interrupted by {}: waiting for the calls in flight (a second Ctrl-C or SIGTERM \
                 stops now)",
                signal.name()
            ));
        }
    }

    /// Parses one input line and hands its document to the enqueuer; a line that is not a
    /// document is a failure record of its own.
    async fn enqueue_line(
        &mut self,
        number: u64,
        text: Result<&str, String>,
        enqueuer: &mut BatchEnqueuer<u64>,
    ) {
        let text = match text {
            Ok(text) => text,
            Err(error) => {
                self.record_unreadable(number, &Value::Null, error);
                return;
            }
        };
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        match serde_json::from_str::<ProcessDocumentPayload>(text) {
            Ok(document) => {
                self.undecided.insert(
                    number,
                    Undecided {
                        document: document.clone(),
                        read_at: Instant::now(),
                    },
                );
                let done = enqueuer.push(number, DocumentTask::from(document)).await;
                self.rate_limit = enqueuer.current_rate();
                self.record(done);
            }
            Err(error) => {
                let (fields, problem) = not_a_document(text, &error);
                self.record_unreadable(number, &fields, problem);
            }
        }
    }

    fn record(&mut self, done: Vec<(u64, Result<Enqueued, Error>)>) {
        if done.is_empty() {
            return;
        }
        for (line, outcome) in done {
            let Some(Undecided { document, read_at }) = self.undecided.remove(&line) else {
                unreachable!("an outcome for line {line}, which was not pushed or came twice");
            };
            match outcome {
                Ok(enqueued) => {
                    if matches!(enqueued, Enqueued::Created { .. }) {
                        self.counts.created += 1;
                    } else {
                        self.counts.already += 1;
                    }
                    self.unsent_streak.observe(Ok(()), read_at);
                }
                Err(error) => {
                    self.unsent_streak.observe(Err(&error), read_at);
                    self.write_failure(
                        line,
                        &serde_json::json!(document.document_id),
                        &serde_json::json!(document.filename),
                        error.code().map(|code| code.as_str()),
                        error.task_may_exist(),
                        &error.to_string(),
                    );
                }
            }
        }
        self.flush_stdout();
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

    /// [`Stop::Unreachable`] once calls have failed before sending, with one cause, for
    /// `--stop-after`.
    fn unreachable(&self) -> Option<Stop> {
        let (cause, lasted) = self.unsent_streak.lasted(Instant::now())?;
        (lasted >= self.stop_after).then(|| Stop::Unreachable {
            cause: cause.to_owned(),
            lasted,
        })
    }

    /// A line that holds no document: `fields` are the document's fields as far as they could
    /// be read.
    fn record_unreadable(&mut self, line: u64, fields: &Value, problem: String) {
        self.counts.unreadable += 1;
        self.write_failure(
            line,
            &fields["document_id"],
            &fields["filename"],
            None,
            false,
            &format!("line {line} skipped: {problem}"),
        );
        self.flush_stdout();
    }

    /// After a second signal: the documents whose outcome did not come back. Each was in a
    /// call, sent or waiting for its turn under the rate limit: its task may exist.
    fn record_abandoned(&mut self) {
        for (line, Undecided { document, .. }) in std::mem::take(&mut self.undecided) {
            self.write_failure(
                line,
                &serde_json::json!(document.document_id),
                &serde_json::json!(document.filename),
                None,
                true,
                "no answer: the run was aborted while its call was in flight or waiting for its \
                 turn, so the task may or may not exist",
            );
        }
        self.flush_stdout();
    }

    fn write_failure(
        &mut self,
        line: u64,
        document_id: &Value,
        filename: &Value,
        code: Option<&str>,
        may_exist: bool,
        error: &str,
    ) {
        self.counts.failed += 1;
        if may_exist {
            self.counts.may_exist += 1;
        }
        if self.stdout_error.is_some() {
            return;
        }
        let failed = serde_json::json!({
            "document_id": document_id,
            "filename": filename,
            "line": line,
            "code": code,
            "may_exist": may_exist,
            "error": error,
        });
        if let Err(error) = writeln!(self.stdout, "{failed}") {
            self.lose_stdout(error);
        }
    }

    /// Each batch of outcomes reaches stdout as it is decided: a run killed later loses none.
    fn flush_stdout(&mut self) {
        if self.stdout_error.is_none()
            && let Err(error) = self.stdout.flush()
        {
            self.lose_stdout(error);
        }
    }

    fn lose_stdout(&mut self, error: std::io::Error) {
        self.println_stderr(&format!(
            "error: cannot write the failed documents to stdout: {error}; reading stops after \
             input line {}, and the calls in flight are waited for",
            self.line_number
        ));
        self.stdout_error = Some(error);
    }

    fn progress_message(&self) -> String {
        let Counts {
            created,
            already,
            failed,
            ..
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

    fn println_stderr(&self, text: &str) {
        match &self.progress {
            Some(progress) => progress.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// Prints the summary, how the run ended and how to resume; returns the exit status.
    fn finish(mut self, stop: Stop) -> u8 {
        if let Some(progress) = self.progress.take() {
            progress.finish_and_clear();
        }
        let elapsed = self.started.elapsed();
        let Counts {
            created,
            already,
            failed,
            may_exist,
            unreadable,
        } = self.counts;
        eprintln!(
            "{created} created, {already} already enqueued, {failed} failed in {:.1} s \
             ({:.0} tasks/s)",
            elapsed.as_secs_f64(),
            rate(self.counts.done(), elapsed)
        );
        let read_all = matches!(stop, Stop::End);
        let line = self.line_number;
        match (&stop, self.signal, self.aborted) {
            (_, _, Some(signal)) => eprintln!(
                "aborted by a second signal ({}): the documents still in flight are listed on \
                 stdout with \"may_exist\": true; every document up to input line {line} is \
                 counted above{}",
                signal.name(),
                if read_all {
                    ""
                } else {
                    ", and the rest of the input was not read"
                }
            ),
            (Stop::End, Some(signal), None) => eprintln!(
                "interrupted by {} after the whole input was read; every call was answered",
                signal.name()
            ),
            (Stop::Signal, Some(signal), None) => eprintln!(
                "interrupted by {}: every document up to input line {line} is counted above; \
                 the rest of the input was not read",
                signal.name()
            ),
            (Stop::Unreachable { cause, lasted }, ..) => eprintln!(
                "stopped early: every call answered in the last {} failed before anything was \
                 sent, with the same cause: {cause}\nevery document up to input line {line} is \
                 counted above; the rest of the input was not read. Fix the cause, then resume",
                format_duration(*lasted)
            ),
            (Stop::Input(error), ..) => eprintln!(
                "error: cannot read the input after line {line}: {error}; every document up to \
                 it is counted above"
            ),
            (Stop::Stdout, Some(signal), None) => eprintln!(
                "interrupted by {} while waiting for the calls in flight; every call was \
                 answered",
                signal.name()
            ),
            (Stop::End | Stop::Stdout, None, None) => {}
            (Stop::Signal, None, None) => unreachable!("reading stops for a signal with one"),
        }
        if let Some(error) = &self.stdout_error {
            eprintln!(
                "error: failed documents are counted above but those after stdout broke were \
                 not written ({error}); check the queue before enqueuing the documents up to \
                 input line {line} again"
            );
        }
        if failed > 0 && self.stdout_error.is_none() {
            eprintln!(
                "{failed} failed documents are listed on stdout, each with \"may_exist\" (true \
                 if its task may have been created) and \"code\""
            );
        }
        if unreadable > 0 {
            eprintln!(
                "{unreadable} of them are input lines that hold no document (\"code\": null, \
                 the error says why): fix them before sending them again"
            );
        }
        if self.stdout_error.is_none() {
            for advice in self.resume_advice(read_all, failed - may_exist, may_exist) {
                eprintln!("{advice}");
            }
        }
        if let Some(signal) = self.aborted.or(self.signal) {
            return signal.exit_code();
        }
        if !read_all || failed > 0 || self.stdout_error.is_some() {
            return super::EXIT_FAILED;
        }
        0
    }

    /// How to finish the job without creating a task twice: send again what provably created
    /// none, and the input that was not read. With --dedupe a document whose task exists is
    /// recognised, so every failure may go back in; without it, only those with
    /// `"may_exist": false`, and switching to --dedupe now would enqueue again every document
    /// already done (their tasks have no name to match).
    fn resume_advice(&self, read_all: bool, not_created: u64, may_exist: u64) -> Vec<String> {
        let rest = (!read_all).then(|| {
            let next = self.line_number + 1;
            match &self.input {
                Some(path) => format!("tail -n +{next} {}", shell_quote(path)),
                None => format!("tail -n +{next} <this run's input>"),
            }
        });
        let mut advice = Vec::new();
        let sources: Vec<String> = if self.dedupe {
            (not_created + may_exist > 0)
                .then(|| "cat failed.jsonl".to_owned())
                .into_iter()
                .chain(rest)
                .collect()
        } else {
            if not_created > 0 {
                advice.push(format!(
                    "{not_created} with \"may_exist\": false created no task: sending them again \
                     is safe"
                ));
            }
            if may_exist > 0 {
                advice.push(format!(
                    "{may_exist} with \"may_exist\": true may have created their task: sending \
                     them again may create a second one, so check the queue first (cloud-tasks \
                     list)"
                ));
            }
            (not_created > 0)
                .then(|| "jq -c 'select(.may_exist == false)' failed.jsonl".to_owned())
                .into_iter()
                .chain(rest)
                .collect()
        };
        let dedupe = if self.dedupe { " --dedupe" } else { "" };
        let feed = match sources.as_slice() {
            [] => return advice,
            [one] => one.clone(),
            many => format!("{{ {}; }}", many.join("; ")),
        };
        let resume = if read_all {
            "to send them again"
        } else {
            "to resume"
        };
        advice.push(format!(
            "{resume}: {feed} | cloud-tasks enqueue-batch{dedupe} - > failed-2.jsonl\n  (with \
             this run's other options; failed.jsonl is this run's stdout)"
        ));
        if self.dedupe {
            advice.push(
                "a document whose task exists is reported as already enqueued; one whose task \
                 already ran is recognised only while the name stays taken, about 1 hour (up \
                 to 24 hours; about 9 days for queue.yaml queues), so resume soon"
                    .to_owned(),
            );
        } else {
            advice.push(
                "keep resuming without --dedupe: tasks created without it have no name, so \
                 --dedupe would not recognise them and would enqueue those documents again"
                    .to_owned(),
            );
        }
        advice
    }
}

/// Why a line holds no document, and the document's fields as far as they could be read, for
/// its failure record.
fn not_a_document(text: &str, error: &serde_json::Error) -> (Value, String) {
    const EXPECTED: &str = r#"expected {"document_id": "<uuid>", "filename": "<name>"}"#;
    let fields = match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return (Value::Null, format!("not a JSON object; {EXPECTED}")),
        Err(_) => {
            return (
                Value::Null,
                format!(
                    "not JSON ({} at column {}); {EXPECTED}",
                    without_position(error),
                    error.column()
                ),
            );
        }
    };
    let problem = match (&fields["document_id"], &fields["filename"]) {
        (Value::Null, _) => format!("\"document_id\" is missing; {EXPECTED}"),
        (_, Value::Null) => format!("\"filename\" is missing; {EXPECTED}"),
        (Value::String(id), Value::String(_)) => format!(
            "\"document_id\" {} is not a UUID: {}",
            Value::String(id.clone()),
            without_position(error)
        ),
        _ => format!("{}; {EXPECTED}", without_position(error)),
    };
    (fields, problem)
}

/// serde_json's message without its " at line 1 column N": the line is the input's line.
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(position) => message[..position].to_owned(),
        None => message,
    }
}

/// `path` as one shell word, for a command the user may paste.
fn shell_quote(path: &str) -> String {
    if !path.is_empty()
        && path
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._/-+=:,@%".contains(&byte))
    {
        path.to_owned()
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}

/// Milliseconds below 10 s (a short `--stop-after`), else whole seconds.
fn format_duration(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(if duration < Duration::from_secs(10) {
        Duration::from_millis(duration.as_millis() as u64)
    } else {
        Duration::from_secs(duration.as_secs())
    })
}

/// `--dry-run`: counts the documents and prints how long they take at the configured pace.
async fn dry_run(mut input: LineReader<impl AsyncBufRead + Unpin>, args: &EnqueueBatchArgs) -> u8 {
    let (mut documents, mut skipped) = (0_u64, 0_u64);
    loop {
        match input.next_line().await {
            Ok(None) => break,
            Ok(Some((_, Ok(text)))) => {
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                if serde_json::from_str::<ProcessDocumentPayload>(text).is_ok() {
                    documents += 1;
                } else {
                    skipped += 1;
                }
            }
            Ok(Some((_, Err(_)))) => skipped += 1,
            Err(error) => {
                eprintln!("error: cannot read input: {error}");
                return super::EXIT_USAGE;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn not_sent() -> Error {
        Error::Timeout {
            after: Duration::from_secs(120),
            request_sent: false,
        }
    }

    #[test]
    fn the_unsent_streak_lasts_from_its_earliest_document_while_every_call_fails_alike() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let mut streak = UnsentStreak::default();
        assert!(streak.lasted(at(100)).is_none());

        streak.observe(Err(&not_sent()), at(10));
        // Answers arrive out of order: the streak starts at the earliest document read.
        streak.observe(Err(&not_sent()), at(5));
        let (cause, lasted) = streak.lasted(at(40)).unwrap();
        assert!(cause.contains("could not be sent"), "{cause}");
        assert_eq!(lasted, Duration::from_secs(35));

        // A task rejected locally is no call: the streak goes on.
        streak.observe(
            Err(&Error::InvalidTask("file name is empty".into())),
            at(41),
        );
        assert_eq!(streak.lasted(at(45)).unwrap().1, Duration::from_secs(40));

        // Another cause starts a new streak.
        let other = Error::Timeout {
            after: Duration::from_secs(60),
            request_sent: false,
        };
        streak.observe(Err(&other), at(50));
        assert_eq!(streak.lasted(at(55)).unwrap().1, Duration::from_secs(5));
    }

    #[test]
    fn a_success_or_a_call_that_may_have_arrived_ends_the_unsent_streak() {
        let start = Instant::now();
        let mut streak = UnsentStreak::default();
        streak.observe(Err(&not_sent()), start);
        streak.observe(Ok(()), start);
        assert!(streak.lasted(start).is_none());

        streak.observe(Err(&not_sent()), start);
        let may_exist = Error::Timeout {
            after: Duration::from_secs(120),
            request_sent: true,
        };
        streak.observe(Err(&may_exist), start);
        assert!(streak.lasted(start).is_none());
    }
}

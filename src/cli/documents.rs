//! `cloud-tasks status | cancel | run | list`: a document's de-duplicated task by the document's
//! ID, and the tasks waiting in the queue.
//!
//! Exit codes: 0 done (`cancel` also when there was no task), 1 a call failed, 2 bad settings or
//! arguments, 3 the document has no task (`status`, `run`): never enqueued under that key, or
//! already done (Cloud Tasks keeps no finished task).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use cloud_tasks::proto::Task;
use cloud_tasks::proto::google::cloud::tasks::v2::Attempt;
use cloud_tasks::proto::google::rpc::Status;
use cloud_tasks::{CallOptions, CloudTasksClient, Error, ListTasksOptions, Settings, Uuid};
use serde_json::{Map, Value, json};

/// The document has no task: a clear answer, not a failure of the call.
const EXIT_NO_TASK: u8 = 3;

const NO_TASK: &str = "not enqueued, or already done (Cloud Tasks keeps no finished task)";

#[derive(Debug, clap::Args)]
pub(crate) struct DocumentArgs {
    /// The document's ID (a UUID), as given to `enqueue --dedupe` or `enqueue-batch --dedupe`.
    /// Only de-duplicated tasks are named after their document; an unnamed task cannot be
    /// found from it (see `list`).
    #[arg(long)]
    document_id: Uuid,
    /// The key the document was enqueued under (`enqueue --dedupe --dedupe-key KEY`), if any.
    #[arg(long, value_name = "KEY")]
    dedupe_key: Option<String>,
    /// Total deadline of the call, retries included (e.g. 2s, 500ms) [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    document: DocumentArgs,
    /// Print one JSON object: {"documentId", "taskName", "exists", "task"} where "task" follows
    /// the proto3 JSON mapping, with "firstAttempt" and "lastAttempt".
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CancelArgs {
    #[command(flatten)]
    document: DocumentArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    document: DocumentArgs,
    /// Print the task Cloud Tasks answered with as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Stop after this many tasks.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Tasks asked for per ListTasks call (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    page_size: u32,
    /// One JSON object per task and line (proto3 JSON mapping), printed as pages arrive.
    #[arg(long)]
    json: bool,
    /// Total deadline of each page's call, retries included (e.g. 2s) [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
}

fn client() -> Result<CloudTasksClient, Error> {
    CloudTasksClient::from_settings(&Settings::from_env()?)
}

fn call_options(timeout: Option<Duration>) -> CallOptions {
    match timeout {
        Some(timeout) => CallOptions::new().with_total_timeout(timeout),
        None => CallOptions::new(),
    }
}

impl DocumentArgs {
    fn key(&self) -> Option<&str> {
        self.dedupe_key.as_deref()
    }
}

pub(crate) async fn status(args: StatusArgs) -> ExitCode {
    let document = &args.document;
    let client = match client() {
        Ok(client) => client,
        Err(error) => return super::report(&error),
    };
    let name = client.document_task_name(document.document_id, document.key());
    let task = match client
        .document_task(
            document.document_id,
            document.key(),
            &call_options(document.timeout),
        )
        .await
    {
        Ok(task) => task,
        Err(error) => return super::report(&error),
    };
    if args.json {
        let mut object = Map::new();
        object.insert("documentId".into(), json!(document.document_id.to_string()));
        object.insert("taskName".into(), json!(name));
        object.insert("exists".into(), json!(task.is_some()));
        if let Some(task) = &task {
            object.insert("task".into(), task_json(task));
        }
        println!("{}", Value::Object(object));
    } else {
        match &task {
            Some(task) => print!("{}", describe(task, document, SystemTime::now())),
            None => println!("document {}: {NO_TASK}", document.document_id),
        }
    }
    if task.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO_TASK)
    }
}

pub(crate) async fn cancel(args: CancelArgs) -> ExitCode {
    let document = &args.document;
    let client = match client() {
        Ok(client) => client,
        Err(error) => return super::report(&error),
    };
    let name = client.document_task_name(document.document_id, document.key());
    match client
        .cancel_document(
            document.document_id,
            document.key(),
            &call_options(document.timeout),
        )
        .await
    {
        Ok(true) => println!("cancelled {name}"),
        Ok(false) => println!(
            "no task to cancel for document {}: {NO_TASK}",
            document.document_id
        ),
        Err(error) => return super::report(&error),
    }
    ExitCode::SUCCESS
}

pub(crate) async fn run(args: RunArgs) -> ExitCode {
    let document = &args.document;
    let client = match client() {
        Ok(client) => client,
        Err(error) => return super::report(&error),
    };
    let result = client
        .run_document(
            document.document_id,
            document.key(),
            &call_options(document.timeout),
        )
        .await;
    match result {
        Ok(task) if args.json => println!("{}", task_json(&task)),
        Ok(task) => println!(
            "dispatching {} now (dispatch {}); Cloud Tasks deletes the task once the backend \
             answers with a success",
            task.name, task.dispatch_count
        ),
        Err(error) if error.is_not_found() => {
            eprintln!(
                "error: document {} has no task to run: {error}",
                document.document_id
            );
            return ExitCode::from(EXIT_NO_TASK);
        }
        Err(error) => return super::report(&error),
    }
    ExitCode::SUCCESS
}

pub(crate) async fn list(args: ListArgs) -> ExitCode {
    let client = match client() {
        Ok(client) => client,
        Err(error) => return super::report(&error),
    };
    let mut options = ListTasksOptions::new()
        .with_page_size(args.page_size)
        .with_call_options(call_options(args.timeout));
    if let Some(limit) = args.limit {
        options = options.with_limit(limit);
    }
    let mut pager = client.list_tasks(options);
    let now = SystemTime::now();
    let mut stdout = std::io::stdout().lock();
    loop {
        let page = match pager.next_page().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(error) => {
                stdout.flush().ok();
                return super::report(&error);
            }
        };
        let mut text = String::new();
        for task in &page {
            if args.json {
                text.push_str(&task_json(task).to_string());
            } else {
                text.push_str(&list_line(task, now));
            }
            text.push('\n');
        }
        // A closed pipe (`| head`) ends the listing quietly.
        if stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
    }
    eprintln!("{} task(s) in {}", pager.returned(), client.queue_path());
    ExitCode::SUCCESS
}

/// The human answer of `status`: one fact per line.
fn describe(task: &Task, document: &DocumentArgs, now: SystemTime) -> String {
    let mut lines = vec![format!("task        {}", task.name)];
    let key = document
        .key()
        .map_or_else(String::new, |key| format!(" (key {key:?})"));
    lines.push(format!("document    {}{key}", document.document_id));
    if let Some(created) = &task.create_time {
        lines.push(format!("created     {created}"));
    }
    if let Some(scheduled) = &task.schedule_time {
        lines.push(format!(
            "scheduled   {scheduled} ({})",
            relative(scheduled, now)
        ));
    }
    lines.push(format!(
        "attempts    {} dispatched, {} answered",
        task.dispatch_count, task.response_count
    ));
    lines.push(format!(
        "first       {}",
        task.first_attempt
            .as_ref()
            .map_or_else(|| "none yet".to_owned(), attempt_text)
    ));
    lines.push(format!(
        "last        {}",
        task.last_attempt
            .as_ref()
            .map_or_else(|| "none yet".to_owned(), attempt_text)
    ));
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// One tab-separated line of `list`: task ID, schedule time, counts, last answer.
fn list_line(task: &Task, now: SystemTime) -> String {
    let id = task
        .name
        .rsplit_once("/tasks/")
        .map_or(task.name.as_str(), |(_, id)| id);
    let scheduled = task.schedule_time.as_ref().map_or_else(
        || "-".to_owned(),
        |time| format!("{time} ({})", relative(time, now)),
    );
    let last = task
        .last_attempt
        .as_ref()
        .and_then(|attempt| attempt.response_status.as_ref())
        .map_or_else(|| "-".to_owned(), status_text);
    format!(
        "{id}\tscheduled {scheduled}\t{} dispatched\t{} answered\tlast answer {last}",
        task.dispatch_count, task.response_count
    )
}

/// "in 59m 58s" or "3s ago", to the second.
fn relative(time: &prost_types::Timestamp, now: SystemTime) -> String {
    let Ok(time) = SystemTime::try_from(*time) else {
        return "out of range".to_owned();
    };
    let round =
        |duration: Duration| humantime::format_duration(Duration::from_secs(duration.as_secs()));
    match time.duration_since(now) {
        Ok(ahead) => format!("in {}", round(ahead)),
        Err(past) => format!("{} ago", round(past.duration())),
    }
}

fn attempt_text(attempt: &Attempt) -> String {
    let mut parts = Vec::new();
    match (&attempt.dispatch_time, &attempt.schedule_time) {
        (Some(dispatched), _) => parts.push(format!("dispatched {dispatched}")),
        (None, Some(scheduled)) => parts.push(format!("scheduled {scheduled}, not dispatched yet")),
        (None, None) => {}
    }
    match (&attempt.response_time, &attempt.response_status) {
        (Some(time), Some(status)) => {
            parts.push(format!("answered {time}: {}", status_text(status)))
        }
        (None, Some(status)) => parts.push(format!("answered: {}", status_text(status))),
        (Some(time), None) => parts.push(format!("answered {time}")),
        (None, None) => parts.push("no answer yet".to_owned()),
    }
    parts.join(", ")
}

/// `NOT_FOUND: message`: Cloud Tasks gives the backend's HTTP answer as a gRPC status.
fn status_text(status: &Status) -> String {
    let name = code_name(status.code);
    if status.message.is_empty() {
        name
    } else {
        format!("{name}: {}", status.message)
    }
}

/// google.rpc.Code's names, as Google's tools print them.
fn code_name(code: i32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|index| NAMES.get(index))
        .map_or_else(|| format!("code {code}"), |name| (*name).to_owned())
}

/// The task as `enqueue --json` prints it, plus its attempts.
fn task_json(task: &Task) -> Value {
    let mut value = super::output::task_json(task);
    if let Value::Object(object) = &mut value {
        for (key, attempt) in [
            ("firstAttempt", &task.first_attempt),
            ("lastAttempt", &task.last_attempt),
        ] {
            if let Some(attempt) = attempt {
                object.insert(key.into(), attempt_json(attempt));
            }
        }
    }
    value
}

fn attempt_json(attempt: &Attempt) -> Value {
    let mut object = Map::new();
    for (key, time) in [
        ("scheduleTime", &attempt.schedule_time),
        ("dispatchTime", &attempt.dispatch_time),
        ("responseTime", &attempt.response_time),
    ] {
        if let Some(time) = time {
            object.insert(key.into(), json!(time.to_string()));
        }
    }
    if let Some(status) = &attempt.response_status {
        object.insert(
            "responseStatus".into(),
            json!({ "code": status.code, "message": status.message }),
        );
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_google_names_them() {
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "code 99");
        assert_eq!(code_name(-1), "code -1");
    }

    #[test]
    fn relative_times_say_ahead_or_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ahead = prost_types::Timestamp::from(now + Duration::from_millis(3_599_900));
        assert_eq!(relative(&ahead, now), "in 59m 59s");
        let past = prost_types::Timestamp::from(now - Duration::from_secs(3));
        assert_eq!(relative(&past, now), "3s ago");
    }
}

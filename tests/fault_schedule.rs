//! Randomized fault schedules, checked the way Jepsen checks histories.
//!
//! A mock server fails each call by a seeded draw (`MockCloudTasks::set_random_faults`):
//! rejected before storing, answered UNAVAILABLE after storing, hung past the deadline, its
//! stream reset before storing (REFUSED_STREAM, CANCEL) or after (ENHANCE_YOUR_CALM,
//! INTERNAL_ERROR), or answered and then restarted (GOAWAY). Thousands of documents go in,
//! named and unnamed, in batches and one call each; nothing in the test sends a document
//! twice. Then a checker reads what each caller was told against what the server holds:
//!
//! - no request is stored twice;
//! - every request reported created or already enqueued is stored, under the name reported;
//! - every request reported with `task_may_exist() == false` is not stored.
//!
//! Unnamed documents come with a twin: the same body scheduled an hour later, a different
//! task. Batch answers are shuffled, so a twin can only be told apart by its schedule time.
//!
//! A second scenario runs at a slow fixed pace whose queue of turns is deeper than an attempt
//! may take. There the checker also asks that no call failed waiting for its turn: every
//! failure is one the server injected, none a timeout before the request was written. (A
//! resend that waited for the pace inside its attempt timed out, kept its turn and took
//! another, and the pace stalled.)
//!
//! CI runs [`CI_SEEDS`]; `CLOUD_TASKS_FAULT_SEEDS=1..200` (or `7,11,13`) runs others.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use cloud_tasks::proto::{MessageType, Task};
use cloud_tasks::{
    BatchOptions, CallOptions, EnqueueMode, Enqueued, Error, HttpTask, NewTask,
    ProcessDocumentPayload, RateLimit, RetryPolicy, Uuid,
};
use common::*;

const CI_SEEDS: [u64; 2] = [17, 4242];

/// Share of calls that fail.
const FAULT_RATE: f64 = 0.5;
/// Longer than an attempt may take.
const HANG: Duration = Duration::from_millis(600);

/// What a request asked for: its document, and whether it is the twin scheduled later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    document: Uuid,
    scheduled: bool,
}

fn seeds() -> Vec<u64> {
    let Ok(spec) = std::env::var("CLOUD_TASKS_FAULT_SEEDS") else {
        return CI_SEEDS.to_vec();
    };
    if let Some((start, end)) = spec.split_once("..") {
        let bound = |text: &str| {
            text.trim()
                .parse::<u64>()
                .expect("CLOUD_TASKS_FAULT_SEEDS: a..b")
        };
        return (bound(start)..bound(end)).collect();
    }
    spec.split(',')
        .map(|seed| {
            seed.trim()
                .parse()
                .expect("CLOUD_TASKS_FAULT_SEEDS: a comma-separated list")
        })
        .collect()
}

/// The requests of one run: unnamed HTTP tasks with their twins, or de-duplicated
/// documents.
fn requests(documents: usize, named: bool) -> Vec<(Key, NewTask)> {
    let later = SystemTime::now() + Duration::from_secs(3600);
    let mut requests = Vec::new();
    for index in 0..documents {
        let document = Uuid::new_v4();
        let filename = format!("scan-{index}.pdf");
        let key = Key {
            document,
            scheduled: false,
        };
        if named {
            let task = cloud_tasks::DocumentTask::new(document, filename);
            requests.push((key, task.into()));
            continue;
        }
        let body = serde_json::to_vec(&ProcessDocumentPayload {
            document_id: document,
            filename,
        })
        .unwrap();
        let task = HttpTask::post("/tasks/process").with_json_body(body);
        let twin = (index % 5 == 0).then(|| task.clone().with_schedule_time(later));
        requests.push((key, task.into()));
        // After its unscheduled twin, which must not take its task.
        if let Some(twin) = twin {
            let key = Key {
                document,
                scheduled: true,
            };
            requests.push((key, twin.into()));
        }
    }
    requests
}

/// The request a stored task answers.
fn key_of(task: &Task) -> Key {
    let Some(MessageType::HttpRequest(http)) = &task.message_type else {
        panic!("the server holds a task that is not an HTTP task: {task:?}");
    };
    let payload: ProcessDocumentPayload = serde_json::from_slice(&http.body).unwrap();
    let scheduled = task.schedule_time.unwrap().seconds > task.create_time.unwrap().seconds + 60;
    Key {
        document: payload.document_id,
        scheduled,
    }
}

/// What happened in one run, for the checker and to show the faults fired.
#[derive(Debug, Default)]
struct Tally {
    created: usize,
    may_exist: usize,
    not_created: usize,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.created += other.created;
        self.may_exist += other.may_exist;
        self.not_created += other.not_created;
    }
}

/// How a run is paced, and what that lets the checker ask.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pacing {
    /// As fast as the server answers.
    Unlimited,
    /// A fixed pace; no call may fail while waiting for its turn.
    Slow,
}

/// The last attempt's failure, under any memory of an earlier one.
fn last_failure(error: &Error) -> &Error {
    match error {
        Error::AfterPossiblyProcessed { last, .. } => last,
        other => other,
    }
}

/// The invariants over one run's history; returns the violations found.
fn check(
    stored: &[Task],
    outcomes: &[(Key, Result<Enqueued, Error>)],
    pacing: Pacing,
    tally: &mut Tally,
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut stored_per_key: HashMap<Key, usize> = HashMap::new();
    let mut by_name: HashMap<&str, Key> = HashMap::new();
    for task in stored {
        let key = key_of(task);
        *stored_per_key.entry(key).or_default() += 1;
        by_name.insert(task.name.as_str(), key);
    }
    for (key, count) in &stored_per_key {
        if *count > 1 {
            violations.push(format!("{key:?} stored {count} times"));
        }
    }
    for (key, outcome) in outcomes {
        match outcome {
            Ok(Enqueued::Created { task_name, .. } | Enqueued::AlreadyExists { task_name }) => {
                tally.created += 1;
                if by_name.get(task_name.as_str()) != Some(key) {
                    violations.push(format!(
                        "{key:?} reported as {outcome:?}, but the server holds {:?} under \
                         that name",
                        by_name.get(task_name.as_str())
                    ));
                }
            }
            Ok(other) => violations.push(format!("{key:?}: unexpected outcome {other:?}")),
            Err(error)
                if pacing == Pacing::Slow
                    && matches!(
                        last_failure(error),
                        Error::Timeout {
                            request_sent: false,
                            ..
                        }
                    ) =>
            {
                violations.push(format!(
                    "{key:?} failed before its request was written, waiting for its turn: {error}"
                ));
            }
            Err(error) if error.task_may_exist() => tally.may_exist += 1,
            Err(error) => {
                tally.not_created += 1;
                if stored_per_key.contains_key(key) {
                    violations.push(format!(
                        "{key:?} reported as not created, but it is stored: {error}"
                    ));
                }
            }
        }
    }
    violations
}

/// One run's options. Slow: the calls in flight hold more turns than an attempt may take to
/// come (8 batches of 10 tasks at 20 tasks/s: 4 s; 12 single tasks at 8 tasks/s: 1.5 s, against
/// a 1 s attempt), so a resend waits beyond its attempt for its turn; the 8 s total leaves it
/// time to be sent.
fn options(mode: EnqueueMode, named: bool, pacing: Pacing) -> BatchOptions {
    let retries = RetryPolicy::default()
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(50));
    let options = BatchOptions::new().with_mode(mode).with_dedupe(named);
    match (pacing, mode) {
        (Pacing::Unlimited, _) => options
            .with_batch_size(20)
            .with_concurrency(16)
            .with_rate_limit(RateLimit::none())
            .with_call_options(
                CallOptions::new()
                    .with_attempt_timeout(Duration::from_millis(250))
                    .with_total_timeout(Duration::from_millis(1500))
                    .with_retry_policy(retries.with_max_attempts(3)),
            ),
        (Pacing::Slow, mode) => {
            let (rate, concurrency) = if mode == EnqueueMode::Batch {
                (20, 8)
            } else {
                (8, 12)
            };
            options
                .with_batch_size(10)
                .with_concurrency(concurrency)
                .with_rate_limit(RateLimit::fixed(rate))
                .with_call_options(
                    CallOptions::new()
                        .with_attempt_timeout(Duration::from_secs(1))
                        .with_total_timeout(Duration::from_secs(8))
                        .with_retry_policy(retries.with_max_attempts(4)),
                )
        }
    }
}

async fn run(
    seed: u64,
    mode: EnqueueMode,
    named: bool,
    documents: usize,
    pacing: Pacing,
) -> (Vec<String>, Tally) {
    let (server, client) = mock_and_client().await;
    // Longer than an attempt may take.
    let hang = match pacing {
        Pacing::Unlimited => HANG,
        Pacing::Slow => Duration::from_millis(1500),
    };
    server.set_random_faults(seed, FAULT_RATE, hang);
    server.shuffle_created_tasks();
    let requests = requests(documents, named);
    let keys: Vec<Key> = requests.iter().map(|(key, _)| *key).collect();
    let outcomes = client
        .enqueue_all(
            requests.into_iter().map(|(_, task)| task),
            options(mode, named, pacing),
        )
        .await;
    let history: Vec<_> = keys.into_iter().zip(outcomes).collect();
    let mut tally = Tally::default();
    let violations = check(&server.tasks(), &history, pacing, &mut tally);
    (violations, tally)
}

/// Runs each variant over every seed; panics with the violations found, or if no fault fired.
async fn run_all(pacing: Pacing, variants: [(u64, EnqueueMode, bool, usize); 4]) {
    let mut total = Tally::default();
    let mut failures = Vec::new();
    for seed in seeds() {
        for (variant, mode, named, documents) in variants {
            let (violations, tally) = run(seed * 4 + variant, mode, named, documents, pacing).await;
            total.add(&tally);
            if !violations.is_empty() {
                failures.push(format!(
                    "seed {seed}, {mode:?}, named: {named}: {} violations, e.g. {:#?}",
                    violations.len(),
                    &violations[..violations.len().min(5)]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{pacing:?}: {failures:#?}");
    // A schedule whose faults never fired would check nothing. At the slow pace every call has
    // the time to be resent until it succeeds or may have landed, so none need end "not created".
    let fired = total.may_exist > 0 && (pacing == Pacing::Slow || total.not_created > 0);
    assert!(total.created > 0 && fired, "{pacing:?}: {total:?}");
    eprintln!("{pacing:?}: {total:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicate_no_false_created_no_false_not_created_under_random_faults() {
    run_all(
        Pacing::Unlimited,
        [
            (0, EnqueueMode::Batch, false, 600),
            (1, EnqueueMode::Batch, true, 600),
            (2, EnqueueMode::PerTask, false, 200),
            (3, EnqueueMode::PerTask, true, 200),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_slow_pace_no_call_fails_waiting_for_its_turn() {
    run_all(
        Pacing::Slow,
        [
            (0, EnqueueMode::Batch, false, 40),
            (1, EnqueueMode::Batch, true, 40),
            (2, EnqueueMode::PerTask, false, 16),
            (3, EnqueueMode::PerTask, true, 16),
        ],
    )
    .await;
}

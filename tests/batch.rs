//! Bulk enqueue against the mock server: splitting, per-task outcomes, long-running operations,
//! de-duplicated reruns and per-task mode.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cloud_tasks::proto::google::cloud::tasks::v2::task::View;
use cloud_tasks::proto::{MessageType, Task};
use cloud_tasks::testing::{Fault, MockCloudTasks};
use cloud_tasks::{
    BatchOptions, CallOptions, Code, EnqueueMode, Enqueued, Error, HttpTask,
    ProcessDocumentPayload, RateLimit, Uuid, document_task_id,
};
use common::*;

fn documents(count: usize) -> Vec<ProcessDocumentPayload> {
    (0..count)
        .map(|index| ProcessDocumentPayload {
            document_id: Uuid::new_v4(),
            filename: format!("scan-{index}.pdf"),
        })
        .collect()
}

fn body(task: &Task) -> ProcessDocumentPayload {
    match &task.message_type {
        Some(MessageType::HttpRequest(http)) => serde_json::from_slice(&http.body).unwrap(),
        other => panic!("expected an HTTP task, got {other:?}"),
    }
}

fn created_name(outcome: &Result<Enqueued, Error>) -> &str {
    match outcome {
        Ok(Enqueued::Created { task_name, .. }) => task_name,
        other => panic!("expected a created task, got {other:?}"),
    }
}

fn is_created(outcome: &Result<Enqueued, Error>) -> bool {
    matches!(outcome, Ok(Enqueued::Created { .. }))
}

/// The task name of an already-enqueued outcome.
fn already_enqueued(outcome: &Result<Enqueued, Error>) -> Option<&str> {
    match outcome {
        Ok(Enqueued::AlreadyExists { task_name }) => Some(task_name),
        _ => None,
    }
}

#[tokio::test]
async fn more_than_100_documents_are_split_into_batches_of_at_most_100() {
    let (server, client) = mock_and_client().await;
    let input = documents(250);

    let outcomes = client
        .enqueue_all(
            input.clone(),
            BatchOptions::new().with_concurrency(4).with_dedupe(true),
        )
        .await;

    assert_eq!(outcomes.len(), 250);
    for (document, outcome) in input.iter().zip(&outcomes) {
        let expected = format!(
            "{QUEUE_PATH}/tasks/{}",
            document_task_id(document.document_id, None)
        );
        assert_eq!(
            created_name(outcome),
            expected,
            "outcomes are in input order"
        );
    }

    let calls = server.batch_create_tasks_calls();
    let mut sizes: Vec<usize> = calls
        .iter()
        .map(|call| call.message.requests.len())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [50, 100, 100]);
    assert!(server.create_task_calls().is_empty());
    let mut request_ids = HashSet::new();
    for call in &calls {
        assert_eq!(call.message.parent, QUEUE_PATH);
        assert!(call.message.requests.iter().all(|r| r.parent == QUEUE_PATH));
        let request_id: Uuid = call.message.request_id.parse().unwrap();
        assert_eq!(request_id.get_version_num(), 4);
        assert!(request_ids.insert(request_id), "each batch has its own ID");
        assert_eq!(
            call.metadata.get("x-goog-request-params").unwrap(),
            "parent=projects%2Fmy-project%2Flocations%2Fus-central1%2Fqueues%2Fdocument-processing"
        );
    }

    // Every document arrives once, with the single-task API's body.
    let stored: Vec<ProcessDocumentPayload> = server.tasks().iter().map(body).collect();
    assert_eq!(stored.len(), 250);
    let stored: HashSet<_> = stored
        .into_iter()
        .map(|d| (d.document_id, d.filename))
        .collect();
    let sent: HashSet<_> = input
        .into_iter()
        .map(|d| (d.document_id, d.filename))
        .collect();
    assert_eq!(stored, sent);
}

#[tokio::test]
async fn unnamed_tasks_are_paired_by_content_when_the_response_is_shuffled() {
    let (server, client) = mock_and_client().await;
    server.shuffle_created_tasks();
    let input = documents(250);

    let outcomes = client
        .enqueue_all(input.clone(), BatchOptions::new().with_concurrency(3))
        .await;

    // The stored task of each name says which document it carries.
    let by_name: HashMap<String, Uuid> = server
        .tasks()
        .iter()
        .map(|task| (task.name.clone(), body(task).document_id))
        .collect();
    assert_eq!(by_name.len(), 250);
    for (document, outcome) in input.iter().zip(&outcomes) {
        assert_eq!(
            by_name[created_name(outcome)],
            document.document_id,
            "each outcome names its own document's task"
        );
        assert!(
            outcome.as_ref().unwrap().task().is_none(),
            "outcomes hold names, not tasks, unless asked"
        );
    }
    // The server was asked for bodies (to pair by them) only for unnamed tasks.
    let views: HashSet<i32> = server
        .batch_create_tasks_calls()
        .iter()
        .flat_map(|call| call.message.requests.iter().map(|r| r.response_view))
        .collect();
    assert_eq!(views, HashSet::from([View::Full as i32]));
}

#[tokio::test]
async fn created_tasks_are_returned_when_asked_as_the_default_view_shows_them() {
    let (server, client) = mock_and_client().await;
    server.shuffle_created_tasks();
    let input = documents(30);
    let outcomes = client
        .enqueue_all(input.clone(), BatchOptions::new().with_created_tasks(true))
        .await;
    for outcome in &outcomes {
        let task = outcome.as_ref().unwrap().task().expect("kept");
        assert_eq!(task.name, created_name(outcome));
        match &task.message_type {
            Some(MessageType::HttpRequest(http)) => {
                assert!(http.url.ends_with("/api/tasks/process-document"));
                assert!(http.body.is_empty(), "the BASIC view has no body");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn unnamed_http_tasks_are_paired_by_body_too() {
    let (server, client) = mock_and_client().await;
    server.shuffle_created_tasks();
    let input = documents(40);
    let outcomes = client
        .enqueue_all(
            input.iter().map(|document| {
                HttpTask::post("/api/reindex").with_body(serde_json::to_vec(document).unwrap())
            }),
            BatchOptions::new(),
        )
        .await;
    let by_name: HashMap<String, Uuid> = server
        .tasks()
        .iter()
        .map(|task| (task.name.clone(), body(task).document_id))
        .collect();
    for (document, outcome) in input.iter().zip(&outcomes) {
        assert_eq!(by_name[created_name(outcome)], document.document_id);
    }
}

#[tokio::test]
async fn partial_failures_are_reported_per_document() {
    let (server, client) = mock_and_client().await;
    let mut input = documents(8);
    // Already enqueued earlier: refused as a duplicate name.
    let earlier = client
        .enqueue_all(
            vec![input[1].clone()],
            BatchOptions::new().with_dedupe(true),
        )
        .await;
    assert!(is_created(&earlier[0]));
    // Refused by the server alone.
    let refused = input[4].document_id.to_string();
    server.fail_tasks_containing(&refused, Code::PermissionDenied, "caller lacks actAs");
    // Refused locally before sending.
    input[6].filename = String::new();

    let outcomes = client
        .enqueue_all(input.clone(), BatchOptions::new().with_dedupe(true))
        .await;

    assert_eq!(outcomes.len(), 8);
    for (index, outcome) in outcomes.iter().enumerate() {
        match index {
            1 => assert_eq!(
                already_enqueued(outcome),
                Some(
                    client
                        .task_name(&document_task_id(input[1].document_id, None))
                        .as_str()
                ),
                "{outcome:?}"
            ),
            4 => {
                let error = outcome.as_ref().expect_err("refused by the server");
                assert!(error.is_permission_denied(), "{error}");
                assert!(
                    error.to_string().contains("roles/cloudtasks.enqueuer"),
                    "{error}"
                );
            }
            6 => {
                let error = outcome.as_ref().expect_err("refused locally");
                assert!(error.is_config(), "{error}");
                assert!(error.to_string().contains("file name is empty"), "{error}");
            }
            _ => assert_eq!(
                created_name(outcome),
                client.task_name(&document_task_id(input[index].document_id, None))
            ),
        }
    }
    let calls = server.batch_create_tasks_calls();
    assert_eq!(calls.len(), 2, "the earlier batch and this one");
    assert_eq!(
        calls[1].message.requests.len(),
        7,
        "the invalid document is not sent"
    );
    assert_eq!(server.tasks().len(), 1 + 5);
}

#[tokio::test]
async fn an_operation_not_done_at_once_is_polled_until_done() {
    let (server, client) = mock_and_client().await;
    server.set_operation_polls(3);
    let input = documents(130);

    let outcomes = client
        .enqueue_all(input, BatchOptions::new().with_concurrency(2))
        .await;

    assert!(outcomes.iter().all(is_created), "{outcomes:?}");
    let polls = server.get_operation_calls();
    assert_eq!(
        polls.len(),
        2 * 3,
        "three polls for each of the two batches"
    );
    let names: HashSet<&str> = polls
        .iter()
        .map(|poll| poll.message.name.as_str())
        .collect();
    assert_eq!(names.len(), 2);
    for poll in &polls {
        assert!(
            poll.message
                .name
                .starts_with("projects/my-project/locations/us-central1/operations/"),
            "{}",
            poll.message.name
        );
        let routing = poll.metadata.get("x-goog-request-params").unwrap();
        assert!(
            routing.to_str().unwrap().starts_with(
                "name=projects%2Fmy-project%2Flocations%2Fus-central1%2Foperations%2F"
            ),
            "{routing:?}"
        );
    }
}

#[tokio::test]
async fn an_operation_that_outlives_the_deadline_fails_its_tasks_as_maybe_created() {
    let (server, client) = mock_and_client().await;
    server.set_operation_polls(1000);
    let started = Instant::now();
    let outcomes = client
        .enqueue_all(
            documents(3),
            BatchOptions::new().with_call_options(
                CallOptions::new().with_total_timeout(Duration::from_millis(700)),
            ),
        )
        .await;
    let took = started.elapsed();
    for outcome in &outcomes {
        let error = outcome.as_ref().expect_err("timed out");
        assert!(error.is_timeout() && error.task_may_exist(), "{error}");
        assert!(error.to_string().contains("700ms"), "{error}");
    }
    assert!(server.get_operation_calls().len() >= 2);
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[tokio::test]
async fn one_deadline_covers_the_send_its_retries_and_the_polls() {
    let (server, client) = mock_and_client().await;
    // The first send hangs past its attempt's deadline; the resend is accepted, then the
    // operation is polled: all of it within the one deadline of the batch.
    server.push_fault(Fault::Delay(Duration::from_secs(30)));
    server.set_operation_polls(1000);
    let started = Instant::now();
    let outcomes = client
        .enqueue_all(
            documents(5),
            BatchOptions::new().with_call_options(
                CallOptions::new()
                    .with_attempt_timeout(Duration::from_millis(300))
                    .with_total_timeout(Duration::from_millis(1200)),
            ),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(
        server.batch_create_tasks_calls().len(),
        2,
        "sent, then resent"
    );
    assert!(!server.get_operation_calls().is_empty(), "then polled");
    for outcome in &outcomes {
        let error = outcome.as_ref().expect_err("timed out");
        assert!(error.is_timeout() && error.task_may_exist(), "{error}");
    }
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(1500),
        "the batch's one deadline, not 300 ms + 1.2 s of polling: {took:?}"
    );
}

#[tokio::test]
async fn a_lost_operation_is_not_a_missing_queue_and_its_tasks_may_exist() {
    let (server, client) = mock_and_client().await;
    server.set_operation_polls(2);
    server.expire_operations();
    let outcomes = client
        .enqueue_all(documents(10), BatchOptions::new().with_dedupe(true))
        .await;
    for outcome in &outcomes {
        let error = outcome.as_ref().expect_err("the outcome is unknown");
        assert!(error.task_may_exist(), "{error}");
        assert_eq!(error.code(), Some(Code::NotFound));
        let message = error.to_string();
        assert!(message.contains("no longer knows operation"), "{message}");
        assert!(!message.contains("does not exist in"), "{message}");
    }
    assert_eq!(server.tasks().len(), 10, "the batch was applied");
    // Named tasks are safe to enqueue again: all already exist.
    server.set_operation_polls(0);
    let again = client
        .enqueue_all(
            documents_again(&server),
            BatchOptions::new().with_dedupe(true),
        )
        .await;
    assert!(
        again
            .iter()
            .all(|outcome| already_enqueued(outcome).is_some())
    );
}

/// The documents of the tasks the server holds.
fn documents_again(server: &MockCloudTasks) -> Vec<ProcessDocumentPayload> {
    server.tasks().iter().map(body).collect()
}

/// Enqueues `count` documents against a server that creates at most `quota` tasks a second,
/// starting at `start` tasks a second, and returns the achieved rate.
async fn enqueue_against_a_quota(count: usize, quota: u32, dedupe: bool) -> f64 {
    let (server, client) = mock_and_client().await;
    server.set_rate_limit(quota);
    let input = documents(count);
    let started = Instant::now();
    let outcomes = client
        .enqueue_all(
            input.clone(),
            BatchOptions::new()
                .with_dedupe(dedupe)
                .with_rate_limit(RateLimit::fixed(quota * 4)),
        )
        .await;
    let took = started.elapsed();
    let rate = count as f64 / took.as_secs_f64();
    let refused = server.resource_exhausted_answers();
    println!(
        "{count} {} tasks, quota {quota}/s: {took:.2?}, {rate:.0} tasks/s, {refused} calls \
         refused",
        if dedupe { "named" } else { "unnamed" }
    );
    assert!(refused > 0, "the quota was hit");
    assert!(
        outcomes.iter().all(is_created),
        "no document failed: {:?}",
        outcomes.iter().find(|outcome| !is_created(outcome))
    );
    let stored: Vec<Uuid> = server
        .tasks()
        .iter()
        .map(|task| body(task).document_id)
        .collect();
    assert_eq!(stored.len(), count, "nothing lost or duplicated");
    let stored: HashSet<Uuid> = stored.into_iter().collect();
    assert_eq!(stored, input.iter().map(|d| d.document_id).collect());
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_exhausted_slows_unnamed_batches_to_the_quota_without_losing_a_document() {
    let rate = enqueue_against_a_quota(5000, 1000, false).await;
    assert!((400.0..=1300.0).contains(&rate), "{rate:.0} tasks/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_exhausted_slows_named_batches_to_the_quota_without_losing_a_document() {
    let rate = enqueue_against_a_quota(3000, 1000, true).await;
    assert!((400.0..=1300.0).contains(&rate), "{rate:.0} tasks/s");
}

#[tokio::test]
async fn unnamed_single_calls_refused_for_quota_are_not_sent_again() {
    let (server, client) = mock_and_client().await;
    server.set_rate_limit(1);
    let outcomes = client
        .enqueue_all(
            documents(150),
            BatchOptions::new()
                .with_mode(EnqueueMode::PerTask)
                .with_rate_limit(RateLimit::none()),
        )
        .await;
    let refused: Vec<&Error> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(!refused.is_empty());
    for error in &refused {
        assert_eq!(error.code(), Some(Code::ResourceExhausted), "{error}");
        assert!(!error.task_may_exist(), "{error}");
    }
    assert_eq!(
        server.create_task_calls().len(),
        150,
        "one call per document: an unnamed CreateTask is not resent"
    );
    assert_eq!(server.tasks().len(), 150 - refused.len());
}

#[tokio::test]
async fn a_deduplicated_rerun_creates_only_what_is_missing() {
    let (server, client) = mock_and_client().await;
    let input = documents(150);
    let options = BatchOptions::new().with_dedupe(true).with_concurrency(3);
    // The first run was interrupted after 70 documents.
    let first = client
        .enqueue_all(input[..70].to_vec(), options.clone())
        .await;
    assert!(first.iter().all(is_created));

    let rerun = client.enqueue_all(input.clone(), options).await;

    let already = rerun
        .iter()
        .take(70)
        .filter(|outcome| already_enqueued(outcome).is_some())
        .count();
    assert_eq!(already, 70);
    assert!(rerun[70..].iter().all(is_created), "{rerun:?}");
    let stored = server.tasks();
    assert_eq!(stored.len(), 150, "no document enqueued twice");
    let ids: HashSet<Uuid> = stored.iter().map(|task| body(task).document_id).collect();
    assert_eq!(ids.len(), 150);
}

#[tokio::test]
async fn a_failed_batch_fails_only_its_own_tasks() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Reject(Code::InvalidArgument, "bad batch".into()));

    let outcomes = client
        .enqueue_all(documents(150), BatchOptions::new().with_concurrency(1))
        .await;

    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().err())
        .collect();
    assert_eq!(failed.len(), 100, "the first batch");
    assert!(failed.iter().all(|error| error.is_invalid_argument()));
    assert!(failed.iter().all(|error| !error.task_may_exist()));
    assert!(outcomes[..100].iter().all(|outcome| !is_created(outcome)));
    assert!(outcomes[100..].iter().all(is_created));
    assert_eq!(server.tasks().len(), 50);
    assert_eq!(
        server.batch_create_tasks_calls().len(),
        2,
        "a definite error is not retried"
    );
}

#[tokio::test]
async fn an_unavailable_batch_is_retried_with_its_request_id_and_applied_once() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Reject(Code::Unavailable, "before applying".into()));
    server.push_fault(Fault::FailAfterStore(
        Code::Unavailable,
        "reply lost".into(),
    ));

    let outcomes = client
        .enqueue_all(documents(100), BatchOptions::new())
        .await;

    assert!(outcomes.iter().all(is_created), "{outcomes:?}");
    assert_eq!(server.tasks().len(), 100, "applied once");
    let calls = server.batch_create_tasks_calls();
    assert_eq!(calls.len(), 3);
    let request_id = &calls[0].message.request_id;
    assert!(!request_id.is_empty());
    assert!(
        calls
            .iter()
            .all(|call| &call.message.request_id == request_id)
    );
}

#[tokio::test]
async fn per_task_mode_sends_one_create_task_per_document() {
    let (server, client) = mock_and_client().await;
    let mut input = documents(30);
    let refused = input[7].document_id.to_string();
    server.fail_tasks_containing(&refused, Code::InvalidArgument, "bad task");
    input[9].document_id = Uuid::nil();

    let outcomes = client
        .enqueue_all(
            input,
            BatchOptions::new()
                .with_mode(EnqueueMode::PerTask)
                .with_concurrency(4),
        )
        .await;

    assert_eq!(outcomes.len(), 30);
    assert!(outcomes[7].as_ref().err().unwrap().is_invalid_argument());
    assert!(outcomes[9].as_ref().err().unwrap().is_config());
    assert_eq!(outcomes.iter().filter(|o| is_created(o)).count(), 28);
    assert_eq!(server.create_task_calls().len(), 29);
    assert!(server.batch_create_tasks_calls().is_empty());
}

#[tokio::test]
async fn general_http_tasks_are_validated_one_by_one() {
    let (server, client) = mock_and_client().await;
    let tasks = vec![
        HttpTask::post("/api/reindex").with_task_id("reindex-1"),
        HttpTask::post("no-leading-slash"),
        HttpTask::post("/api/reindex").with_task_id("reindex-1"),
    ];

    let outcomes = client.enqueue_all(tasks, BatchOptions::new()).await;

    assert_eq!(created_name(&outcomes[0]), client.task_name("reindex-1"));
    assert!(outcomes[1].as_ref().err().unwrap().is_config());
    assert_eq!(
        already_enqueued(&outcomes[2]),
        Some(client.task_name("reindex-1").as_str()),
        "the same name twice in one batch: {:?}",
        outcomes[2]
    );
    assert_eq!(
        server.batch_create_tasks_calls()[0].message.requests.len(),
        2
    );
}

#[tokio::test]
async fn the_enqueuer_streams_outcomes_and_bounds_calls_in_flight() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Delay(std::time::Duration::from_millis(200)));
    let mut enqueuer =
        client.batch_enqueuer::<usize>(BatchOptions::new().with_batch_size(10).with_concurrency(2));
    let mut seen = Vec::new();
    for (index, document) in documents(45).iter().enumerate() {
        seen.extend(enqueuer.push(index, document.clone()).await);
        assert!(enqueuer.in_flight() <= 2);
    }
    assert!(!seen.is_empty(), "outcomes arrive while pushing");
    seen.extend(enqueuer.finish().await);
    let mut keys: Vec<usize> = seen.iter().map(|(key, _)| *key).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        (0..45).collect::<Vec<_>>(),
        "each outcome exactly once"
    );
    assert_eq!(server.batch_create_tasks_calls().len(), 5);
}

/// At 50 tasks/s a batch carries 50 tasks, one second's worth, not a burst of 100.
#[tokio::test]
async fn a_batch_is_never_larger_than_one_second_of_the_rate() {
    let (server, client) = mock_and_client().await;
    let outcomes = client
        .enqueue_all(
            documents(100),
            BatchOptions::new().with_rate_limit(RateLimit::fixed(50)),
        )
        .await;
    assert!(outcomes.iter().all(is_created));
    let sizes: Vec<usize> = server
        .batch_create_tasks_calls()
        .iter()
        .map(|call| call.message.requests.len())
        .collect();
    assert_eq!(sizes, [50, 50]);
}

/// The fault: the server refuses a whole batch of 100 for quota (RESOURCE_EXHAUSTED, nothing
/// stored) at a fixed 100 tasks/s. The rate halves to 50/s, and the 100 tasks go again as two
/// batches of 50, one second of the lowered rate each, not as one burst of 100 that might
/// never fit the quota. Each is stored once.
#[tokio::test]
async fn a_batch_refused_for_quota_goes_again_in_batches_of_one_second_of_the_lowered_rate() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Reject(
        Code::ResourceExhausted,
        "quota exceeded".into(),
    ));
    let outcomes = client
        .enqueue_all(
            documents(100),
            BatchOptions::new().with_rate_limit(RateLimit::fixed(100)),
        )
        .await;
    assert!(
        outcomes.iter().all(is_created),
        "{:?}",
        outcomes.iter().find(|outcome| !is_created(outcome))
    );
    let sizes: Vec<usize> = server
        .batch_create_tasks_calls()
        .iter()
        .map(|call| call.message.requests.len())
        .collect();
    assert_eq!(sizes, [100, 50, 50]);
    let stored = stored_per_document(&server);
    assert_eq!(stored.len(), 100);
    assert!(stored.values().all(|count| *count == 1), "{stored:?}");
}

/// Each document's task held by the server, counted by document.
fn stored_per_document(server: &MockCloudTasks) -> HashMap<Uuid, usize> {
    let mut stored = HashMap::new();
    for task in server.tasks() {
        *stored.entry(body(&task).document_id).or_default() += 1;
    }
    stored
}

/// An endpoint without BatchCreateTasks (the fault: UNIMPLEMENTED, as an emulator without it
/// answers): the refused batch's tasks and every later one go with CreateTask, each created
/// once; the client remembers, so a later bulk enqueue asks no second time.
#[tokio::test]
async fn a_batch_refused_as_unimplemented_goes_one_task_per_call_and_is_remembered() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Reject(
        Code::Unimplemented,
        "Method not found!".into(),
    ));
    let input = documents(250);
    let options = BatchOptions::new()
        .with_concurrency(1)
        .with_rate_limit(RateLimit::none());

    let outcomes = client.enqueue_all(input.clone(), options.clone()).await;

    assert!(outcomes.iter().all(is_created), "{outcomes:?}");
    assert!(client.batch_create_tasks_unimplemented());
    assert_eq!(server.batch_create_tasks_calls().len(), 1, "asked once");
    assert_eq!(server.create_task_calls().len(), 250);
    let stored = stored_per_document(&server);
    assert_eq!(stored.len(), 250);
    assert!(input.iter().all(|d| stored.get(&d.document_id) == Some(&1)));

    // The same client (a clone) goes straight to CreateTask; de-duplication still holds.
    let again = client
        .clone()
        .enqueue_all(input[..10].to_vec(), options.clone().with_dedupe(true))
        .await;
    assert!(again.iter().all(is_created), "named now: {again:?}");
    let rerun = client
        .enqueue_all(input[..10].to_vec(), options.with_dedupe(true))
        .await;
    assert!(
        rerun.iter().all(|o| already_enqueued(o).is_some()),
        "{rerun:?}"
    );
    assert_eq!(
        server.batch_create_tasks_calls().len(),
        1,
        "not asked again"
    );
    assert_eq!(server.create_task_calls().len(), 270);
}

/// UNIMPLEMENTED on a resend after an attempt that may have created the tasks (its answer was
/// lost: the fault stores the batch, then fails with UNAVAILABLE) is no reason to send them
/// again one by one: that could create each twice. The tasks are reported as "may exist".
#[tokio::test]
async fn unimplemented_after_an_attempt_that_may_have_created_the_tasks_is_not_a_fallback() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::FailAfterStore(
        Code::Unavailable,
        "reply lost".into(),
    ));
    server.push_fault(Fault::Reject(
        Code::Unimplemented,
        "Method not found!".into(),
    ));
    let input = documents(5);

    let outcomes = client
        .enqueue_all(
            input.clone(),
            BatchOptions::new().with_rate_limit(RateLimit::none()),
        )
        .await;

    for outcome in &outcomes {
        let error = outcome.as_ref().unwrap_err();
        assert!(error.task_may_exist(), "{error}");
        assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    }
    assert_eq!(server.batch_create_tasks_calls().len(), 2);
    assert!(server.create_task_calls().is_empty(), "no task sent again");
    assert!(!client.batch_create_tasks_unimplemented());
    let stored = stored_per_document(&server);
    assert!(input.iter().all(|d| stored.get(&d.document_id) == Some(&1)));
}

/// A server that accepts batches but cannot be asked about their operations (GetOperation
/// UNIMPLEMENTED): the batch was accepted, so its tasks may exist and are not sent again.
#[tokio::test]
async fn an_accepted_batch_whose_operation_cannot_be_read_is_not_sent_again() {
    let (server, client) = mock_and_client().await;
    server.set_operation_polls(1);
    server.set_unimplemented(["GetOperation"]);
    let input = documents(5);

    let outcomes = client
        .enqueue_all(
            input.clone(),
            BatchOptions::new().with_rate_limit(RateLimit::none()),
        )
        .await;

    for outcome in &outcomes {
        let error = outcome.as_ref().unwrap_err();
        assert!(matches!(error, Error::OperationLost { .. }), "{error:?}");
        assert!(error.task_may_exist());
        assert!(
            error
                .to_string()
                .contains("does not implement GetOperation"),
            "{error}"
        );
    }
    assert_eq!(server.get_operation_calls().len(), 1, "not retried");
    assert!(server.create_task_calls().is_empty(), "no task sent again");
    assert!(!client.batch_create_tasks_unimplemented());
    let stored = stored_per_document(&server);
    assert!(input.iter().all(|d| stored.get(&d.document_id) == Some(&1)));
}

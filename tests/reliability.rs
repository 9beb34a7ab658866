//! Fault injection: for each fault, what the caller sees and what the server holds.
//!
//! Nothing may be lost silently (every failure reaches the caller, saying whether the task may
//! exist) and nothing may be duplicated in de-duplicated mode.

mod common;

use std::time::{Duration, Instant};

use cloud_tasks::testing::Fault;
use cloud_tasks::{
    CallOptions, CloudTasksClient, Code, DocumentTask, Enqueued, Error, HttpTask, RetryPolicy, Uuid,
};
use common::*;

fn unavailable() -> Fault {
    Fault::Reject(Code::Unavailable, "backend restarting".to_owned())
}

fn unavailable_after_store() -> Fault {
    Fault::FailAfterStore(Code::Unavailable, "reply lost".to_owned())
}

fn deduplicated() -> DocumentTask {
    DocumentTask::new(Uuid::new_v4(), "report.pdf").deduplicated()
}

async fn enqueue(client: &CloudTasksClient, document: DocumentTask) -> Result<Enqueued, Error> {
    client.enqueue(document, &CallOptions::new()).await
}

#[tokio::test]
async fn unnamed_task_unavailable_before_store_is_reported_and_not_retried() {
    let (server, client) = mock_and_client().await;
    server.push_fault(unavailable());
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(error.task_may_exist(), "the client cannot know: {error}");
    assert!(error.to_string().contains("may or may not exist"));
    assert_eq!(server.create_task_calls().len(), 1, "never sent twice");
    assert!(server.tasks().is_empty());
}

#[tokio::test]
async fn unnamed_task_unavailable_after_store_is_reported_as_maybe_existing() {
    let (server, client) = mock_and_client().await;
    server.push_fault(unavailable_after_store());
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(error.task_may_exist());
    assert_eq!(server.create_task_calls().len(), 1, "never sent twice");
    assert_eq!(
        server.tasks().len(),
        1,
        "stored once, and the caller was told it may be"
    );
}

#[tokio::test]
async fn deduplicated_enqueue_survives_unavailable_before_store() {
    let (server, client) = mock_and_client().await;
    server.push_fault(unavailable());
    server.push_fault(unavailable());
    let document = deduplicated();
    let expected_name = client.task_name(document.task_id().unwrap());
    let enqueued = enqueue(&client, document).await.unwrap();
    assert!(enqueued.was_created());
    assert_eq!(enqueued.task_name(), expected_name);
    assert_eq!(server.create_task_calls().len(), 3);
    assert_eq!(server.tasks().len(), 1);
}

#[tokio::test]
async fn deduplicated_enqueue_survives_unavailable_after_store() {
    let (server, client) = mock_and_client().await;
    server.push_fault(unavailable_after_store());
    let document = deduplicated();
    let expected_name = client.task_name(document.task_id().unwrap());
    let enqueued = enqueue(&client, document).await.unwrap();
    assert_eq!(
        enqueued,
        Enqueued::AlreadyExists {
            task_name: expected_name
        },
        "the retry found the task the first attempt stored"
    );
    assert_eq!(server.create_task_calls().len(), 2);
    assert_eq!(server.tasks().len(), 1);
}

#[tokio::test]
async fn the_same_document_twice_is_one_task_unless_rekeyed() {
    let (server, client) = mock_and_client().await;
    let id = Uuid::new_v4();
    let first = enqueue(&client, DocumentTask::new(id, "a.pdf").deduplicated())
        .await
        .unwrap();
    let second = enqueue(&client, DocumentTask::new(id, "a.pdf").deduplicated())
        .await
        .unwrap();
    assert!(first.was_created());
    assert!(!second.was_created(), "reported as already enqueued");
    assert_eq!(first.task_name(), second.task_name());
    assert_eq!(server.tasks().len(), 1);

    let rerun = enqueue(
        &client,
        DocumentTask::new(id, "a.pdf").deduplicated_with_key("model-v2"),
    )
    .await
    .unwrap();
    assert!(rerun.was_created());
    assert_ne!(rerun.task_name(), first.task_name());
    assert_eq!(server.tasks().len(), 2);
}

/// ALREADY_EXISTS is an outcome only for a named task, whose name says which task exists; for
/// an unnamed one (the server picks its name, so it cannot be this call's) it is an error.
#[tokio::test]
async fn already_exists_is_an_outcome_for_named_tasks_and_an_error_for_unnamed_ones() {
    let (server, client) = mock_and_client().await;
    let task = HttpTask::post("/x").with_task_id("once");
    let options = CallOptions::new();
    assert!(
        client
            .enqueue(task.clone(), &options)
            .await
            .unwrap()
            .was_created()
    );
    let again = client.enqueue(task, &options).await.unwrap();
    assert_eq!(
        again,
        Enqueued::AlreadyExists {
            task_name: client.task_name("once")
        }
    );
    assert_eq!(server.tasks().len(), 1);

    server.push_fault(Fault::Reject(Code::AlreadyExists, "exists".to_owned()));
    let error = client
        .enqueue(HttpTask::post("/x"), &options)
        .await
        .unwrap_err();
    assert!(error.is_already_exists());
    assert_eq!(server.tasks().len(), 1);
}

#[tokio::test]
async fn resource_exhausted_is_retried_only_for_named_tasks() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Reject(Code::ResourceExhausted, "quota".to_owned()));
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(error.is_transient());
    assert_eq!(error.code(), Some(Code::ResourceExhausted));
    assert_eq!(server.create_task_calls().len(), 1);

    server.push_fault(Fault::Reject(Code::ResourceExhausted, "quota".to_owned()));
    let enqueued = enqueue(&client, deduplicated()).await.unwrap();
    assert!(enqueued.was_created());
    assert_eq!(server.create_task_calls().len(), 3);
    assert_eq!(server.tasks().len(), 1);
}

#[tokio::test]
async fn a_server_slower_than_the_deadline_fails_in_time() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Delay(Duration::from_secs(3)));
    let started = Instant::now();
    let error = client
        .enqueue(
            DocumentTask::new(Uuid::new_v4(), "a.pdf"),
            &CallOptions::new().with_total_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert!(error.is_timeout(), "{error:?}");
    assert!(error.task_may_exist());
    assert_eq!(
        server.create_task_calls().len(),
        1,
        "an unnamed task is not resent"
    );
}

#[tokio::test]
async fn a_deduplicated_retry_after_a_slow_attempt_stores_one_task() {
    let (server, client) = mock_and_client().await;
    // The first attempt's handler stores the task only after the client gave up on it.
    server.push_fault(Fault::Delay(Duration::from_millis(600)));
    let enqueued = client
        .enqueue(
            deduplicated(),
            &CallOptions::new()
                .with_attempt_timeout(Duration::from_millis(200))
                .with_total_timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert!(enqueued.was_created());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(server.create_task_calls().len(), 2);
    assert_eq!(
        server.tasks().len(),
        1,
        "the late first attempt was refused"
    );
}

#[tokio::test]
async fn no_server_at_all_is_a_connect_error_that_sent_nothing() {
    let host = unused_host();
    let client = builder()
        .with_emulator_host(&host)
        .with_total_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(error.was_never_sent());
    assert!(!error.task_may_exist());
    let message = error.to_string();
    assert!(message.contains(&host), "{message}");
    assert!(message.contains("nothing was sent"), "{message}");
}

#[tokio::test]
async fn calls_during_a_server_restart_reconnect_and_store_each_document_once() {
    let (mut server, client) = mock_and_client().await;
    let warm = enqueue(&client, deduplicated()).await.unwrap();
    assert!(
        warm.was_created(),
        "the channel is connected before the restart"
    );

    server.stop().await;
    let documents: Vec<DocumentTask> = (0..5).map(|_| deduplicated()).collect();
    let calls: Vec<_> = documents
        .iter()
        .map(|document| {
            let client = client.clone();
            let document = document.clone();
            tokio::spawn(async move {
                client
                    .enqueue(
                        document,
                        &CallOptions::new()
                            .with_retry_policy(RetryPolicy::default().with_max_attempts(100)),
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await.unwrap();

    for call in calls {
        let enqueued = call.await.unwrap().unwrap();
        assert!(enqueued.task_name().starts_with(QUEUE_PATH));
    }
    let mut stored: Vec<String> = server.tasks().into_iter().map(|task| task.name).collect();
    stored.sort();
    let mut expected: Vec<String> = documents
        .iter()
        .map(|document| client.task_name(document.task_id().unwrap()))
        .chain([warm.task_name().to_owned()])
        .collect();
    expected.sort();
    assert_eq!(stored, expected, "every document stored exactly once");
}

#[tokio::test]
async fn an_in_flight_call_survives_a_graceful_restart() {
    let (mut server, client) = mock_and_client().await;
    client
        .create_document_processing_task(Uuid::new_v4(), "warm.pdf")
        .await
        .unwrap();
    server.push_fault(Fault::Delay(Duration::from_millis(300)));
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .create_document_processing_task(Uuid::new_v4(), "slow.pdf")
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.restart().await.unwrap();
    in_flight.await.unwrap().unwrap();
    client
        .create_document_processing_task(Uuid::new_v4(), "after.pdf")
        .await
        .unwrap();
    assert_eq!(server.tasks().len(), 3);
}

#[tokio::test]
async fn a_hung_server_is_bounded_by_the_total_deadline() {
    let (host, hold) = silent_server().await;
    let client = builder()
        .with_emulator_host(host)
        .with_total_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = enqueue(&client, deduplicated()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert!(error.is_timeout(), "{error:?}");
    hold.abort();
}

/// Issue 17: a server stores a batch of 100, answers UNAVAILABLE, and is gone. The batch is
/// resent (its request_id makes that safe) and the resend cannot connect; the connect error
/// alone would say "nothing was sent". Every stored document is reported as may exist, the
/// message saying both what the last attempt met and that an earlier one may have landed.
#[tokio::test]
async fn a_batch_stored_then_answered_unavailable_by_a_server_that_vanishes_may_exist() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Vanish(Code::Unavailable, "reply lost".to_owned()));
    let documents: Vec<_> = (0..100)
        .map(|index| cloud_tasks::ProcessDocumentPayload {
            document_id: Uuid::new_v4(),
            filename: format!("scan-{index}.pdf"),
        })
        .collect();
    let options = cloud_tasks::BatchOptions::new()
        .with_rate_limit(cloud_tasks::RateLimit::none())
        .with_call_options(CallOptions::new().with_total_timeout(Duration::from_secs(5)));
    let outcomes = client.enqueue_all(documents, options).await;
    assert_eq!(server.tasks().len(), 100, "the server stored the batch");
    assert_eq!(outcomes.len(), 100);
    for outcome in &outcomes {
        let error = outcome.as_ref().unwrap_err();
        assert!(error.task_may_exist(), "{error}");
        assert!(!error.was_never_sent(), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("cannot connect to Cloud Tasks")
                && message.contains("earlier attempt may have reached Cloud Tasks")
                && message.contains("reply lost"),
            "{message}"
        );
    }
}

/// The same with one de-duplicated call per document: the named task's resend cannot
/// connect, and the document is still reported as may exist.
#[tokio::test]
async fn a_named_task_stored_then_answered_unavailable_by_a_server_that_vanishes_may_exist() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Vanish(Code::Unavailable, "reply lost".to_owned()));
    let options = cloud_tasks::BatchOptions::new()
        .with_mode(cloud_tasks::EnqueueMode::PerTask)
        .with_dedupe(true)
        .with_rate_limit(cloud_tasks::RateLimit::none())
        .with_call_options(CallOptions::new().with_total_timeout(Duration::from_secs(5)));
    let outcomes = client
        .enqueue_all([DocumentTask::new(Uuid::new_v4(), "report.pdf")], options)
        .await;
    assert_eq!(server.tasks().len(), 1, "the server stored the task");
    assert_eq!(
        server.create_task_calls().len(),
        1,
        "the resend never arrived"
    );
    let error = outcomes[0].as_ref().unwrap_err();
    assert!(error.task_may_exist(), "{error}");
    assert!(
        error
            .to_string()
            .contains("earlier attempt may have reached Cloud Tasks"),
        "{error}"
    );
}

/// A stream reset after the request was sent with ENHANCE_YOUR_CALM (RESOURCE_EXHAUSTED in
/// gRPC's mapping) or INADEQUATE_SECURITY (PERMISSION_DENIED) may have been processed, unlike
/// a quota or permission answer from Cloud Tasks: the stored unnamed task is reported as may
/// exist and not sent again.
#[tokio::test]
async fn a_stream_reset_after_storing_may_have_created_the_task() {
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    const INADEQUATE_SECURITY: u32 = 0xc;
    for (reason, code) in [
        (ENHANCE_YOUR_CALM, Code::ResourceExhausted),
        (INADEQUATE_SECURITY, Code::PermissionDenied),
    ] {
        let (server, client) = mock_and_client().await;
        server.push_fault(Fault::Reset {
            reason,
            after_store: true,
        });
        let error = client
            .create_document_processing_task(Uuid::new_v4(), "a.pdf")
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(code), "{error:?}");
        assert!(error.task_may_exist(), "{error}");
        assert!(
            error.to_string().contains("may or may not exist"),
            "{error}"
        );
        assert_eq!(server.create_task_calls().len(), 1, "never sent twice");
        assert_eq!(server.tasks().len(), 1);
    }
}

/// REFUSED_STREAM is HTTP/2's promise that the stream was not processed: the unnamed task is
/// sent again and stored once.
#[tokio::test]
async fn a_refused_stream_is_sent_again_and_stored_once() {
    const REFUSED_STREAM: u32 = 0x7;
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Reset {
        reason: REFUSED_STREAM,
        after_store: false,
    });
    client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap();
    assert_eq!(server.create_task_calls().len(), 2);
    assert_eq!(server.tasks().len(), 1);
}

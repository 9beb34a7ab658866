//! Document operations against the mock server: GetTask, DeleteTask, RunTask on a document's
//! de-duplicated task, ListTasks page by page; retries, error messages and routing headers.

mod common;

use cloud_tasks::Code;
use cloud_tasks::testing::{Fault, MockCloudTasks};
use cloud_tasks::{
    BatchOptions, CallOptions, CloudTasksClient, DocumentTask, ListTasksOptions, RateLimit, Uuid,
};
use common::*;
use http::HeaderMap;

fn routing(metadata: &HeaderMap) -> &str {
    metadata
        .get("x-goog-request-params")
        .expect("the routing header is sent")
        .to_str()
        .unwrap()
}

/// `name=<url-encoded task name>`, as Google's clients route calls on one task.
fn routed_by_name(task_name: &str) -> String {
    format!("name={}", task_name.replace('/', "%2F"))
}

/// Enqueues `document_id` de-duplicated, as `enqueue --dedupe` does.
async fn enqueue(client: &CloudTasksClient, document_id: Uuid, key: Option<&str>) {
    let document = DocumentTask::new(document_id, "report.pdf");
    let document = match key {
        Some(key) => document.deduplicated_with_key(key),
        None => document.deduplicated(),
    };
    let enqueued = client.enqueue(document, &CallOptions::new()).await.unwrap();
    assert!(enqueued.was_created());
}

fn options() -> CallOptions {
    CallOptions::new()
}

#[tokio::test]
async fn status_finds_the_documents_task_by_its_id() {
    let (server, client) = mock_and_client().await;
    let document_id = Uuid::new_v4();
    enqueue(&client, document_id, Some("v2")).await;

    let task = client
        .document_task(document_id, Some("v2"), &options())
        .await
        .unwrap()
        .expect("the task exists");
    let name = client.document_task_name(document_id, Some("v2"));
    assert_eq!(task.name, name);
    assert_eq!(task.name, server.tasks()[0].name);
    assert!(task.schedule_time.is_some());
    assert_eq!(task.dispatch_count, 0);

    let calls = server.get_task_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].message.name, name);
    assert_eq!(routing(&calls[0].metadata), routed_by_name(&name));
    assert!(calls[0].metadata.get("x-goog-api-client").is_some());

    // Another key is another task.
    let other = client
        .document_task(document_id, None, &options())
        .await
        .unwrap();
    assert!(other.is_none());
}

#[tokio::test]
async fn status_of_a_document_without_a_task_is_none() {
    let (server, client) = mock_and_client().await;
    let task = client
        .document_task(Uuid::new_v4(), None, &options())
        .await
        .unwrap();
    assert!(task.is_none());
    assert_eq!(server.get_task_calls().len(), 1, "NOT_FOUND is not retried");
}

#[tokio::test]
async fn cancel_deletes_the_task_and_is_idempotent() {
    let (server, client) = mock_and_client().await;
    let document_id = Uuid::new_v4();
    enqueue(&client, document_id, None).await;
    let name = client.document_task_name(document_id, None);

    assert!(
        client
            .cancel_document(document_id, None, &options())
            .await
            .unwrap()
    );
    assert!(server.tasks().is_empty());
    assert!(
        !client
            .cancel_document(document_id, None, &options())
            .await
            .unwrap(),
        "no task to cancel is not an error"
    );
    let calls = server.delete_task_calls();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!(call.message.name, name);
        assert_eq!(routing(&call.metadata), routed_by_name(&name));
    }
    assert!(
        client
            .document_task(document_id, None, &options())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn run_dispatches_the_task_now() {
    let (server, client) = mock_and_client().await;
    let document_id = Uuid::new_v4();
    enqueue(&client, document_id, None).await;
    let name = client.document_task_name(document_id, None);

    let task = client
        .run_document(document_id, None, &options())
        .await
        .unwrap();
    assert_eq!(task.name, name);
    assert_eq!(task.dispatch_count, 1);
    assert!(task.last_attempt.unwrap().dispatch_time.is_some());
    let calls = server.run_task_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(routing(&calls[0].metadata), routed_by_name(&name));
}

#[tokio::test]
async fn running_a_document_without_a_task_says_the_task_is_absent() {
    let (server, client) = mock_and_client().await;
    let document_id = Uuid::new_v4();
    let error = client
        .run_document(document_id, None, &options())
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert!(!error.task_may_exist());
    let message = error.to_string();
    let name = client.document_task_name(document_id, None);
    assert!(
        message.contains(&format!("task {name} does not exist")),
        "{message}"
    );
    assert!(message.contains("already finished"), "{message}");
    assert!(
        !message.contains("gcloud tasks queues create"),
        "a missing task is not a missing queue: {message}"
    );
    assert_eq!(server.run_task_calls().len(), 1);
}

#[tokio::test]
async fn reads_deletes_and_lists_are_retried_on_unavailable() {
    let (server, client) = mock_and_client().await;
    let document_id = Uuid::new_v4();
    enqueue(&client, document_id, None).await;

    server.push_fault(Fault::Reject(Code::Unavailable, "try again".into()));
    server.push_fault(Fault::Reject(Code::DeadlineExceeded, "slow".into()));
    let task = client
        .document_task(document_id, None, &options())
        .await
        .unwrap();
    assert!(task.is_some());
    assert_eq!(server.get_task_calls().len(), 3);

    server.push_fault(Fault::Reject(Code::Unavailable, "try again".into()));
    let mut pager = client.list_tasks(ListTasksOptions::new());
    assert_eq!(pager.next_page().await.unwrap().unwrap().len(), 1);
    assert_eq!(server.list_tasks_calls().len(), 2);

    server.push_fault(Fault::Reject(Code::Unavailable, "try again".into()));
    let deleted = client
        .cancel_document(document_id, None, &options())
        .await
        .unwrap();
    assert!(deleted);
    assert_eq!(server.delete_task_calls().len(), 2);
}

#[tokio::test]
async fn a_delete_whose_answer_was_lost_is_retried_and_reports_no_task() {
    let (server, client) = mock_and_client().await;
    let document_id = Uuid::new_v4();
    enqueue(&client, document_id, None).await;

    server.push_fault(Fault::FailAfterStore(
        Code::Unavailable,
        "reply lost".into(),
    ));
    let deleted = client
        .cancel_document(document_id, None, &options())
        .await
        .unwrap();
    assert!(!deleted, "the retry found the task gone");
    assert!(server.tasks().is_empty());
    assert_eq!(server.delete_task_calls().len(), 2);
}

#[tokio::test]
async fn run_is_not_sent_again_once_it_may_have_reached_cloud_tasks() {
    let (server, client) = mock_and_client().await;
    let document_id = Uuid::new_v4();
    enqueue(&client, document_id, None).await;

    server.push_fault(Fault::FailAfterStore(
        Code::Unavailable,
        "reply lost".into(),
    ));
    let error = client
        .run_document(document_id, None, &options())
        .await
        .unwrap_err();
    assert!(error.task_may_exist(), "{error}");
    assert_eq!(server.run_task_calls().len(), 1, "one dispatch, not two");
    assert_eq!(server.tasks()[0].dispatch_count, 1);
}

#[tokio::test]
async fn run_without_a_server_fails_as_never_sent() {
    let host = unused_host();
    let client = builder()
        .with_emulator_host(host.clone())
        .with_total_timeout(std::time::Duration::from_millis(600))
        .build()
        .unwrap();
    let error = client
        .run_document(Uuid::new_v4(), None, &options())
        .await
        .unwrap_err();
    assert!(error.was_never_sent(), "{error}");
}

#[tokio::test]
async fn permission_denied_names_the_permission_of_the_call() {
    let (server, client) = mock_and_client().await;
    server.push_fault(Fault::Reject(Code::PermissionDenied, "denied".into()));
    let error = client
        .cancel_document(Uuid::new_v4(), None, &options())
        .await
        .unwrap_err();
    assert!(error.is_permission_denied());
    let message = error.to_string();
    assert!(message.contains("cloudtasks.tasks.delete"), "{message}");
    assert!(
        message.contains("roles/cloudtasks.taskDeleter"),
        "{message}"
    );
    assert!(!message.contains("enqueuer"), "{message}");
}

/// Creates `count` unnamed tasks.
async fn fill(client: &CloudTasksClient, count: usize) {
    for _ in 0..count {
        client
            .create_document_processing_task(Uuid::new_v4(), "a.pdf")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn list_pages_through_the_queue() {
    let (server, client) = mock_and_client().await;
    fill(&client, 25).await;

    let mut pager = client.list_tasks(ListTasksOptions::new().with_page_size(10));
    let mut sizes = Vec::new();
    let mut names = Vec::new();
    while let Some(page) = pager.next_page().await.unwrap() {
        sizes.push(page.len());
        names.extend(page.into_iter().map(|task| task.name));
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(pager.returned(), 25);
    assert!(pager.next_page().await.unwrap().is_none(), "stays done");
    let stored: Vec<String> = server.tasks().into_iter().map(|task| task.name).collect();
    assert_eq!(names, stored);

    let calls = server.list_tasks_calls();
    let tokens: Vec<&str> = calls
        .iter()
        .map(|call| call.message.page_token.as_str())
        .collect();
    assert_eq!(tokens, ["", "10", "20"]);
    for call in &calls {
        assert_eq!(call.message.parent, QUEUE_PATH);
        assert_eq!(call.message.page_size, 10);
        assert_eq!(
            routing(&call.metadata),
            format!("parent={}", QUEUE_PATH.replace('/', "%2F"))
        );
    }
}

#[tokio::test]
async fn list_stops_at_the_limit() {
    let (server, client) = mock_and_client().await;
    fill(&client, 12).await;

    let mut pager = client.list_tasks(ListTasksOptions::new().with_page_size(5).with_limit(7));
    let mut sizes = Vec::new();
    while let Some(page) = pager.next_page().await.unwrap() {
        sizes.push(page.len());
    }
    assert_eq!(sizes, [5, 2]);
    let page_sizes: Vec<i32> = server
        .list_tasks_calls()
        .iter()
        .map(|call| call.message.page_size)
        .collect();
    assert_eq!(
        page_sizes,
        [5, 2],
        "no more is asked for than the limit needs"
    );
}

#[tokio::test]
async fn a_failed_page_is_asked_for_again() {
    let (server, client) = mock_and_client().await;
    fill(&client, 4).await;
    let mut pager = client.list_tasks(
        ListTasksOptions::new().with_page_size(2).with_call_options(
            CallOptions::new()
                .with_retry_policy(cloud_tasks::RetryPolicy::default().with_max_attempts(1)),
        ),
    );
    assert_eq!(pager.next_page().await.unwrap().unwrap().len(), 2);
    server.push_fault(Fault::Reject(Code::Unavailable, "try again".into()));
    assert!(pager.next_page().await.is_err());
    assert_eq!(pager.next_page().await.unwrap().unwrap().len(), 2);
    assert!(pager.next_page().await.unwrap().is_none());
    let tokens: Vec<String> = server
        .list_tasks_calls()
        .into_iter()
        .map(|call| call.message.page_token)
        .collect();
    assert_eq!(tokens, ["", "2", "2"]);
}

#[tokio::test]
async fn listing_a_missing_queue_says_the_queue_is_missing() {
    let server = MockCloudTasks::start().await.unwrap();
    server.set_queues(["projects/my-project/locations/us-central1/queues/other"]);
    let client = builder().with_emulator_host(server.host()).build().unwrap();
    let error = client
        .list_tasks(ListTasksOptions::new())
        .next_page()
        .await
        .unwrap_err();
    assert!(error.is_not_found());
    assert!(
        error.to_string().contains("gcloud tasks queues create"),
        "{error}"
    );
}

/// A server without the document calls (an emulator): each fails once, unretried, with an
/// error naming the call and the endpoint, and nothing says the task may exist.
#[tokio::test]
async fn calls_the_server_lacks_name_the_call_and_the_endpoint() {
    let (server, client) = mock_and_client().await;
    server.set_unimplemented(["GetTask", "DeleteTask", "RunTask", "ListTasks"]);
    let document_id = Uuid::new_v4();
    let errors = [
        (
            "GetTask",
            client
                .document_task(document_id, None, &options())
                .await
                .unwrap_err(),
        ),
        (
            "DeleteTask",
            client
                .cancel_document(document_id, None, &options())
                .await
                .unwrap_err(),
        ),
        (
            "RunTask",
            client
                .run_document(document_id, None, &options())
                .await
                .unwrap_err(),
        ),
        (
            "ListTasks",
            client
                .list_tasks(ListTasksOptions::new())
                .next_page()
                .await
                .unwrap_err(),
        ),
    ];
    for (method, error) in errors {
        assert!(error.is_unimplemented(), "{method}: {error}");
        assert!(!error.task_may_exist(), "{method}: {error}");
        let expected = format!(
            "{} does not implement {method} (UNIMPLEMENTED: Method not found: {method}): an \
             emulator without {method}",
            server.uri()
        );
        assert!(error.to_string().starts_with(&expected), "{error}");
    }
    assert_eq!(server.get_task_calls().len(), 1);
    assert_eq!(server.delete_task_calls().len(), 1);
    assert_eq!(server.run_task_calls().len(), 1);
    assert_eq!(
        server.list_tasks_calls().len(),
        2,
        "status looked in the list too, and reports GetTask's refusal"
    );
}

/// The fault: an endpoint without GetTask (UNIMPLEMENTED, as `gcloud-tasks-emulator`).
/// `status` finds the document's task in ListTasks' pages instead (here on the second page,
/// behind 1,000 others), and says `None` for a document without one, rather than failing.
#[tokio::test]
async fn status_without_get_task_looks_in_the_list() {
    let (server, client) = mock_and_client().await;
    server.set_unimplemented(["GetTask"]);
    let others = (0..1000).map(|index| DocumentTask::new(Uuid::new_v4(), format!("{index}.pdf")));
    let created = client
        .enqueue_all(
            others,
            BatchOptions::new().with_rate_limit(RateLimit::none()),
        )
        .await;
    assert!(created.iter().all(Result::is_ok));
    let document_id = Uuid::new_v4();
    enqueue(&client, document_id, None).await;

    let options = options();
    let task = client
        .document_task(document_id, None, &options)
        .await
        .unwrap()
        .expect("found in the list");
    assert_eq!(task.name, client.document_task_name(document_id, None));
    let absent = client
        .document_task(Uuid::new_v4(), None, &options)
        .await
        .unwrap();
    assert!(absent.is_none());
    assert_eq!(server.get_task_calls().len(), 2);
    assert_eq!(server.list_tasks_calls().len(), 4, "two pages each");
}

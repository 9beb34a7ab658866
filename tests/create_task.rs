//! What `CloudTasksClient` puts on the wire, and how it reports what comes back.

mod common;

use std::collections::HashMap;
use std::error::Error as _;
use std::time::{Duration, SystemTime};

use cloud_tasks::proto::{AuthorizationHeader, HttpMethod, HttpRequest, MessageType, Task};
use cloud_tasks::testing::Fault;
use cloud_tasks::{CallOptions, CloudTasksClient, Code, Error, HttpTask, Uuid};
use common::*;

fn http_request(task: &Task) -> &HttpRequest {
    match &task.message_type {
        Some(MessageType::HttpRequest(http)) => http,
        other => panic!("expected an HTTP task, got {other:?}"),
    }
}

/// The Python backend's request for this document, built by hand from its source:
/// `json.dumps({"document_id": str(id), "filename": filename}).encode()`.
#[tokio::test]
async fn document_task_is_the_python_backends_request_field_for_field() {
    let (server, client) = mock_and_client().await;
    let document_id: Uuid = "9b2f3c1e-8d4a-4e6b-a1c2-3d4e5f6a7b8c".parse().unwrap();
    let filename = "Q3 \"final\" report\\v2 – résumé 😀.pdf";

    let created = client
        .create_document_processing_task(document_id, filename)
        .await
        .unwrap();

    let calls = server.create_task_calls();
    assert_eq!(calls.len(), 1);
    let request = &calls[0].message;
    assert_eq!(request.parent, QUEUE_PATH);
    let task = request.task.as_ref().unwrap();
    assert_eq!(task.name, "", "an unnamed task, as Python sent");
    assert_eq!(task.schedule_time, None);
    assert_eq!(
        task.dispatch_deadline,
        Some(prost_types::Duration {
            seconds: 600,
            nanos: 0
        })
    );
    let http = http_request(task);
    assert_eq!(
        http.url,
        "https://backend-abc123-uc.a.run.app/api/tasks/process-document"
    );
    assert_eq!(http.http_method, i32::from(HttpMethod::Post));
    assert_eq!(
        http.headers,
        HashMap::from([("Content-Type".to_owned(), "application/json".to_owned())])
    );
    // Printed by Python 3.11 for the same id and file name.
    let python_body = r#"{"document_id": "9b2f3c1e-8d4a-4e6b-a1c2-3d4e5f6a7b8c", "filename": "Q3 \"final\" report\\v2 \u2013 r\u00e9sum\u00e9 \ud83d\ude00.pdf"}"#;
    assert_eq!(std::str::from_utf8(&http.body).unwrap(), python_body);
    let parsed: serde_json::Value = serde_json::from_slice(&http.body).unwrap();
    assert_eq!(parsed["filename"], filename, "the file name round-trips");
    assert_eq!(parsed["document_id"], document_id.to_string());
    match &http.authorization_header {
        Some(AuthorizationHeader::OidcToken(oidc)) => {
            assert_eq!(oidc.service_account_email, SERVICE_ACCOUNT);
            assert_eq!(oidc.audience, SERVICE_URL);
        }
        other => panic!("expected an OIDC token, got {other:?}"),
    }

    let metadata = &calls[0].metadata;
    assert_eq!(
        metadata.get("x-goog-request-params").unwrap(),
        "parent=projects%2Fmy-project%2Flocations%2Fus-central1%2Fqueues%2Fdocument-processing"
    );
    let api_client = metadata.get("x-goog-api-client").unwrap().to_str().unwrap();
    assert!(api_client.starts_with("gl-rust/"), "{api_client}");
    assert!(api_client.contains(" gccl/"), "{api_client}");
    let user_agent = metadata.get("user-agent").unwrap().to_str().unwrap();
    assert!(user_agent.starts_with("cloud-tasks-rs/"), "{user_agent}");
    assert!(
        metadata.get("authorization").is_none(),
        "emulator mode sends no credentials"
    );
    let timeout = metadata.get("grpc-timeout").unwrap().to_str().unwrap();
    assert!(timeout.ends_with(['m', 'u', 'n', 'S']), "{timeout}");

    assert!(created.was_created());
    assert_eq!(created.task_name(), server.tasks()[0].name);
    assert!(
        created
            .task_name()
            .starts_with(&format!("{QUEUE_PATH}/tasks/"))
    );
}

#[tokio::test]
async fn general_http_task_carries_method_headers_schedule_and_name() {
    let (server, client) = mock_and_client().await;
    let at = SystemTime::now() + Duration::from_secs(3600);
    let created = client
        .enqueue(
            HttpTask::new(HttpMethod::Put, "/api/tasks/reindex?full=1")
                .with_body(b"raw".to_vec())
                .with_header("X-Job", "nightly")
                .with_header("x-job", "weekly")
                .with_dispatch_deadline(Duration::from_secs(15 * 60))
                .with_schedule_time(at)
                .with_task_id("reindex-2026-11-29"),
            &CallOptions::new(),
        )
        .await
        .unwrap();

    assert_eq!(
        created.task().map(|task| task.name.as_str()),
        Some(client.task_name("reindex-2026-11-29").as_str())
    );
    let calls = server.create_task_calls();
    let task = calls[0].message.task.as_ref().unwrap();
    assert_eq!(task.name, format!("{QUEUE_PATH}/tasks/reindex-2026-11-29"));
    assert_eq!(task.schedule_time, Some(prost_types::Timestamp::from(at)));
    assert_eq!(task.dispatch_deadline.unwrap().seconds, 900);
    let http = http_request(task);
    assert_eq!(http.url, format!("{SERVICE_URL}/api/tasks/reindex?full=1"));
    assert_eq!(http.http_method, i32::from(HttpMethod::Put));
    assert_eq!(http.body, b"raw");
    assert_eq!(
        http.headers,
        HashMap::from([("x-job".to_owned(), "weekly".to_owned())]),
        "a later value for the same header replaces the earlier one"
    );
}

#[tokio::test]
async fn clones_share_the_client_and_calls_run_concurrently() {
    let (server, client) = mock_and_client().await;
    let calls = (0..20).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .create_document_processing_task(Uuid::new_v4(), &format!("doc-{i}.pdf"))
                .await
        })
    });
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(server.tasks().len(), 20);
    assert_eq!(
        server.connections(),
        1,
        "clones share one HTTP/2 connection"
    );
}

/// Every status Cloud Tasks can answer `CreateTask` with, and what the caller is told.
#[tokio::test]
async fn statuses_map_to_predicates_and_actionable_messages() {
    struct Case {
        code: Code,
        check: fn(&Error) -> bool,
        mentions: &'static [&'static str],
        task_may_exist: bool,
    }
    let cases = [
        Case {
            code: Code::NotFound,
            check: Error::is_not_found,
            mentions: &[
                "queue \"document-processing\" does not exist in projects/my-project/locations/us-central1",
                "gcloud tasks queues create",
            ],
            task_may_exist: false,
        },
        Case {
            code: Code::PermissionDenied,
            check: Error::is_permission_denied,
            mentions: &[
                "cloudtasks.tasks.create on projects/my-project/locations/us-central1/queues/document-processing (roles/cloudtasks.enqueuer",
                "roles/iam.serviceAccountUser",
                "actAs",
                SERVICE_ACCOUNT,
            ],
            task_may_exist: false,
        },
        Case {
            code: Code::AlreadyExists,
            check: Error::is_already_exists,
            mentions: &["already exists", "already enqueued"],
            task_may_exist: false,
        },
        Case {
            code: Code::InvalidArgument,
            check: Error::is_invalid_argument,
            mentions: &["rejected the request as invalid", "server says"],
            task_may_exist: false,
        },
        Case {
            code: Code::Unauthenticated,
            check: Error::is_unauthenticated,
            mentions: &["gcloud auth application-default login"],
            task_may_exist: false,
        },
        Case {
            code: Code::Unavailable,
            check: Error::is_transient,
            mentions: &["may or may not exist"],
            task_may_exist: true,
        },
        Case {
            code: Code::DeadlineExceeded,
            check: Error::is_timeout,
            mentions: &["may or may not exist"],
            task_may_exist: true,
        },
        Case {
            code: Code::ResourceExhausted,
            check: Error::is_transient,
            mentions: &["quota", "retry later"],
            task_may_exist: false,
        },
    ];
    let (server, client) = mock_and_client().await;
    for case in cases {
        server.push_fault(Fault::Reject(case.code, "server says no".to_owned()));
        let error = client
            .create_document_processing_task(Uuid::new_v4(), "a.pdf")
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(case.code));
        assert!((case.check)(&error), "{:?}: {error}", case.code);
        assert_eq!(
            error.task_may_exist(),
            case.task_may_exist,
            "{:?}",
            case.code
        );
        let message = error.to_string();
        for mention in case.mentions {
            assert!(message.contains(mention), "{:?}: {message}", case.code);
        }
        assert_eq!(error.status_message(), Some("server says no"));
        assert_eq!(error.status_details(), Some(&[][..]));
        let source = error.source().expect("the status is the source");
        let status = source.downcast_ref::<tonic::Status>().unwrap();
        assert_eq!(status.message(), "server says no");
    }
    assert!(server.tasks().is_empty());
}

#[tokio::test]
async fn a_missing_queue_is_reported_by_name() {
    let (server, client) = mock_and_client().await;
    server.set_queues(["projects/my-project/locations/us-central1/queues/other"]);
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(error.is_not_found());
    assert!(
        error
            .to_string()
            .contains("\"document-processing\" does not exist")
    );
}

#[tokio::test]
async fn invalid_tasks_are_rejected_before_anything_is_sent() {
    let (server, client) = mock_and_client().await;
    let far_future = SystemTime::now() + Duration::from_secs(31 * 24 * 3600);
    let cases: Vec<(HttpTask, &str)> = vec![
        (HttpTask::post("api/no-slash"), "must start with '/'"),
        (
            HttpTask::post("/x").with_header("Authorization", "Bearer x"),
            "\"Authorization\" is set or reserved",
        ),
        (
            HttpTask::post("/x").with_header("X-Google-Foo", "1"),
            "reserved",
        ),
        (
            HttpTask::post("/x").with_task_id("has.dot"),
            "task ID \"has.dot\"",
        ),
        (
            HttpTask::post("/x").with_dispatch_deadline(Duration::from_secs(10)),
            "dispatch deadline 10s",
        ),
        (
            HttpTask::post("/x").with_dispatch_deadline(Duration::from_secs(31 * 60)),
            "outside the range",
        ),
        (
            HttpTask::post("/x").with_schedule_time(far_future),
            "at most 30 days",
        ),
        (
            HttpTask::post("/x").with_body(vec![b'x'; 101 * 1024]),
            "at most 102400",
        ),
        (
            HttpTask::post(format!("/{}", "p".repeat(2100))),
            "at most 2083",
        ),
    ];
    for (task, expected) in cases {
        let error = client.enqueue(task, &CallOptions::new()).await.unwrap_err();
        assert!(matches!(error, Error::InvalidTask(_)), "{error:?}");
        assert!(error.is_config());
        assert!(error.to_string().contains(expected), "{error}");
    }
    let error = client
        .create_document_processing_task(Uuid::nil(), "a.pdf")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nil UUID"), "{error}");
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("file name is empty"), "{error}");
    let error = client
        .create_document_processing_task(Uuid::new_v4(), &"n".repeat(1025))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("1025 bytes"), "{error}");
    assert!(server.create_task_calls().is_empty());
}

#[tokio::test]
async fn a_builder_with_bad_values_names_every_one() {
    let error = CloudTasksClient::builder()
        .with_project_id("")
        .with_queue("projects/p/locations/l/queues/q")
        .with_service_url("http://backend.example.com")
        .with_service_account_email("not-an-email")
        .with_emulator_host("127.0.0.1:1")
        .build()
        .unwrap_err();
    let Error::Config(config) = &error else {
        panic!("expected a config error, got {error:?}");
    };
    let settings: Vec<_> = config.problems().iter().map(|p| p.setting).collect();
    assert_eq!(
        settings,
        [
            "GCP_PROJECT_ID",
            "CLOUD_TASKS_QUEUE",
            "CLOUD_RUN_SERVICE_URL",
            "CLOUD_RUN_SERVICE_ACCOUNT"
        ]
    );
    let message = error.to_string();
    for value in [
        "\"projects/p/locations/l/queues/q\"",
        "\"http://backend.example.com\"",
        "\"not-an-email\"",
    ] {
        assert!(message.contains(value), "{message}");
    }
}

#[tokio::test]
async fn a_slow_server_hits_the_attempt_timeout() {
    let server = cloud_tasks::testing::MockCloudTasks::start().await.unwrap();
    let client = builder()
        .with_emulator_host(server.host())
        .with_attempt_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    server.push_fault(Fault::Delay(Duration::from_secs(2)));
    let started = std::time::Instant::now();
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(error.is_timeout(), "{error:?}");
    assert!(error.task_may_exist());
}

#[tokio::test]
async fn connecting_is_lazy_and_an_absent_server_is_unavailable() {
    let host = unused_host();
    let client = builder()
        .with_emulator_host(host)
        .build()
        .expect("building does not connect");
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unavailable), "{error:?}");
}

#[tokio::test]
async fn a_bad_emulator_host_is_reported_with_the_other_problems() {
    let error = builder()
        .with_project_id("")
        .with_emulator_host("http://127.0.0.1:8123")
        .build()
        .unwrap_err();
    let Error::Config(config) = &error else {
        panic!("expected a config error, got {error:?}");
    };
    let settings: Vec<_> = config.problems().iter().map(|p| p.setting).collect();
    assert_eq!(settings, ["GCP_PROJECT_ID", "CLOUD_TASKS_EMULATOR_HOST"]);
}

#[tokio::test]
async fn credentials_or_an_endpoint_with_an_emulator_host_is_refused_in_either_order() {
    let token_uri = "http://127.0.0.1:1/token";
    let cases = [
        (
            "with_credentials",
            builder()
                .with_emulator_host("127.0.0.1:8123")
                .with_credentials(credentials(token_uri)),
        ),
        (
            "with_credentials",
            builder()
                .with_credentials(credentials(token_uri))
                .with_emulator_host("127.0.0.1:8123"),
        ),
        (
            "with_endpoint",
            builder()
                .with_emulator_host("127.0.0.1:8123")
                .with_endpoint("https://eu-cloudtasks.example.com"),
        ),
    ];
    for (call, builder) in cases {
        let error = builder.build().unwrap_err();
        let Error::Config(config) = &error else {
            panic!("{call}: expected a config error, got {error:?}");
        };
        let [problem] = config.problems() else {
            panic!("{call}: expected one problem, got {config:?}");
        };
        assert_eq!(problem.setting, "CLOUD_TASKS_EMULATOR_HOST");
        assert!(problem.message.contains(call), "{}", problem.message);
    }
}

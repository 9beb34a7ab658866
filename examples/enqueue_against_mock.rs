//! Enqueues one document through the real client against the in-process mock server, and
//! prints what the server received.
//!
//! ```sh
//! cargo run --example enqueue_against_mock --features testing
//! ```

use cloud_tasks::proto::MessageType;
use cloud_tasks::testing::MockCloudTasks;
use cloud_tasks::{CloudTasksClient, Uuid};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MockCloudTasks::start().await?;
    let client = CloudTasksClient::builder()
        .with_project_id("my-project")
        .with_service_url("http://localhost:8000")
        .with_service_account_email("tasks-invoker@my-project.iam.gserviceaccount.com")
        .with_emulator_host(server.host())
        .build()?;

    let enqueued = client
        .create_document_processing_task(Uuid::new_v4(), "quarterly report.pdf")
        .await?;
    println!("created {}", enqueued.task_name());

    for call in server.create_task_calls() {
        let Some(task) = call.message.task else {
            continue;
        };
        if let Some(MessageType::HttpRequest(http)) = task.message_type {
            println!("  POST {}", http.url);
            println!("  body {}", String::from_utf8_lossy(&http.body));
        }
        let routing = call.metadata.get("x-goog-request-params");
        println!("  x-goog-request-params: {routing:?}");
    }
    Ok(())
}

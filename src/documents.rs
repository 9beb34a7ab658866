//! Document operations: from a document ID straight to its de-duplicated task (GetTask,
//! DeleteTask, RunTask), and ListTasks page by page.
//!
//! A de-duplicated task is named `document_task_id(document_id, key)`, so no lookup table is
//! needed to find it. Retries follow the crate's one policy (`retry.rs`): reading, listing and
//! deleting are idempotent, so they are retried on transient failures as named tasks are.
//! RunTask is not: Cloud Tasks dispatches the task on every RunTask it receives, "even if the
//! task is already running" (the proto's words), so a retry after a lost answer would deliver
//! the document twice, and the backend would pay for Docling + LLM extraction twice. It is sent
//! again only when the request provably was not processed, as an unnamed CreateTask is.

use tracing::Instrument;
use uuid::Uuid;

use crate::client::{CallOptions, CloudTasksClient};
use crate::dedupe::document_task_id;
use crate::error::{Call, Error};
use crate::permissions::Rpc;
use crate::proto::Task;
use crate::proto::google::cloud::tasks::v2::{
    DeleteTaskRequest, GetTaskRequest, ListTasksRequest, ListTasksResponse, RunTaskRequest,
    task::View,
};
use crate::retry::Idempotency;

/// The most tasks Cloud Tasks returns in one `ListTasks` page.
pub const MAX_LIST_PAGE_SIZE: u32 = 1000;

/// # Document operations
///
/// Each method takes the document's ID and the optional key it was enqueued under
/// ([`DocumentTask::deduplicated`](crate::DocumentTask::deduplicated) or
/// [`DocumentTask::deduplicated_with_key`](crate::DocumentTask::deduplicated_with_key)); an
/// unnamed task cannot be found from its document.
///
/// ```no_run
/// # async fn run(client: cloud_tasks::CloudTasksClient, id: cloud_tasks::Uuid)
/// # -> Result<(), cloud_tasks::Error> {
/// use cloud_tasks::CallOptions;
///
/// let options = CallOptions::new();
/// match client.document_task(id, None, &options).await? {
///     Some(task) => println!("waiting: {} attempts so far", task.dispatch_count),
///     None => println!("not enqueued, or already done"),
/// }
/// if client.cancel_document(id, None, &options).await? {
///     println!("cancelled");
/// }
/// # Ok(())
/// # }
/// ```
impl CloudTasksClient {
    /// The full name of the task a de-duplicated enqueue of `document_id` (under `key`) creates
    /// in this client's queue.
    pub fn document_task_name(&self, document_id: Uuid, key: Option<&str>) -> String {
        self.task_name(&document_task_id(document_id, key))
    }

    /// The document's task as Cloud Tasks holds it now (GetTask, basic view): schedule time,
    /// dispatch and response counts, first and last attempt. `None` if there is no such task:
    /// it was never enqueued (or under another key), or it already finished or was deleted;
    /// Cloud Tasks keeps no finished task.
    ///
    /// The basic view has everything but the request body, which the caller already knows (the
    /// document ID and file name); the full view would also need the
    /// `cloudtasks.tasks.fullView` permission.
    ///
    /// Cloud Tasks answers GetTask on a missing queue with NOT_FOUND too, so a queue name
    /// that is wrong also gives `None`; [`CloudTasksClient::list_tasks`] tells them apart.
    ///
    /// An endpoint without GetTask (an emulator such as `gcloud-tasks-emulator` answers
    /// UNIMPLEMENTED; Cloud Tasks implements it) is asked with ListTasks instead, page by page,
    /// until the task is found or the list ends.
    ///
    /// # Errors
    /// What Cloud Tasks answered other than NOT_FOUND ([`Error::Rpc`]), [`Error::Connect`],
    /// [`Error::Timeout`] or [`Error::Auth`]. Transient failures were already retried.
    pub async fn document_task(
        &self,
        document_id: Uuid,
        key: Option<&str>,
        options: &CallOptions,
    ) -> Result<Option<Task>, Error> {
        let name = self.document_task_name(document_id, key);
        let span = tracing::info_span!("document", %document_id);
        match self.get_task(&name, options).instrument(span.clone()).await {
            Ok(task) => Ok(Some(task)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) if error.is_unimplemented() => {
                tracing::info!(
                    endpoint = self.endpoint(),
                    task = name,
                    "the endpoint does not implement GetTask: looking for the task with ListTasks"
                );
                // Without ListTasks either, GetTask's refusal is the one to report.
                match self.find_listed(&name, options).instrument(span).await {
                    Err(list_error) if list_error.is_unimplemented() => Err(error),
                    found => found,
                }
            }
            Err(error) => Err(error),
        }
    }

    /// The task named `name`, looked for in the queue's list page by page; `None` if the list
    /// ends without it, or the queue does not exist (as GetTask's NOT_FOUND says).
    async fn find_listed(&self, name: &str, options: &CallOptions) -> Result<Option<Task>, Error> {
        let mut pager = self.list_tasks(ListTasksOptions::new().with_call_options(options.clone()));
        loop {
            match pager.next_page().await {
                Ok(Some(page)) => {
                    if let Some(task) = page.into_iter().find(|task| task.name == name) {
                        return Ok(Some(task));
                    }
                }
                Ok(None) => return Ok(None),
                Err(error) if error.is_not_found() => return Ok(None),
                Err(error) => return Err(error),
            }
        }
    }

    /// Cancels the document's task (DeleteTask): `true` if a task was deleted, `false` if
    /// there was none (never enqueued, already finished, or already cancelled), so calling it
    /// again is safe.
    ///
    /// `false` also when an earlier attempt of this very call deleted the task and its answer
    /// was lost. Cloud Tasks refuses a new task with the same name for about 1 hour after the
    /// deletion (up to 24 hours; about 9 days for queue.yaml queues); enqueue under a new key to
    /// process the document sooner.
    ///
    /// # Errors
    /// As [`CloudTasksClient::document_task`].
    pub async fn cancel_document(
        &self,
        document_id: Uuid,
        key: Option<&str>,
        options: &CallOptions,
    ) -> Result<bool, Error> {
        let name = self.document_task_name(document_id, key);
        let span = tracing::info_span!("document", %document_id);
        match self.delete_task(&name, options).instrument(span).await {
            Ok(()) => Ok(true),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Dispatches the document's task now (RunTask), whatever its schedule time, the queue's
    /// rate limits or pause: to re-drive a stuck document. Returns the task as Cloud Tasks
    /// answered, before the dispatch. Cloud Tasks deletes the task once the backend answers
    /// with a success, and otherwise schedules its next attempt after the queue's retry delay.
    ///
    /// Not retried once the request may have reached Cloud Tasks: every RunTask received
    /// dispatches the task again, even while an attempt is running.
    ///
    /// # Errors
    /// [`Error::is_not_found`] if the document has no task (never enqueued, already finished
    /// or deleted); otherwise as [`CloudTasksClient::document_task`], and
    /// [`Error::task_may_exist`] tells whether the dispatch may have happened anyway.
    pub async fn run_document(
        &self,
        document_id: Uuid,
        key: Option<&str>,
        options: &CallOptions,
    ) -> Result<Task, Error> {
        let name = self.document_task_name(document_id, key);
        let span = tracing::info_span!("document", %document_id);
        self.run_task(&name, options).instrument(span).await
    }

    /// The tasks waiting in this client's queue, page by page: nothing is fetched until
    /// [`TaskPager::next_page`] is called, and only one page is held at a time.
    pub fn list_tasks(&self, options: ListTasksOptions) -> TaskPager {
        TaskPager {
            client: self.clone(),
            options,
            page_token: Some(String::new()),
            returned: 0,
        }
    }

    async fn get_task(&self, name: &str, options: &CallOptions) -> Result<Task, Error> {
        let outcome = self
            .with_retries(
                Rpc::GetTask,
                name,
                options,
                Idempotency::Idempotent,
                |attempt| async move {
                    let message = GetTaskRequest {
                        name: name.to_owned(),
                        response_view: View::Basic.into(),
                    };
                    let request = self.prepare_by_name(message, name, attempt).await?;
                    let result = self.raw_stub().get_task(request).await;
                    self.map_response(result, Call::GetTask(name))
                },
            )
            .await;
        if let Err(error) = &outcome.result
            && !error.is_not_found()
        {
            tracing::warn!(task = name, attempts = outcome.attempts, %error, "GetTask failed");
        }
        outcome.result
    }

    async fn delete_task(&self, name: &str, options: &CallOptions) -> Result<(), Error> {
        let outcome = self
            .with_retries(
                Rpc::DeleteTask,
                name,
                options,
                Idempotency::Idempotent,
                |attempt| async move {
                    let message = DeleteTaskRequest {
                        name: name.to_owned(),
                    };
                    let request = self.prepare_by_name(message, name, attempt).await?;
                    let result = self.raw_stub().delete_task(request).await;
                    self.map_response(result, Call::DeleteTask(name))
                },
            )
            .await;
        match &outcome.result {
            Ok(()) => tracing::info!(task = name, attempts = outcome.attempts, "deleted task"),
            Err(error) if error.is_not_found() => {
                tracing::info!(task = name, "no task to delete");
            }
            Err(error) => {
                tracing::warn!(task = name, attempts = outcome.attempts, %error, "DeleteTask failed");
            }
        }
        outcome.result
    }

    async fn run_task(&self, name: &str, options: &CallOptions) -> Result<Task, Error> {
        let outcome = self
            .with_retries(
                Rpc::RunTask,
                name,
                options,
                Idempotency::NotIdempotent,
                |attempt| async move {
                    let message = RunTaskRequest {
                        name: name.to_owned(),
                        response_view: View::Basic.into(),
                    };
                    let request = self.prepare_by_name(message, name, attempt).await?;
                    let result = self.raw_stub().run_task(request).await;
                    self.map_response(result, Call::RunTask(name))
                },
            )
            .await;
        match &outcome.result {
            Ok(_) => tracing::info!(task = name, attempts = outcome.attempts, "ran task"),
            Err(error) => tracing::warn!(
                task = name,
                attempts = outcome.attempts,
                dispatch_may_have_happened = error.task_may_exist(),
                %error,
                "RunTask failed"
            ),
        }
        outcome.result
    }

    async fn list_page(
        &self,
        page_token: &str,
        page_size: u32,
        options: &CallOptions,
    ) -> Result<ListTasksResponse, Error> {
        let outcome = self
            .with_retries(
                Rpc::ListTasks,
                self.queue_path(),
                options,
                Idempotency::Idempotent,
                |attempt| async move {
                    let message = ListTasksRequest {
                        parent: self.queue_path().to_owned(),
                        response_view: View::Basic.into(),
                        page_size: i32::try_from(page_size).unwrap_or(i32::MAX),
                        page_token: page_token.to_owned(),
                    };
                    // `prepare` already routes by `parent=<queue>`, as ListTasks needs.
                    let request = self.prepare(message, attempt).await?;
                    let result = self.raw_stub().list_tasks(request).await;
                    self.map_response(result, Call::ListTasks)
                },
            )
            .await;
        if let Err(error) = &outcome.result {
            tracing::warn!(queue = self.queue_path(), attempts = outcome.attempts, %error, "ListTasks failed");
        }
        outcome.result
    }
}

/// What [`CloudTasksClient::list_tasks`] fetches.
///
/// ```
/// use cloud_tasks::ListTasksOptions;
///
/// let options = ListTasksOptions::new().with_page_size(100).with_limit(250);
/// assert_eq!(options.limit(), Some(250));
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ListTasksOptions {
    page_size: Option<u32>,
    limit: Option<u64>,
    call: CallOptions,
}

impl ListTasksOptions {
    /// Every task, in pages as large as Cloud Tasks returns (at most 1000), with the client's
    /// deadlines and retry policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most this many tasks a page (1 to [`MAX_LIST_PAGE_SIZE`]; Cloud Tasks may return
    /// fewer).
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = Some(page_size.clamp(1, MAX_LIST_PAGE_SIZE));
        self
    }

    /// Stops after this many tasks in all.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Deadlines and retry policy of each page's call.
    pub fn with_call_options(mut self, options: CallOptions) -> Self {
        self.call = options;
        self
    }

    /// The most tasks listed in all, if limited.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }
}

/// The tasks of a queue, one `ListTasks` page at a time (see [`CloudTasksClient::list_tasks`]).
///
/// ```no_run
/// # async fn run(client: cloud_tasks::CloudTasksClient) -> Result<(), cloud_tasks::Error> {
/// use cloud_tasks::ListTasksOptions;
///
/// let mut pager = client.list_tasks(ListTasksOptions::new().with_limit(500));
/// while let Some(page) = pager.next_page().await? {
///     for task in page {
///         println!("{}", task.name);
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TaskPager {
    client: CloudTasksClient,
    options: ListTasksOptions,
    /// The next page's token (empty for the first page); `None` once the list is done.
    page_token: Option<String>,
    returned: u64,
}

impl TaskPager {
    /// The next page of tasks, `None` once every task (or the limit) was returned. Tasks come
    /// in no particular order, and a task created or deleted meanwhile may or may not appear.
    ///
    /// A failed call leaves the pager where it was: calling again asks for the same page.
    ///
    /// # Errors
    /// As [`CloudTasksClient::document_task`]; NOT_FOUND means the queue does not exist.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Task>>, Error> {
        let Some(token) = &self.page_token else {
            return Ok(None);
        };
        let remaining = self
            .options
            .limit
            .map_or(u64::MAX, |limit| limit.saturating_sub(self.returned));
        if remaining == 0 {
            self.page_token = None;
            return Ok(None);
        }
        let page_size = self
            .options
            .page_size
            .unwrap_or(MAX_LIST_PAGE_SIZE)
            .min(u32::try_from(remaining).unwrap_or(u32::MAX));
        let response = self
            .client
            .list_page(token, page_size, &self.options.call)
            .await?;
        let mut tasks = response.tasks;
        tasks.truncate(usize::try_from(remaining).unwrap_or(usize::MAX));
        self.returned += tasks.len() as u64;
        // Cloud Tasks may answer a page with a token even when nothing follows; the empty page
        // after it ends the list.
        self.page_token = Some(response.next_page_token).filter(|token| !token.is_empty());
        if tasks.is_empty() && self.page_token.is_none() {
            return Ok(None);
        }
        Ok(Some(tasks))
    }

    /// How many tasks the pages returned so far held.
    pub fn returned(&self) -> u64 {
        self.returned
    }
}

//! One `BatchCreateTasks` call: sent with its `request_id` (retried as an idempotent call),
//! its long-running operation polled to its end, and the tasks it refused for quota sent again
//! in batches of at most one second of the lowered rate, all within one deadline.

use std::collections::VecDeque;
use std::time::Duration;

use prost::Message;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use crate::client::{CloudTasksClient, Enqueued};
use crate::error::{Call, Code, Error};
use crate::proto::google::longrunning::operations_client::OperationsClient;
use crate::proto::google::longrunning::{GetOperationRequest, operation};
use crate::proto::{
    BatchCreateTasksMetadata, BatchCreateTasksRequest, BatchCreateTasksResponse, CreateTaskRequest,
    Operation, Task,
};
use crate::retry::{Attempt, Idempotency, Pace};
use crate::telemetry::{self, CallRecord};

use super::pairing::pair;
use super::{BulkCall, Keyed};

/// The largest batch answer accepted: with the FULL view an operation returns its created
/// tasks with their bodies, up to 100 tasks of up to 100 KB each; tonic's default is 4 MB.
const MAX_BATCH_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// First and longest wait between two `GetOperation` polls.
const FIRST_POLL_DELAY: Duration = Duration::from_millis(100);
const MAX_POLL_DELAY: Duration = Duration::from_secs(5);

const METADATA_TYPE: &str = "type.googleapis.com/google.cloud.tasks.v2.BatchCreateTasksMetadata";
const RESPONSE_TYPE: &str = "type.googleapis.com/google.cloud.tasks.v2.BatchCreateTasksResponse";

/// One task's outcome after one `BatchCreateTasks` call.
#[derive(Debug)]
enum Round {
    /// Settled.
    Done(Result<Enqueued, Error>),
    /// Refused for quota, alone (in the operation's `failed_requests`) or with its whole batch:
    /// not created, so it may be sent again, in another batch.
    Exhausted(Box<Task>, Error),
    /// The endpoint does not implement `BatchCreateTasks` and processed nothing: send it with
    /// `CreateTask`.
    Unimplemented(Box<Task>),
}

impl CloudTasksClient {
    /// One `BatchCreateTasks` attempt: sends `request` and returns the operation as first
    /// answered (maybe not done yet). A retry must resend the same request, `request_id`
    /// included, so Cloud Tasks does not apply the batch twice.
    ///
    /// # Errors
    /// What the call failed with, for the batch as a whole.
    async fn send_batch_once(
        &self,
        request: BatchCreateTasksRequest,
        attempt: Attempt,
    ) -> Result<Operation, Error> {
        let request = self.prepare(request, attempt).await?;
        let mut stub = self
            .raw_stub()
            .max_decoding_message_size(MAX_BATCH_RESPONSE_BYTES);
        self.map_response(
            stub.batch_create_tasks(request).await,
            Call::BatchCreateTasks,
        )
    }

    /// One `GetOperation` attempt for an operation of this client's queue.
    async fn get_operation_once(&self, name: &str, attempt: Attempt) -> Result<Operation, Error> {
        let request = self
            .prepare_by_name(
                GetOperationRequest {
                    name: name.to_owned(),
                },
                name,
                attempt,
            )
            .await?;
        let mut operations = OperationsClient::new(self.channel())
            .max_decoding_message_size(MAX_BATCH_RESPONSE_BYTES);
        self.map_response(
            operations.get_operation(request).await,
            Call::GetOperation(name),
        )
    }

    /// Polls the operation with a growing delay until it is done or the batch's deadline
    /// leaves no time for another poll. A failure to read it is [`Error::OperationLost`]: the
    /// batch was accepted, so its tasks may exist.
    async fn wait_operation(
        &self,
        mut operation: Operation,
        deadline: Instant,
        call: &BulkCall,
    ) -> Result<Operation, Error> {
        let name = operation.name.clone();
        let mut delay = FIRST_POLL_DELAY;
        while !operation.done {
            // The last poll comes at the deadline rather than a delay early.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout {
                    after: call.total,
                    request_sent: true,
                });
            }
            tokio::time::sleep(delay.min(remaining)).await;
            delay = (delay * 3 / 2).min(MAX_POLL_DELAY);
            // Reading an operation is idempotent.
            operation = match self
                .with_retries(
                    telemetry::Rpc::GetOperation,
                    &name,
                    &call.until(deadline),
                    Idempotency::Idempotent,
                    |attempt| self.get_operation_once(&name, attempt),
                )
                .await
                .result
            {
                Ok(operation) => operation,
                Err(Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        after: call.total,
                        request_sent: true,
                    });
                }
                Err(cause) => {
                    return Err(Error::OperationLost {
                        operation: name,
                        cause: Box::new(cause),
                    });
                }
            };
        }
        Ok(operation)
    }

    /// Creates `items` with one deadline: the batch, its resends, its operation's polls and,
    /// for tasks refused for quota, further batches of just those, each at most one second of
    /// the lowered rate and sent at its turn. Where the endpoint does not implement
    /// `BatchCreateTasks`, each task goes with `CreateTask` instead, within the pace `items`
    /// already reserved.
    pub(super) async fn create_batch<K>(
        &self,
        items: Vec<(K, Task)>,
        call: &BulkCall,
    ) -> Vec<Keyed<K>> {
        if self.batch_create_tasks_unimplemented() {
            return self.create_each(items, call).await;
        }
        let deadline = Instant::now() + call.total;
        let mut done = Vec::with_capacity(items.len());
        let mut unimplemented = Vec::new();
        let mut refused = VecDeque::new();
        let mut batch = items;
        loop {
            self.batch_round(
                batch,
                deadline,
                call,
                &mut done,
                &mut unimplemented,
                &mut refused,
            )
            .await;
            if refused.is_empty() {
                break;
            }
            let size = call.pacer.tasks_per_call(refused.len());
            let again: Vec<(K, Task, Error)> = refused.drain(..size).collect();
            // A turn after the deadline is not taken: the refused tasks fail, not created.
            if !call.pacer.acquire_before(again.len(), Some(deadline)).await {
                done.extend(
                    again
                        .into_iter()
                        .chain(refused.drain(..))
                        .map(|(key, _, error)| (key, Err(error))),
                );
                break;
            }
            batch = again
                .into_iter()
                .map(|(key, task, _)| (key, task))
                .collect();
        }
        if !unimplemented.is_empty() {
            if self.note_batch_create_unimplemented() {
                tracing::warn!(
                    endpoint = self.endpoint(),
                    queue = self.queue_path(),
                    "the endpoint does not implement BatchCreateTasks (UNIMPLEMENTED, as an \
                     emulator without it answers): sending one CreateTask per task instead, at \
                     the same pace and concurrency, for the rest of this client's life"
                );
            }
            done.extend(self.create_each(unimplemented, call).await);
        }
        done
    }

    /// Sends `items` as one batch and sorts each task's round into what is settled, what goes
    /// with `CreateTask`, and what was refused for quota (which slows the pace).
    async fn batch_round<K>(
        &self,
        items: Vec<(K, Task)>,
        deadline: Instant,
        call: &BulkCall,
        done: &mut Vec<Keyed<K>>,
        unimplemented: &mut Vec<(K, Task)>,
        refused: &mut VecDeque<(K, Task, Error)>,
    ) {
        let (keys, tasks): (Vec<K>, Vec<Task>) = items.into_iter().unzip();
        let rounds = self.create_batch_once(tasks, deadline, call).await;
        let refused_before = refused.len();
        for (key, round) in keys.into_iter().zip(rounds) {
            match round {
                Round::Done(outcome) => done.push((key, call.outcome(outcome))),
                Round::Exhausted(task, error) => refused.push_back((key, *task, error)),
                Round::Unimplemented(task) => unimplemented.push((key, *task)),
            }
        }
        if refused.len() > refused_before {
            call.pacer.exhausted();
        }
    }

    /// One `BatchCreateTasks` call, retried with its `request_id` and followed to its end.
    async fn create_batch_once(
        &self,
        tasks: Vec<Task>,
        deadline: Instant,
        call: &BulkCall,
    ) -> Vec<Round> {
        let queue = self.queue_path();
        let count = tasks.len();
        let send = CallRecord::send(
            telemetry::Rpc::BatchCreateTasks,
            self.server(),
            queue,
            Some(count),
            None,
        );
        send.link_tasks(&tasks);
        let request = BatchCreateTasksRequest {
            parent: queue.to_owned(),
            requests: tasks
                .into_iter()
                .map(|task| CreateTaskRequest {
                    parent: queue.to_owned(),
                    // The created tasks' bodies pair unnamed tasks with their requests
                    // (`batch_outcomes`); roles/cloudtasks.enqueuer includes the
                    // cloudtasks.tasks.fullView permission this view needs.
                    response_view: if task.name.is_empty() {
                        crate::proto::google::cloud::tasks::v2::task::View::Full.into()
                    } else {
                        0
                    },
                    task: Some(task),
                })
                .collect(),
            request_id: Uuid::new_v4().to_string(),
        };
        let request_id = request.request_id.clone();
        let started = Instant::now();
        // The request_id makes a resent batch a no-op on Cloud Tasks, so the batch is retried
        // like a named task, with the same request (request_id included) each time; a resend
        // waits for its turn under the rate limit, and RESOURCE_EXHAUSTED slows it down.
        let pace = Pace {
            pacer: &call.pacer,
            tasks: count,
        };
        let sent = self
            .with_paced_retries(
                &send,
                &call.until(deadline),
                Idempotency::Idempotent,
                Some(pace),
                |attempt| self.send_batch_once(request.clone(), attempt),
            )
            .instrument(send.span().clone())
            .await;
        let sent_tasks = request
            .requests
            .into_iter()
            .map(|r| r.task.unwrap_or_default());
        let operation = match sent.result {
            Ok(operation) => {
                self.wait_operation(operation, deadline, call)
                    .instrument(send.span().clone())
                    .await
            }
            // The server processed nothing, here and in every earlier attempt (the retry
            // loop's memory would have said otherwise).
            Err(error) if error.is_unimplemented() && !error.task_may_exist() => {
                send.finish(Some(&error));
                return sent_tasks
                    .map(|task| Round::Unimplemented(Box::new(task)))
                    .collect();
            }
            // Refused for quota, and no attempt may have been processed: sent again in smaller
            // batches (the retry loop does not resend a batch above the lowered rate whole).
            Err(error)
                if error.code() == Some(Code::ResourceExhausted) && !error.task_may_exist() =>
            {
                send.finish(Some(&error));
                return sent_tasks
                    .map(|task| Round::Exhausted(Box::new(task), error.clone()))
                    .collect();
            }
            // UNIMPLEMENTED after an attempt that may have created the tasks: that attempt's
            // failure is the one to report.
            Err(Error::AfterPossiblyProcessed { last, earlier }) if last.is_unimplemented() => {
                Err(call.deadline_error(*earlier))
            }
            Err(error) => Err(call.deadline_error(error)),
        };
        send.finish(operation.as_ref().err());
        let rounds = match operation {
            Ok(operation) => self.batch_outcomes(operation, sent_tasks.collect()),
            Err(error) => {
                tracing::warn!(queue, %request_id, %error, tasks = count, "BatchCreateTasks failed");
                sent_tasks
                    .map(|_| Round::Done(Err(error.clone())))
                    .collect()
            }
        };
        tracing::debug!(
            queue,
            %request_id,
            tasks = count,
            latency_ms = started.elapsed().as_millis(),
            "BatchCreateTasks finished"
        );
        rounds
    }

    /// Each request's outcome from a finished operation.
    ///
    /// `failed_requests` is keyed by the index in the request, which the proto defines. The
    /// response lists the created tasks in no promised order ("The tasks that were
    /// successfully created"), so nothing is paired by position: a named task is found by its
    /// name, an unnamed one by its content (URL, method, body, the headers it was sent with,
    /// schedule time as Cloud Tasks sets it), which the FULL view returns (`pairing.rs`). Two
    /// requests of one batch with the same content each get one created task. A request
    /// neither failed nor found is reported as an error that may have created the task.
    fn batch_outcomes(&self, operation: Operation, sent: Vec<Task>) -> Vec<Round> {
        let metadata = operation
            .metadata
            .filter(|any| any.type_url == METADATA_TYPE)
            .and_then(|any| BatchCreateTasksMetadata::decode(any.value.as_slice()).ok())
            .unwrap_or_default();
        let mut failed = metadata.failed_requests;
        let (created, batch_error) = match operation.result {
            Some(operation::Result::Response(any)) if any.type_url == RESPONSE_TYPE => {
                match BatchCreateTasksResponse::decode(any.value.as_slice()) {
                    Ok(response) => (response.tasks, None),
                    Err(error) => (
                        Vec::new(),
                        Some(tonic::Status::internal(format!(
                            "cannot decode the BatchCreateTasks response: {error}"
                        ))),
                    ),
                }
            }
            Some(operation::Result::Response(any)) => (
                Vec::new(),
                Some(tonic::Status::internal(format!(
                    "BatchCreateTasks answered with an unexpected {}",
                    any.type_url
                ))),
            ),
            Some(operation::Result::Error(status)) => (Vec::new(), Some(rpc_status(status))),
            None => (Vec::new(), None),
        };
        let batch_error =
            batch_error.map(|status| self.status_error(status, Call::BatchCreateTasks));
        let claimants: Vec<Option<&Task>> = sent
            .iter()
            .enumerate()
            .map(|(index, task)| {
                let failed = i32::try_from(index).is_ok_and(|index| failed.contains_key(&index));
                (!failed && batch_error.is_none()).then_some(task)
            })
            .collect();
        let mut paired = pair(created, &claimants);
        sent.into_iter()
            .enumerate()
            .map(|(index, task)| {
                let failure = i32::try_from(index)
                    .ok()
                    .and_then(|index| failed.remove(&index));
                if let Some(status) = failure {
                    let error = self.status_error(rpc_status(status), Call::BatchCreateTasks);
                    // As for a single task: ALREADY_EXISTS is an outcome for a named task.
                    return if error.is_already_exists() && !task.name.is_empty() {
                        Round::Done(Ok(Enqueued::AlreadyExists {
                            task_name: task.name,
                        }))
                    } else if error.code() == Some(Code::ResourceExhausted) {
                        Round::Exhausted(Box::new(task), error)
                    } else {
                        Round::Done(Err(error))
                    };
                }
                if let Some(error) = &batch_error {
                    return Round::Done(Err(error.clone()));
                }
                Round::Done(paired[index].take().map_or_else(
                    || {
                        Err(self.status_error(
                            tonic::Status::unknown(
                                "BatchCreateTasks finished without reporting this task as \
                                 failed, but returned no created task with its name or \
                                 content; the task may or may not exist",
                            ),
                            Call::BatchCreateTasks,
                        ))
                    },
                    |created| Ok(Enqueued::created(created)),
                ))
            })
            .collect()
    }
}

/// A per-task or whole-batch status of an operation as a transport status, details included
/// (as the encoded `google.rpc.Status` the `grpc-status-details-bin` trailer carries).
fn rpc_status(status: crate::proto::google::rpc::Status) -> tonic::Status {
    let code = tonic::Code::from_i32(status.code);
    if status.details.is_empty() {
        tonic::Status::new(code, status.message)
    } else {
        let details = bytes::Bytes::from(status.encode_to_vec());
        tonic::Status::with_details(code, status.message, details)
    }
}

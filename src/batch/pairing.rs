//! Which created task answers which request of a batch: Cloud Tasks returns the created
//! tasks in no promised order, so a named task is found by its name and an unnamed one by its
//! content. Pure: no I/O, unit-tested on its own.
//!
//! Schedule times need care, since Cloud Tasks rewrites some: a task sent without one, or
//! with one in the past, is scheduled "now" at creation, so its created task's schedule time
//! is its creation time (which Cloud Tasks truncates to the second). A future schedule time
//! is kept (truncated to microseconds). So a request with a future time claims only a created
//! task with exactly that time, and a request without one (or with a past one) claims only a
//! created task whose schedule time the server set at creation. Exact claims go first, so an
//! unscheduled request never takes the task of a scheduled twin.

use std::collections::HashMap;

use prost_types::Timestamp;

use crate::proto::{MessageType, Task};

/// How far a server-set schedule time may be from the creation time Cloud Tasks reports:
/// `create_time` is truncated to the second.
const CREATE_TIME_PRECISION_SECONDS: i64 = 1;

/// For each sent request that may have created a task (`None`: it failed, so it claims
/// nothing), the created task that is its own, if the response returned it. Each created task
/// goes to at most one request. An unnamed task's body is cleared again, as CreateTask's
/// default (BASIC) view returns it.
pub(super) fn pair(created: Vec<Task>, sent: &[Option<&Task>]) -> Vec<Option<Task>> {
    let mut paired: Vec<Option<Task>> = vec![None; sent.len()];
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (index, task) in sent.iter().enumerate() {
        if let Some(task) = task
            && !task.name.is_empty()
        {
            by_name.insert(task.name.as_str(), index);
        }
    }
    // Unnamed requests' candidates, by body.
    let mut unclaimed: HashMap<Vec<u8>, Vec<Task>> = HashMap::new();
    for task in created {
        match by_name.get(task.name.as_str()) {
            Some(&index) => paired[index] = Some(task),
            None => unclaimed
                .entry(body(&task).to_vec())
                .or_default()
                .push(task),
        }
    }
    let unnamed: Vec<(usize, &Task)> = sent
        .iter()
        .enumerate()
        .filter_map(|(index, task)| task.filter(|task| task.name.is_empty()).map(|t| (index, t)))
        .collect();
    // Exact schedule times first, then what the server scheduled at creation.
    for exact in [true, false] {
        for &(index, sent) in &unnamed {
            if paired[index].is_some() {
                continue;
            }
            let Some(candidates) = unclaimed.get_mut(body(sent)) else {
                continue;
            };
            let found = candidates.iter().position(|created| {
                same_request(sent, created)
                    && if exact {
                        same_schedule(sent, created)
                    } else {
                        scheduled_at_creation(sent, created)
                    }
            });
            if let Some(found) = found {
                let mut task = candidates.swap_remove(found);
                if let Some(MessageType::HttpRequest(http)) = &mut task.message_type {
                    http.body = Vec::new();
                }
                paired[index] = Some(task);
            }
        }
    }
    paired
}

fn body(task: &Task) -> &[u8] {
    match &task.message_type {
        Some(MessageType::HttpRequest(http)) => &http.body,
        _ => &[],
    }
}

/// Whether `created` is what `sent` asked for, schedule time aside (the body is already known
/// to match): the same URL and method, and every header sent with its value (Cloud Tasks adds
/// its own, and header names are case-insensitive).
fn same_request(sent: &Task, created: &Task) -> bool {
    let (Some(MessageType::HttpRequest(sent_http)), Some(MessageType::HttpRequest(created_http))) =
        (&sent.message_type, &created.message_type)
    else {
        return false;
    };
    let headers_kept = sent_http.headers.iter().all(|(name, value)| {
        created_http
            .headers
            .iter()
            .any(|(other, other_value)| other.eq_ignore_ascii_case(name) && other_value == value)
    });
    sent_http.url == created_http.url
        && sent_http.http_method == created_http.http_method
        && headers_kept
}

/// A schedule time sent and kept: the same to the microsecond, Cloud Tasks' precision.
fn same_schedule(sent: &Task, created: &Task) -> bool {
    match (&sent.schedule_time, &created.schedule_time) {
        (Some(sent), Some(created)) => {
            sent.seconds == created.seconds && sent.nanos / 1000 == created.nanos / 1000
        }
        _ => false,
    }
}

/// `sent` asked for no schedule time, or one before `created` was created, and `created`'s
/// schedule time is the server's "now" at creation.
fn scheduled_at_creation(sent: &Task, created: &Task) -> bool {
    let (Some(scheduled), Some(creation)) = (&created.schedule_time, &created.create_time) else {
        // No times to compare: nothing tells a server-set time apart.
        return created.schedule_time.is_none() || sent.schedule_time.is_none();
    };
    let near_creation =
        (scheduled.seconds - creation.seconds).abs() <= CREATE_TIME_PRECISION_SECONDS;
    let in_the_past = |sent: &Timestamp| {
        sent.seconds <= creation.seconds + CREATE_TIME_PRECISION_SECONDS
            && micros(sent) <= micros(scheduled)
    };
    near_creation && sent.schedule_time.as_ref().is_none_or(in_the_past)
}

fn micros(time: &Timestamp) -> i128 {
    i128::from(time.seconds) * 1_000_000 + i128::from(time.nanos / 1000)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::proto::HttpRequest;

    const CREATED_AT: i64 = 1_800_000_000;

    fn at(seconds: i64, micros: i32) -> Timestamp {
        Timestamp {
            seconds,
            nanos: micros * 1000,
        }
    }

    /// An unnamed request for `document`, scheduled at `schedule` if given.
    fn sent(document: &str, schedule: Option<Timestamp>) -> Task {
        Task {
            message_type: Some(MessageType::HttpRequest(HttpRequest {
                url: "https://backend.example/tasks/process".to_owned(),
                http_method: 2,
                headers: HashMap::from([(
                    "Content-Type".to_owned(),
                    "application/json".to_owned(),
                )]),
                body: format!("{{\"document_id\":\"{document}\"}}").into_bytes(),
                ..HttpRequest::default()
            })),
            schedule_time: schedule,
            ..Task::default()
        }
    }

    /// The task Cloud Tasks creates for `request` as `id` at CREATED_AT (+ 0.25 s): a past or
    /// missing schedule time becomes now; Cloud Tasks adds a header of its own.
    fn created(request: &Task, id: u32) -> Task {
        let now = at(CREATED_AT, 250_000);
        let mut task = request.clone();
        task.name = format!("projects/p/locations/l/queues/q/tasks/{id}");
        task.create_time = Some(at(CREATED_AT, 0));
        task.schedule_time = match task.schedule_time {
            Some(time) if micros(&time) > micros(&now) => Some(time),
            _ => Some(now),
        };
        if let Some(MessageType::HttpRequest(http)) = &mut task.message_type {
            http.headers
                .insert("User-Agent".to_owned(), "Google-Cloud-Tasks".to_owned());
        }
        task
    }

    fn names(paired: &[Option<Task>]) -> Vec<Option<&str>> {
        paired
            .iter()
            .map(|task| task.as_ref().map(|task| task.name.as_str()))
            .collect()
    }

    fn all(tasks: &[Task]) -> Vec<Option<&Task>> {
        tasks.iter().map(Some).collect()
    }

    #[test]
    fn shuffled_answers_are_paired_by_content_and_bodies_cleared() {
        let requests: Vec<Task> = (0..20).map(|i| sent(&format!("doc-{i}"), None)).collect();
        let mut answers: Vec<Task> = requests
            .iter()
            .zip(0..)
            .map(|(r, id)| created(r, id))
            .collect();
        answers.reverse();
        answers.swap(3, 11);
        let paired = pair(answers, &all(&requests));
        let expected: Vec<String> = (0..20)
            .map(|id| format!("projects/p/locations/l/queues/q/tasks/{id}"))
            .collect();
        assert_eq!(
            names(&paired),
            expected
                .iter()
                .map(|n| Some(n.as_str()))
                .collect::<Vec<_>>()
        );
        assert!(paired.iter().flatten().all(|task| body(task).is_empty()));
    }

    #[test]
    fn a_subset_answered_leaves_the_others_unpaired() {
        let requests: Vec<Task> = (0..4).map(|i| sent(&format!("doc-{i}"), None)).collect();
        let answers = vec![created(&requests[3], 3), created(&requests[1], 1)];
        let paired = pair(answers, &all(&requests));
        assert_eq!(
            names(&paired),
            [
                None,
                Some("projects/p/locations/l/queues/q/tasks/1"),
                None,
                Some("projects/p/locations/l/queues/q/tasks/3")
            ]
        );
    }

    /// The same document twice in one batch: two tasks, one for each; one task, for one of
    /// them only (the other is unaccounted for, so it may exist).
    #[test]
    fn the_same_document_twice_gets_one_task_each() {
        let requests = vec![sent("doc", None), sent("doc", None)];
        let both = pair(
            vec![created(&requests[0], 1), created(&requests[1], 2)],
            &all(&requests),
        );
        let mut got: Vec<_> = names(&both).into_iter().flatten().collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "projects/p/locations/l/queues/q/tasks/1",
                "projects/p/locations/l/queues/q/tasks/2"
            ]
        );
        let one = pair(vec![created(&requests[0], 1)], &all(&requests));
        assert_eq!(one.iter().flatten().count(), 1);
    }

    /// A request without a schedule time does not take the task of its twin scheduled for
    /// later, even when it comes first and the later one is answered first.
    #[test]
    fn no_schedule_time_matches_only_a_task_scheduled_at_creation() {
        let later = at(CREATED_AT + 3600, 123_456);
        let requests = vec![sent("doc", None), sent("doc", Some(later))];
        let answers = vec![created(&requests[1], 2), created(&requests[0], 1)];
        let paired = pair(answers, &all(&requests));
        assert_eq!(
            names(&paired),
            [
                Some("projects/p/locations/l/queues/q/tasks/1"),
                Some("projects/p/locations/l/queues/q/tasks/2")
            ]
        );
        // Only the scheduled twin was created: the unscheduled request is not answered by it.
        let paired = pair(vec![created(&requests[1], 2)], &all(&requests));
        assert_eq!(
            names(&paired),
            [None, Some("projects/p/locations/l/queues/q/tasks/2")]
        );
    }

    /// A past schedule time comes back as the creation time, and is matched there.
    #[test]
    fn a_past_schedule_time_is_matched_as_the_server_resets_it() {
        let requests = vec![sent("doc", Some(at(CREATED_AT - 600, 1)))];
        let answer = created(&requests[0], 7);
        assert_ne!(answer.schedule_time, requests[0].schedule_time);
        let paired = pair(vec![answer], &all(&requests));
        assert_eq!(
            names(&paired),
            [Some("projects/p/locations/l/queues/q/tasks/7")]
        );
    }

    /// A request that failed claims nothing, even a task with its content.
    #[test]
    fn failed_requests_claim_nothing() {
        let requests = [sent("doc", None), sent("doc", None)];
        let paired = pair(vec![created(&requests[1], 2)], &[None, Some(&requests[1])]);
        assert_eq!(
            names(&paired),
            [None, Some("projects/p/locations/l/queues/q/tasks/2")]
        );
    }

    #[test]
    fn named_tasks_are_paired_by_name() {
        let mut first = sent("a", None);
        first.name = "projects/p/locations/l/queues/q/tasks/a".to_owned();
        let mut second = sent("a", None);
        second.name = "projects/p/locations/l/queues/q/tasks/b".to_owned();
        let requests = vec![first, second];
        let mut answers: Vec<Task> = requests.clone();
        answers.reverse();
        let paired = pair(answers, &all(&requests));
        assert_eq!(
            names(&paired),
            [
                Some("projects/p/locations/l/queues/q/tasks/a"),
                Some("projects/p/locations/l/queues/q/tasks/b")
            ]
        );
    }
}

//! Which created task answers which request of a batch: Cloud Tasks returns the created
//! tasks in no promised order, so a named task is found by its name and an unnamed one by its
//! content.

use std::collections::{HashMap, VecDeque};

use crate::proto::{MessageType, Task};

/// The tasks a batch created, to be claimed by the requests that created them.
pub(super) struct CreatedTasks {
    by_name: HashMap<String, Task>,
    /// Unnamed requests' tasks by body, in the order returned.
    by_body: HashMap<Vec<u8>, VecDeque<Task>>,
}

impl CreatedTasks {
    pub(super) fn new(created: Vec<Task>, sent: &[Task]) -> Self {
        let requested: std::collections::HashSet<&str> = sent
            .iter()
            .filter(|task| !task.name.is_empty())
            .map(|task| task.name.as_str())
            .collect();
        let mut by_name = HashMap::new();
        let mut by_body: HashMap<Vec<u8>, VecDeque<Task>> = HashMap::new();
        for task in created {
            if requested.contains(task.name.as_str()) {
                by_name.insert(task.name.clone(), task);
            } else {
                by_body
                    .entry(body(&task).to_vec())
                    .or_default()
                    .push_back(task);
            }
        }
        Self { by_name, by_body }
    }

    /// The created task of the request that sent `sent`, if it was returned. An unnamed task's
    /// body is cleared again, as CreateTask's default (BASIC) view returns it.
    pub(super) fn take(&mut self, sent: &Task) -> Option<Task> {
        if !sent.name.is_empty() {
            return self.by_name.remove(&sent.name);
        }
        let candidates = self.by_body.get_mut(body(sent))?;
        let found = candidates
            .iter()
            .position(|created| same_content(sent, created))?;
        let mut task = candidates.remove(found)?;
        if let Some(MessageType::HttpRequest(http)) = &mut task.message_type {
            http.body = Vec::new();
        }
        Some(task)
    }
}

fn body(task: &Task) -> &[u8] {
    match &task.message_type {
        Some(MessageType::HttpRequest(http)) => &http.body,
        _ => &[],
    }
}

/// Whether `created` is what `sent` asked for (the body is already known to match): the same
/// URL and method, every header sent with its value (Cloud Tasks adds its own, and header
/// names are case-insensitive), and the same schedule time if one was set.
fn same_content(sent: &Task, created: &Task) -> bool {
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
    let same_schedule = match (&sent.schedule_time, &created.schedule_time) {
        // Cloud Tasks truncates schedule times to microseconds.
        (Some(sent), Some(created)) => {
            sent.seconds == created.seconds && sent.nanos / 1000 == created.nanos / 1000
        }
        (Some(_), None) => false,
        (None, _) => true,
    };
    sent_http.url == created_http.url
        && sent_http.http_method == created_http.http_method
        && headers_kept
        && same_schedule
}

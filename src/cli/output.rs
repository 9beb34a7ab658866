//! JSON rendering of a created task, following the proto3 JSON mapping's field names.

use base64::Engine;
use cloud_tasks::proto::{AuthorizationHeader, HttpMethod, MessageType, Task};
use serde_json::{Map, Value, json};

pub(crate) fn task_json(task: &Task) -> Value {
    let mut object = Map::new();
    object.insert("name".into(), json!(task.name));
    let timestamps = [
        ("scheduleTime", &task.schedule_time),
        ("createTime", &task.create_time),
    ];
    for (key, time) in timestamps {
        if let Some(time) = time {
            object.insert(key.into(), json!(time.to_string()));
        }
    }
    if let Some(deadline) = &task.dispatch_deadline {
        object.insert("dispatchDeadline".into(), json!(deadline.to_string()));
    }
    object.insert("dispatchCount".into(), json!(task.dispatch_count));
    object.insert("responseCount".into(), json!(task.response_count));
    if let Some(MessageType::HttpRequest(http)) = &task.message_type {
        let method = HttpMethod::try_from(http.http_method).map_or_else(
            |_| http.http_method.to_string(),
            |m| m.as_str_name().to_owned(),
        );
        let mut request = Map::new();
        request.insert("url".into(), json!(http.url));
        request.insert("httpMethod".into(), json!(method));
        let mut headers: Vec<_> = http.headers.iter().collect();
        headers.sort();
        request.insert(
            "headers".into(),
            Value::Object(
                headers
                    .into_iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect(),
            ),
        );
        if !http.body.is_empty() {
            request.insert(
                "body".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(&http.body)),
            );
        }
        if let Some(AuthorizationHeader::OidcToken(oidc)) = &http.authorization_header {
            request.insert(
                "oidcToken".into(),
                json!({
                    "serviceAccountEmail": oidc.service_account_email,
                    "audience": oidc.audience,
                }),
            );
        }
        object.insert("httpRequest".into(), Value::Object(request));
    }
    Value::Object(object)
}

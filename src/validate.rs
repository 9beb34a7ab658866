//! Rules for the values that end up in a Cloud Tasks request, checked before anything is sent.
//!
//! Each function returns the (normalised) value or a message that names the bad value and the
//! rule, so that callers can attach the setting's name.

use std::net::IpAddr;
use std::time::Duration;

/// Cloud Tasks' documented bounds on an HTTP task's dispatch deadline.
pub(crate) const DISPATCH_DEADLINE_RANGE: (Duration, Duration) =
    (Duration::from_secs(15), Duration::from_secs(30 * 60));

/// Cloud Tasks accepts an HTTP target URL of at most this many characters.
pub(crate) const MAX_URL_LEN: usize = 2083;

fn check_chars(
    value: &str,
    what: &str,
    max_len: usize,
    allowed: impl Fn(char) -> bool,
    rule: &str,
) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty; set it ({rule})"));
    }
    if value.len() > max_len {
        return Err(format!(
            "{what} {value:?} is {} characters long; at most {max_len} are allowed",
            value.len()
        ));
    }
    if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        return Err(format!("{what} {value:?} contains {bad:?}; {rule}"));
    }
    Ok(())
}

pub(crate) fn project_id(value: &str) -> Result<(), String> {
    check_chars(
        value,
        "project ID",
        100,
        |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'),
        "use the project ID (letters, digits, '-', '.', ':'), not its display name or number",
    )
}

pub(crate) fn location_id(value: &str) -> Result<(), String> {
    check_chars(
        value,
        "location",
        63,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "use a Cloud Tasks region such as us-central1",
    )
}

pub(crate) fn queue_id(value: &str) -> Result<(), String> {
    check_chars(
        value,
        "queue ID",
        100,
        |c| c.is_ascii_alphanumeric() || c == '-',
        "use the queue's short ID (letters, digits, '-'), not its full path",
    )
}

pub(crate) fn task_id(value: &str) -> Result<(), String> {
    check_chars(
        value,
        "task ID",
        500,
        |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'),
        "task IDs may contain only letters, digits, '-' and '_'",
    )
}

/// Returns the service URL without a trailing slash.
///
/// The URL is also the OIDC audience, so it may carry no query or fragment (Cloud Run would then
/// reject the token). Plain `http` is accepted only for loopback hosts, for local development.
pub(crate) fn service_url(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err(
            "service URL is empty; set it to the backend's Cloud Run URL, e.g. \
             https://backend-abc123-uc.a.run.app"
                .to_owned(),
        );
    }
    // Url::parse drops surrounding whitespace and any tab or newline, but the value itself
    // becomes the task URL and the OIDC audience; it usually comes from a mis-pasted secret.
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "service URL {value:?} contains whitespace or control characters; remove them (a \
             trailing newline often comes from a secret file or `echo` without -n)"
        ));
    }
    let url = url::Url::parse(value).map_err(|error| {
        format!("service URL {value:?} is not an absolute URL ({error}); use e.g. https://backend-abc123-uc.a.run.app")
    })?;
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(format!(
                "service URL {value:?} uses http; Cloud Tasks sends OIDC tokens only over https \
                 (http is accepted for localhost and 127.0.0.1 only)"
            ));
        }
        scheme => {
            return Err(format!(
                "service URL {value:?} has scheme {scheme:?}; use https://"
            ));
        }
    }
    if host.is_empty() {
        return Err(format!("service URL {value:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "service URL {value:?} has a query or fragment; remove it, since the URL is also the \
             OIDC audience Cloud Run checks"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "service URL {value:?} carries credentials; remove them"
        ));
    }
    let normalised = value.trim_end_matches('/');
    if normalised.len() > MAX_URL_LEN {
        return Err(format!(
            "service URL is {} characters long; at most {MAX_URL_LEN} are allowed",
            normalised.len()
        ));
    }
    Ok(normalised.to_owned())
}

/// `localhost` or a loopback IP (IPv6 with or without brackets): where plain `http` is allowed.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn service_account_email(value: &str) -> Result<(), String> {
    let well_formed = value.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
    }) && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if value.is_empty() {
        Err(
            "service account email is empty; set it to the account whose OIDC token Cloud Tasks \
             presents, e.g. tasks-invoker@my-project.iam.gserviceaccount.com"
                .to_owned(),
        )
    } else if well_formed {
        Ok(())
    } else {
        Err(format!(
            "service account email {value:?} is not an email address; use e.g. \
             tasks-invoker@my-project.iam.gserviceaccount.com"
        ))
    }
}

pub(crate) fn dispatch_deadline(value: Duration) -> Result<(), String> {
    let (min, max) = DISPATCH_DEADLINE_RANGE;
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "dispatch deadline {value:?} is outside the range Cloud Tasks allows for HTTP tasks \
             ({min:?} to {max:?})"
        ))
    }
}

/// Longest file name accepted, in bytes: far above any file system's limit, far below the
/// task size limit.
pub(crate) const MAX_FILENAME_BYTES: usize = 1024;

/// A document to process: a real (non-nil) ID and a file name of sensible length.
pub(crate) fn document(document_id: uuid::Uuid, filename: &str) -> Result<(), String> {
    if document_id.is_nil() {
        return Err(format!(
            "document ID {document_id} is the nil UUID; pass the uploaded document's ID"
        ));
    }
    if filename.is_empty() {
        return Err("file name is empty; pass the uploaded file's name".to_owned());
    }
    if filename.len() > MAX_FILENAME_BYTES {
        return Err(format!(
            "file name is {} bytes long; at most {MAX_FILENAME_BYTES} are accepted",
            filename.len()
        ));
    }
    Ok(())
}

/// An `host:port` for the emulator, without a scheme.
pub(crate) fn emulator_host(value: &str) -> Result<(), String> {
    let valid = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !value.contains("://");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "emulator host {value:?} is not host:port; use e.g. 127.0.0.1:8123 (no scheme)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_url_is_normalised_and_checked() {
        assert_eq!(
            service_url("https://api.example.com/").unwrap(),
            "https://api.example.com"
        );
        assert_eq!(
            service_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            service_url("http://localhost:8080/").unwrap(),
            "http://localhost:8080"
        );
        assert_eq!(service_url("http://[::1]:80").unwrap(), "http://[::1]:80");
        for bad in [
            "",
            "api.example.com",
            "http://api.example.com",
            "ftp://api.example.com",
            "https://api.example.com/?x=1",
            "https://api.example.com/#top",
            "https://user:pw@api.example.com",
        ] {
            let message = service_url(bad).unwrap_err();
            assert!(message.contains("service URL"), "{bad:?} gave {message:?}");
        }
    }

    #[test]
    fn service_url_with_whitespace_is_refused_by_name() {
        // Url::parse strips these, but the unparsed value is what goes into the task URL and the
        // OIDC audience.
        for bad in [
            "https://x.a.run.app\n",
            " https://x.a.run.app",
            "https://x.a.run.app\r\n",
            "https://x.a.\trun.app",
        ] {
            let message = service_url(bad).unwrap_err();
            assert!(
                message.contains(&format!("{bad:?}")) && message.contains("whitespace"),
                "{bad:?} gave {message:?}"
            );
        }
    }

    #[test]
    fn ids_follow_cloud_tasks_rules() {
        assert!(project_id("my-project-123").is_ok());
        assert!(project_id("example.com:my-project").is_ok());
        assert!(project_id("My Project").unwrap_err().contains("' '"));
        assert!(location_id("us-central1").is_ok());
        assert!(location_id("US_CENTRAL").is_err());
        assert!(queue_id("document-processing").is_ok());
        assert!(
            queue_id("projects/p/locations/l/queues/q")
                .unwrap_err()
                .contains("full path")
        );
        assert!(
            queue_id(&"q".repeat(101))
                .unwrap_err()
                .contains("101 characters")
        );
        assert!(task_id("abc_DEF-123").is_ok());
        assert!(task_id("a.b").is_err());
        assert!(task_id(&"t".repeat(500)).is_ok());
        assert!(task_id(&"t".repeat(501)).is_err());
    }

    #[test]
    fn emails_and_deadlines() {
        assert!(service_account_email("a@p.iam.gserviceaccount.com").is_ok());
        assert!(service_account_email("").unwrap_err().contains("empty"));
        assert!(service_account_email("not-an-email").is_err());
        assert!(service_account_email("a b@c.com").is_err());
        assert!(dispatch_deadline(Duration::from_secs(600)).is_ok());
        assert!(dispatch_deadline(Duration::from_secs(14)).is_err());
        assert!(dispatch_deadline(Duration::from_secs(1801)).is_err());
        assert!(emulator_host("127.0.0.1:8123").is_ok());
        assert!(emulator_host("http://127.0.0.1:8123").is_err());
        assert!(emulator_host("localhost").is_err());
    }
}

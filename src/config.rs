//! `Settings`: the backend's Cloud Tasks configuration, read from the environment.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ConfigProblem};
use crate::validate;

/// Environment variable that points the client at an emulator (`host:port`, plaintext, no
/// credentials), the convention the Firebase SDKs use.
pub const EMULATOR_HOST_VAR: &str = "CLOUD_TASKS_EMULATOR_HOST";

/// Environment variable naming a token issuer other than Google, such as the local emulator
/// (`http://127.0.0.1:8123`); `cloud-tasks emulator` prints it. The receiver accepts only an
/// `https` origin, or `http` on a loopback host.
pub const OIDC_ISSUER_VAR: &str = "CLOUD_TASKS_OIDC_ISSUER";

/// Environment variable that makes the receiver accept tokens whose signature Cloud Run removed
/// (`true`), which is safe only on a Cloud Run service with invoker IAM on: Cloud Run then checks
/// the signature before the request reaches the container. See `docs/RECEIVING.md`.
pub const OIDC_VERIFIED_BY_CLOUD_RUN_VAR: &str = "CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN";

/// Environment variable Cloud Run sets to the service's name in every instance; the receiver
/// takes its presence to mean it runs on Cloud Run.
pub const CLOUD_RUN_SERVICE_VAR: &str = "K_SERVICE";

/// The backend's Cloud Tasks settings, with the Python backend's variable names and defaults.
///
/// The empty defaults let local development run without Cloud Tasks: ask
/// [`Settings::is_cloud_tasks_configured`] before enqueuing, and only build a
/// [`CloudTasksClient`](crate::CloudTasksClient) when it is.
///
/// | field | variable | default |
/// |---|---|---|
/// | `gcp_project_id` | `GCP_PROJECT_ID` | `""` |
/// | `gcp_location` | `GCP_LOCATION` | `"us-central1"` |
/// | `cloud_tasks_queue` | `CLOUD_TASKS_QUEUE` | `"document-processing"` |
/// | `cloud_run_service_url` | `CLOUD_RUN_SERVICE_URL` | `""` |
/// | `cloud_run_service_account` | `CLOUD_RUN_SERVICE_ACCOUNT` | `""` |
/// | `emulator_host` | `CLOUD_TASKS_EMULATOR_HOST` | unset |
/// | `oidc_issuer` | `CLOUD_TASKS_OIDC_ISSUER` | unset (Google) |
/// | `oidc_verified_by_cloud_run` | `CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN` | unset (false) |
/// | `cloud_run_service` | `K_SERVICE` (set by Cloud Run) | unset |
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Google Cloud project that owns the queue.
    pub gcp_project_id: String,
    /// Region of the queue.
    pub gcp_location: String,
    /// Short ID of the queue.
    pub cloud_tasks_queue: String,
    /// Base URL of the backend on Cloud Run; tasks are sent to paths under it, and it is the
    /// OIDC token's audience.
    pub cloud_run_service_url: String,
    /// Service account whose OIDC token Cloud Tasks presents to the backend.
    pub cloud_run_service_account: String,
    /// `host:port` of a Cloud Tasks emulator; when set, the client speaks plaintext without
    /// credentials.
    pub emulator_host: Option<String>,
    /// Issuer of the OIDC tokens the receiver accepts, when it is not Google (the local
    /// emulator); read by `receiver::OidcVerifier::from_settings`, which checks it.
    pub oidc_issuer: Option<String>,
    /// Where `oidc_issuer` came from, for the receiver's start-up warning.
    pub oidc_issuer_source: Option<SettingSource>,
    /// `CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN` as written (`true` or `false`); the receiver
    /// checks it, so that a typo stops the backend rather than being read as `false`.
    pub oidc_verified_by_cloud_run: Option<String>,
    /// The Cloud Run service's name (`K_SERVICE`), set only when running on Cloud Run.
    pub cloud_run_service: Option<String>,
}

/// Where a setting's value came from, named in messages about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingSource {
    /// The process environment.
    Environment,
    /// A dotenv file, at this path.
    DotenvFile(PathBuf),
    /// The lookup given to [`Settings::from_lookup`].
    Lookup,
}

impl fmt::Display for SettingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Environment => f.write_str("the environment"),
            Self::DotenvFile(path) => write!(f, "the dotenv file {}", path.display()),
            Self::Lookup => f.write_str("the settings' lookup"),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            gcp_project_id: String::new(),
            gcp_location: "us-central1".to_owned(),
            cloud_tasks_queue: "document-processing".to_owned(),
            cloud_run_service_url: String::new(),
            cloud_run_service_account: String::new(),
            emulator_host: None,
            oidc_issuer: None,
            oidc_issuer_source: None,
            oidc_verified_by_cloud_run: None,
            cloud_run_service: None,
        }
    }
}

impl Settings {
    /// Reads the settings from the process environment, falling back to a `.env` file in the
    /// current directory (as the Python settings did); a variable in the environment wins over
    /// the same one in `.env`. Unset variables keep their defaults.
    ///
    /// # Errors
    /// A `.env` file that exists but cannot be read or parsed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_and_file(Path::new(".env"))
    }

    /// Like [`Settings::from_env`], with the dotenv file at `dotenv_path` (ignored if absent).
    ///
    /// # Errors
    /// A dotenv file that exists but cannot be read or parsed.
    pub fn from_env_and_file(dotenv_path: &Path) -> Result<Self, ConfigError> {
        let file_values = read_dotenv(dotenv_path)?;
        let mut settings = Self::from_lookup(|name| {
            std::env::var(name).ok().or_else(|| {
                file_values
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
            })
        });
        if settings.oidc_issuer.is_some() {
            settings.oidc_issuer_source = Some(
                if std::env::var(OIDC_ISSUER_VAR).is_ok_and(|issuer| !issuer.is_empty()) {
                    SettingSource::Environment
                } else {
                    SettingSource::DotenvFile(dotenv_path.to_owned())
                },
            );
        }
        Ok(settings)
    }

    /// Builds settings from any source of variables, e.g. a map in tests.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let defaults = Self::default();
        let read = |name: &str, default: String| lookup(name).unwrap_or(default);
        Self {
            gcp_project_id: read("GCP_PROJECT_ID", defaults.gcp_project_id),
            gcp_location: read("GCP_LOCATION", defaults.gcp_location),
            cloud_tasks_queue: read("CLOUD_TASKS_QUEUE", defaults.cloud_tasks_queue),
            cloud_run_service_url: read("CLOUD_RUN_SERVICE_URL", defaults.cloud_run_service_url),
            cloud_run_service_account: read(
                "CLOUD_RUN_SERVICE_ACCOUNT",
                defaults.cloud_run_service_account,
            ),
            emulator_host: lookup(EMULATOR_HOST_VAR).filter(|host| !host.is_empty()),
            oidc_issuer: lookup(OIDC_ISSUER_VAR).filter(|issuer| !issuer.is_empty()),
            oidc_issuer_source: lookup(OIDC_ISSUER_VAR)
                .filter(|issuer| !issuer.is_empty())
                .map(|_| SettingSource::Lookup),
            oidc_verified_by_cloud_run: lookup(OIDC_VERIFIED_BY_CLOUD_RUN_VAR)
                .filter(|value| !value.is_empty()),
            cloud_run_service: lookup(CLOUD_RUN_SERVICE_VAR).filter(|name| !name.is_empty()),
        }
    }

    /// Whether these settings are complete and valid enough to build a Cloud Tasks client.
    ///
    /// The backend uses this to decide between enqueuing and its local fallback.
    pub fn is_cloud_tasks_configured(&self) -> bool {
        self.validate().is_ok()
    }

    /// Checks every setting a client needs and reports all problems at once.
    ///
    /// # Errors
    /// A [`ConfigError`] naming each missing or malformed variable, its value and the fix.
    pub fn validate(&self) -> Result<Target, ConfigError> {
        Target::checked(
            &self.gcp_project_id,
            &self.gcp_location,
            &self.cloud_tasks_queue,
            &self.cloud_run_service_url,
            &self.cloud_run_service_account,
            self.emulator_host.as_deref(),
        )
    }
}

fn read_dotenv(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let problem = |error: dotenvy::Error| {
        ConfigError::new(vec![ConfigProblem {
            setting: ".env",
            message: format!(
                "cannot read {}: {error}; fix the line or remove the file",
                path.display()
            ),
        }])
    };
    match dotenvy::from_path_iter(path) {
        Ok(lines) => lines.collect::<Result<_, _>>().map_err(problem),
        Err(error) if error.not_found() => Ok(Vec::new()),
        Err(error) => Err(problem(error)),
    }
}

/// A validated destination for tasks: the queue, and the backend that receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    queue_path: String,
    service_url: String,
    service_account_email: String,
}

impl Target {
    /// Checks all five values and reports every problem at once.
    ///
    /// # Errors
    /// A [`ConfigError`] naming each bad value.
    pub fn new(
        project_id: &str,
        location: &str,
        queue: &str,
        service_url: &str,
        service_account_email: &str,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut check = |setting: &'static str, result: Result<(), String>| {
            if let Err(message) = result {
                problems.push(ConfigProblem { setting, message });
            }
        };
        check("GCP_PROJECT_ID", validate::project_id(project_id));
        check("GCP_LOCATION", validate::location_id(location));
        check("CLOUD_TASKS_QUEUE", validate::queue_id(queue));
        let normalised_url = validate::service_url(service_url);
        check(
            "CLOUD_RUN_SERVICE_URL",
            normalised_url.as_ref().map(drop).map_err(Clone::clone),
        );
        check(
            "CLOUD_RUN_SERVICE_ACCOUNT",
            validate::service_account_email(service_account_email),
        );
        match normalised_url {
            Ok(service_url) if problems.is_empty() => Ok(Self {
                queue_path: format!("projects/{project_id}/locations/{location}/queues/{queue}"),
                service_url,
                service_account_email: service_account_email.to_owned(),
            }),
            _ => Err(ConfigError::new(problems)),
        }
    }

    /// Like [`Target::new`], also checking the emulator's `host:port` if there is one, and
    /// reporting every problem at once: what `Settings` and the client builder both need.
    pub(crate) fn checked(
        project_id: &str,
        location: &str,
        queue: &str,
        service_url: &str,
        service_account_email: &str,
        emulator_host: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let target = Self::new(
            project_id,
            location,
            queue,
            service_url,
            service_account_email,
        );
        let emulator_problem = emulator_host
            .and_then(|host| validate::emulator_host(host).err())
            .map(|message| ConfigProblem {
                setting: EMULATOR_HOST_VAR,
                message,
            });
        match (target, emulator_problem) {
            (Ok(target), None) => Ok(target),
            (Ok(_), Some(problem)) => Err(ConfigError::new(vec![problem])),
            (Err(mut error), problem) => {
                error.problems.extend(problem);
                Err(error)
            }
        }
    }

    /// `projects/{project}/locations/{location}/queues/{queue}`.
    pub fn queue_path(&self) -> &str {
        &self.queue_path
    }

    /// The backend's base URL, without a trailing slash; also the OIDC audience.
    pub fn service_url(&self) -> &str {
        &self.service_url
    }

    /// The service account whose OIDC token Cloud Tasks presents.
    pub fn service_account_email(&self) -> &str {
        &self.service_account_email
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_python_backend() {
        let defaults = settings(&[]);
        assert_eq!(defaults.gcp_project_id, "");
        assert_eq!(defaults.gcp_location, "us-central1");
        assert_eq!(defaults.cloud_tasks_queue, "document-processing");
        assert_eq!(defaults.cloud_run_service_url, "");
        assert_eq!(defaults.cloud_run_service_account, "");
        assert_eq!(defaults.emulator_host, None);
        assert_eq!(defaults.oidc_issuer, None);
        assert_eq!(defaults.oidc_issuer_source, None);
        assert_eq!(defaults.oidc_verified_by_cloud_run, None);
        assert_eq!(defaults.cloud_run_service, None);
        assert!(!defaults.is_cloud_tasks_configured());
    }

    #[test]
    fn receiver_settings_are_read_with_where_the_issuer_came_from() {
        let read = settings(&[
            (OIDC_ISSUER_VAR, "http://127.0.0.1:8123"),
            (OIDC_VERIFIED_BY_CLOUD_RUN_VAR, "true"),
            (CLOUD_RUN_SERVICE_VAR, "backend"),
        ]);
        assert_eq!(read.oidc_issuer.as_deref(), Some("http://127.0.0.1:8123"));
        assert_eq!(read.oidc_issuer_source, Some(SettingSource::Lookup));
        assert_eq!(read.oidc_verified_by_cloud_run.as_deref(), Some("true"));
        assert_eq!(read.cloud_run_service.as_deref(), Some("backend"));
        let empty = settings(&[(OIDC_ISSUER_VAR, ""), (CLOUD_RUN_SERVICE_VAR, "")]);
        assert_eq!((empty.oidc_issuer, empty.oidc_issuer_source), (None, None));
        assert_eq!(empty.cloud_run_service, None);
    }

    #[test]
    fn incomplete_settings_name_every_missing_variable() {
        let error = settings(&[("CLOUD_TASKS_QUEUE", "bad/queue")])
            .validate()
            .unwrap_err();
        let named: Vec<_> = error.problems().iter().map(|p| p.setting).collect();
        assert_eq!(
            named,
            [
                "GCP_PROJECT_ID",
                "CLOUD_TASKS_QUEUE",
                "CLOUD_RUN_SERVICE_URL",
                "CLOUD_RUN_SERVICE_ACCOUNT"
            ]
        );
        let message = error.to_string();
        assert!(message.contains("\"bad/queue\""), "{message}");
    }

    #[test]
    fn complete_settings_give_a_target() {
        let configured = settings(&[
            ("GCP_PROJECT_ID", "my-project"),
            ("GCP_LOCATION", "europe-west1"),
            ("CLOUD_RUN_SERVICE_URL", "https://backend.example.com/"),
            (
                "CLOUD_RUN_SERVICE_ACCOUNT",
                "invoker@my-project.iam.gserviceaccount.com",
            ),
        ]);
        assert!(configured.is_cloud_tasks_configured());
        let target = configured.validate().unwrap();
        assert_eq!(
            target.queue_path(),
            "projects/my-project/locations/europe-west1/queues/document-processing"
        );
        assert_eq!(target.service_url(), "https://backend.example.com");
    }

    #[test]
    fn malformed_emulator_host_is_a_config_error() {
        let error = settings(&[
            ("GCP_PROJECT_ID", "p"),
            ("CLOUD_RUN_SERVICE_URL", "http://localhost:8080"),
            ("CLOUD_RUN_SERVICE_ACCOUNT", "a@p.iam.gserviceaccount.com"),
            (EMULATOR_HOST_VAR, "http://localhost:8123"),
        ])
        .validate()
        .unwrap_err();
        assert_eq!(error.problems()[0].setting, EMULATOR_HOST_VAR);
    }
}

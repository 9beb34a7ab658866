//! `cloud-tasks emulator`: the crates.io `cloud-tasks-emulator` as a long-lived local server for
//! backend development, printing the environment that points a backend at it.
//!
//! The export lines go to stdout and everything else to stderr, so
//! `cloud-tasks emulator > emulator.env` leaves a file to `source`.

use std::net::SocketAddr;
use std::process::ExitCode;

use cloud_tasks::receiver::OIDC_ISSUER_VAR;
use cloud_tasks::{EMULATOR_HOST_VAR, Settings};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::demo::{LOCAL_PROJECT, LOCAL_SERVICE_ACCOUNT, non_empty_or};
use super::{EXIT_FAILED, EXIT_USAGE};

#[derive(Debug, clap::Args)]
pub(super) struct EmulatorArgs {
    /// Address serving gRPC, REST and OIDC discovery.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8123")]
    listen: SocketAddr,
    /// Full queue names to create at start, comma-separated
    /// (default: the queue named by GCP_PROJECT_ID, GCP_LOCATION and CLOUD_TASKS_QUEUE).
    #[arg(long, env = "QUEUES", value_delimiter = ',')]
    queues: Vec<String>,
    /// Origin handlers reach the emulator at; its tokens name it as issuer
    /// (default: http://<listen address>).
    #[arg(long, env = "OIDC_ISSUER")]
    issuer: Option<String>,
    /// Base URL of the backend that will receive tasks, printed as CLOUD_RUN_SERVICE_URL
    /// (default: the setting, else http://127.0.0.1:8080).
    #[arg(long)]
    service_url: Option<String>,
    /// Stop when standard input closes: `cloud-tasks demo` runs the emulator as its child this
    /// way, so it never outlives the demo.
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
}

pub(super) async fn run(args: EmulatorArgs) -> ExitCode {
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

async fn serve(args: EmulatorArgs) -> Result<(), (u8, String)> {
    let usage = |message: String| (EXIT_USAGE, message);
    let settings = Settings::from_env().map_err(|error| usage(error.to_string()))?;
    let project = non_empty_or(&settings.gcp_project_id, LOCAL_PROJECT);
    let mut queues: Vec<String> = args.queues.into_iter().filter(|q| !q.is_empty()).collect();
    if queues.is_empty() {
        queues.push(format!(
            "projects/{project}/locations/{}/queues/{}",
            settings.gcp_location, settings.cloud_tasks_queue
        ));
    }
    let first = QueueName::parse(&queues[0]).ok_or_else(|| {
        usage(format!(
            "queue {:?} is not a full queue name such as \
             projects/my-project/locations/us-central1/queues/document-processing",
            queues[0]
        ))
    })?;

    let listener = TcpListener::bind(args.listen).await.map_err(|error| {
        (
            EXIT_FAILED,
            format!("cannot listen on {}: {error}", args.listen),
        )
    })?;
    let bound = listener
        .local_addr()
        .map_err(|error| (EXIT_FAILED, error.to_string()))?;
    // A wildcard address is not somewhere a client can connect to.
    let reachable = if bound.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], bound.port()))
    } else {
        bound
    };
    let issuer = match args.issuer {
        Some(issuer) => origin(&issuer).ok_or_else(|| {
            usage(format!(
                "issuer {issuer:?} must be a bare http or https origin, e.g. http://127.0.0.1:8123"
            ))
        })?,
        None => format!("http://{reachable}"),
    };
    let service_url = args.service_url.unwrap_or_else(|| {
        non_empty_or(&settings.cloud_run_service_url, "http://127.0.0.1:8080").to_owned()
    });
    let service_account = non_empty_or(&settings.cloud_run_service_account, LOCAL_SERVICE_ACCOUNT);

    eprintln!("Cloud Tasks emulator listening on {bound} (gRPC, REST and OIDC discovery)");
    eprintln!("OIDC issuer {issuer}; queues, kept in memory:");
    for queue in &queues {
        eprintln!("  {queue}");
    }
    eprintln!("Point a backend at it with:");
    for (name, value) in [
        (EMULATOR_HOST_VAR, reachable.to_string().as_str()),
        (OIDC_ISSUER_VAR, &issuer),
        ("GCP_PROJECT_ID", first.project),
        ("GCP_LOCATION", first.location),
        ("CLOUD_TASKS_QUEUE", first.queue),
        ("CLOUD_RUN_SERVICE_URL", &service_url),
        ("CLOUD_RUN_SERVICE_ACCOUNT", service_account),
    ] {
        println!("export {name}={value}");
    }
    eprintln!("Ctrl-C stops it.");

    tokio::select! {
        result = cloud_tasks_emulator::serve(listener, issuer, queues) => {
            result.map_err(|error| (EXIT_FAILED, format!("the emulator stopped: {error}")))
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
        () = stdin_closed(), if args.exit_with_stdin => Ok(()),
    }
}

/// Returns once standard input reaches its end (or fails): the parent is gone.
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0; 64];
    while matches!(stdin.read(&mut buffer).await, Ok(read) if read > 0) {}
}

struct QueueName<'a> {
    project: &'a str,
    location: &'a str,
    queue: &'a str,
}

impl<'a> QueueName<'a> {
    fn parse(name: &'a str) -> Option<Self> {
        match name.split('/').collect::<Vec<_>>()[..] {
            ["projects", project, "locations", location, "queues", queue]
                if !project.is_empty() && !location.is_empty() && !queue.is_empty() =>
            {
                Some(Self {
                    project,
                    location,
                    queue,
                })
            }
            _ => None,
        }
    }
}

/// `url` as an origin (`scheme://host[:port]`), if it is nothing more than one.
fn origin(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let origin = parsed.origin().ascii_serialization();
    (matches!(parsed.scheme(), "http" | "https") && format!("{origin}/") == parsed.as_str())
        .then_some(origin)
}

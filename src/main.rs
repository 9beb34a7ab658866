//! `cloud-tasks`: enqueue document-processing tasks on Google Cloud Tasks from a shell.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

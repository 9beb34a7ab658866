//! Python environments the tests (and the benchmark) provision for themselves, so that
//! `cargo test --all-features` needs nothing on the machine but Rust and `python3`.
//!
//! Each environment is a virtual environment under the target directory, named after its
//! requirements (pinned versions), made once and reused by every later run. It is built in a
//! directory of its own and renamed into place when complete, so test processes that start at
//! the same time (cargo-nextest runs each test in its own process) never see a half-made one:
//! each may build its own, and the first rename wins. Within one process, tests wait for each
//! other instead.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

static SETTING_UP: Mutex<()> = Mutex::new(());

/// The Python interpreter of a virtual environment under `target_dir` holding what the
/// requirements file `requirements` pins, made with `python3 -m venv` and pip on the first
/// call. `name` names the environment in its directory and in what is printed.
pub fn python_with(target_dir: &Path, name: &str, requirements: &Path) -> Result<PathBuf, String> {
    let pinned = std::fs::read_to_string(requirements)
        .map_err(|error| format!("cannot read {}: {error}", requirements.display()))?;
    let mut hasher = DefaultHasher::new();
    pinned.hash(&mut hasher);
    let venv = target_dir.join(format!("python-{name}-{:016x}", hasher.finish()));
    let python = venv.join("bin/python");
    let _one_at_a_time = SETTING_UP.lock().unwrap_or_else(PoisonError::into_inner);
    if python.exists() {
        return Ok(python);
    }
    // Straight to stderr rather than `eprintln!`, which the test harness captures: a first run
    // that pauses for a minute of pip should say why.
    writeln!(
        std::io::stderr(),
        "setting up Python for {name} (first run only): a virtual environment at {} with {}",
        venv.display(),
        requirements.display()
    )
    .ok();
    let building = target_dir.join(format!("python-{name}.building-{}", std::process::id()));
    // A leftover from an interrupted run of this same process id would make venv fail.
    std::fs::remove_dir_all(&building).ok();
    let result = build(&building, requirements);
    if let Err(error) = result {
        std::fs::remove_dir_all(&building).ok();
        return Err(format!(
            "cannot set up Python for {name} at {}: {error}. The tests need python3 with the \
             venv module and access to PyPI the first time",
            venv.display()
        ));
    }
    // Renaming a virtual environment keeps `bin/python` working: it finds `pyvenv.cfg` beside
    // itself. Only the generated scripts (pip's shebang) name the old path, and none is used.
    if std::fs::rename(&building, &venv).is_err() {
        // Another process finished first; its environment is the same.
        std::fs::remove_dir_all(&building).ok();
    }
    if python.exists() {
        Ok(python)
    } else {
        Err(format!(
            "{} is missing after setting it up",
            python.display()
        ))
    }
}

fn build(venv: &Path, requirements: &Path) -> Result<(), String> {
    std::fs::create_dir_all(venv.parent().unwrap_or(Path::new(".")))
        .map_err(|error| error.to_string())?;
    run(
        Command::new("python3").arg("-m").arg("venv").arg(venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(requirements),
        "pip install",
    )
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .stdout(Stdio::null())
        .output()
        .map_err(|error| format!("{what}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

//! The workspace's binaries started as an operator starts them, for the end-to-end tests: the
//! command lines of a controller, a proxy and a drone on loopback port 0, and waiting for the
//! line a process prints once it serves.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// How long a process may take to print the line that says it serves.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// A child process killed with SIGKILL when dropped.
pub struct Process(pub Child);

impl Process {
    pub fn spawn(command: &mut Command) -> Process {
        Process(command.spawn().unwrap_or_else(|err| panic!("start {command:?}: {err}")))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A [`Process`] whose log (stderr) is kept in a temporary file and printed when the test
/// panics: a fault that needs several processes and half a minute to show must be readable from
/// the one run that showed it.
pub struct LoggedProcess {
    pub process: Process,
    name: String,
    log: tempfile::NamedTempFile,
}

impl LoggedProcess {
    /// Starts `command` with its stderr in a temporary file; `name` says whose log it is.
    pub fn spawn(name: &str, command: &mut Command) -> LoggedProcess {
        let log = tempfile::NamedTempFile::new().expect("a temporary file for a process's log");
        command.stderr(log.reopen().expect("the process's log file"));
        LoggedProcess { process: Process::spawn(command), name: name.to_string(), log }
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        self.process.kill();
        print_log_if_panicking(&self.name, self.log.path());
    }
}

/// Prints the log at `path`, headed by `name`, when the current thread is panicking (a test
/// failing): called as a process's guard is dropped, after the process was killed.
pub fn print_log_if_panicking(name: &str, path: &Path) {
    if std::thread::panicking() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        eprintln!("----- log of {name} -----\n{text}----- end of its log -----");
    }
}

/// `hangar-server controller` on 127.0.0.1:0 (both listeners) over `database`.
pub fn controller_command(database: &str) -> Command {
    let mut command = Command::new(crate::binary("hangar-server"));
    command.args(["controller", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--database", database]);
    command
}

/// `hangar-server proxy` named `name` on 127.0.0.1:0 (both listeners), attached to `controller`.
pub fn proxy_command(controller: &str, name: &str) -> Command {
    let mut command = Command::new(crate::binary("hangar-server"));
    command.args(["proxy", "--controller", controller, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    command.args(["--name", name]);
    command
}

/// `hangar-drone run` named `name` on the process runtime, attached to `controller`, its admin
/// listener on 127.0.0.1:0 and its journal in `data_dir`.
pub fn drone_command(controller: &str, name: &str, data_dir: &Path) -> Command {
    let mut command = Command::new(crate::binary("hangar-drone"));
    command.args(["run", "--controller", controller, "--name", name, "--runtime", "process"]);
    command.args(["--admin-listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
    command
}

/// The lines `child` prints on its (piped) stdout, read on a thread until it ends, so that a
/// process that hangs before its line fails the test instead of blocking it.
pub fn stdout_lines(child: &mut Child) -> Receiver<String> {
    let stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    lines
}

/// What follows `prefix` on the first of `lines` that starts with it, trimmed; `None` when no
/// such line came within `wait`.
pub fn line_after(lines: &Receiver<String>, prefix: &str, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()?;
        if let Some(rest) = line.strip_prefix(prefix) {
            return Some(rest.trim().to_string());
        }
    }
}

/// Starts `command` (its stderr discarded) and waits up to [`START_WAIT`] for a stdout line
/// starting with `prefix`; returns the rest of it.
pub fn start(mut command: Command, prefix: &str) -> (Process, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start");
    let lines = stdout_lines(&mut child);
    let running = Process(child);
    let rest = line_after(&lines, prefix, START_WAIT).unwrap_or_else(|| panic!("no line starting with {prefix:?}"));
    (running, rest)
}

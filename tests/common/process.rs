//! One way to run a program beside a test: the real signpost binary, redis-server, nginx,
//! coturn, Firefox, the Python peer. [`ChildProcess`] starts it, captures the output stream the
//! test watches (line by line, on a thread, so that a program that stops writing fails the test
//! at a deadline instead of hanging it, and one that writes a lot never blocks on a full pipe),
//! awaits its readiness, and kills it when dropped, however the test ends. A one-shot program
//! the test asks something (PyJWT, openssl, coturn's clients) goes through [`run`] instead.
//!
//! Whether an optional program is here is the caller's check, before it starts one:
//! `external::can_run(test, …)` with the functions of `requirements.rs`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::eventually::CHECK_EVERY;

/// Which of the child's output streams the test reads (the other one is left as the command
/// set it: inherited unless the caller sends it elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Stdout,
    Stderr,
    /// Neither: readiness is a port or a probe.
    Nothing,
}

/// A program a test started. Killed (SIGKILL) and reaped when dropped, unless it has already
/// been waited for.
pub struct ChildProcess {
    /// The program's name in failure messages.
    name: String,
    child: Child,
    /// Every line of the watched stream so far, shared with the thread that reads it.
    output: Arc<Captured>,
    /// How many lines of `output` [`ChildProcess::read_until`] and
    /// [`ChildProcess::next_line`] have handed out already.
    read: usize,
    /// Whether the child has been reaped (then it is not killed on drop).
    reaped: bool,
}

/// The lines read from a child, and two ways to be woken when one comes: a condition variable
/// for the tests that wait on a thread, a `Notify` for the ones that wait in a task.
#[derive(Default)]
struct Captured {
    /// Lock held only to push or read lines, never across a wait's `.await`.
    lines: Mutex<Lines>,
    changed: Condvar,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    /// The stream reached its end (the child closed it, usually by exiting).
    ended: bool,
}

impl Captured {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: Option<String>) {
        let mut lines = self.lock();
        match line {
            Some(line) => lines.lines.push(line),
            None => lines.ended = true,
        }
        drop(lines);
        self.changed.notify_all();
        // One waiting task at most (the owner): a stored permit covers a push that comes
        // between its check and its wait.
        self.notify.notify_one();
    }
}

impl ChildProcess {
    /// Starts `command` as `name`, with the stream `watch` piped and read into lines; stdin and
    /// the other streams are left as `command` set them. Fails the test if the program cannot
    /// start.
    pub fn spawn(name: &str, mut command: Command, watch: Watch) -> ChildProcess {
        match watch {
            Watch::Stdout => command.stdout(Stdio::piped()),
            Watch::Stderr => command.stderr(Stdio::piped()),
            Watch::Nothing => &mut command,
        };
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{name} does not start: {error}"));
        let output = Arc::new(Captured::default());
        let stream: Option<Box<dyn Read + Send>> = match watch {
            Watch::Stdout => Some(Box::new(child.stdout.take().expect("piped"))),
            Watch::Stderr => Some(Box::new(child.stderr.take().expect("piped"))),
            Watch::Nothing => None,
        };
        match stream {
            Some(stream) => {
                let output = output.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        output.push(Some(line));
                    }
                    output.push(None);
                });
            }
            None => output.push(None),
        }
        ChildProcess {
            name: name.to_owned(),
            child,
            output,
            read: 0,
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin, if `command` piped it.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Reads the watched output, from where the last read stopped, until `find` returns a value
    /// for a line, and returns it. Guarantees that line was written; fails the test, naming
    /// `what` and showing the whole output, if the output ends first or not within `within`.
    /// (It waits on this thread, as the synchronous start-up of a server does.)
    pub fn read_until<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        let mut lines = self.output.lock();
        loop {
            while self.read < lines.lines.len() {
                let line = &lines.lines[self.read];
                self.read += 1;
                if let Some(found) = find(line) {
                    return found;
                }
            }
            let now = Instant::now();
            if lines.ended || now >= deadline {
                let why = if lines.ended {
                    "its output ended".to_owned()
                } else {
                    format!("not within {within:?}")
                };
                let output = lines.lines.join("\n");
                drop(lines);
                panic!(
                    "{} never showed {what}: {why}; its output:\n{output}",
                    self.name
                );
            }
            lines = self
                .output
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The next line of the watched output not read yet, waiting in the task (no deadline: the
    /// caller bounds its whole wait); `None` once the output has ended.
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            {
                let lines = self.output.lock();
                if let Some(line) = lines.lines.get(self.read) {
                    self.read += 1;
                    return Some(line.clone());
                }
                if lines.ended {
                    return None;
                }
            }
            self.output.notify.notified().await;
        }
    }

    /// The watched output so far, for a failure message (nothing if none was watched or written).
    fn shown(&self) -> String {
        let lines = self.output.lock();
        if lines.lines.is_empty() {
            return String::new();
        }
        format!("; its output:\n{}", lines.lines.join("\n"))
    }

    /// Every line of the watched output so far, read or not.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().lines.clone()
    }

    /// Every line of the watched output, once it has ended (the child closed it, usually by
    /// exiting); fails the test if it has not within `within`.
    pub fn whole_output(&mut self, within: Duration) -> Vec<String> {
        let (lines, waited) = self
            .output
            .changed
            .wait_timeout_while(self.output.lock(), within, |lines| !lines.ended)
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            !waited.timed_out(),
            "{}'s output did not end within {within:?}",
            self.name
        );
        self.read = lines.lines.len();
        lines.lines.clone()
    }

    /// Waits until `ready` holds (checked every [`CHECK_EVERY`] on this thread), failing the
    /// test with `what` if the child exits first or it does not within `within`.
    pub fn await_ready(&mut self, what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !ready() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before {what}{}",
                    self.name,
                    self.shown()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not get to {what} within {within:?}{}",
                self.name,
                self.shown()
            );
            std::thread::sleep(CHECK_EVERY);
        }
    }

    /// Waits until the child accepts TCP connections on `port` of 127.0.0.1 (see
    /// [`ChildProcess::await_ready`]).
    pub fn await_port(&mut self, port: u16, within: Duration) {
        self.await_ready(&format!("listening on port {port}"), within, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM, as a service manager stops a program; does not wait.
    pub fn terminate(&self) {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(signalled.success(), "SIGTERM reached {}", self.name);
    }

    /// SIGKILL, and waits until the child is gone.
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            self.wait();
        }
    }

    /// Waits in the task until the child exits by itself, and returns how it did; fails the test
    /// if it has not within `within`. (For a child that talks to a server running in the test's
    /// own runtime, which a wait on the thread would stall.)
    pub async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let exited = self
                .child
                .try_wait()
                .unwrap_or_else(|error| panic!("{} is reaped: {error}", self.name));
            if let Some(status) = exited {
                self.reaped = true;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}{}",
                self.name,
                self.shown()
            );
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }

    /// Waits (on this thread) until the child exits, and returns how it did.
    pub fn wait(&mut self) -> ExitStatus {
        let status = self
            .child
            .wait()
            .unwrap_or_else(|error| panic!("{} is reaped: {error}", self.name));
        self.reaped = true;
        status
    }
}

/// Runs `command` to its end, as `Command::output` does (stdin closed, stdout and stderr
/// captured), but for at most `within`: guarantees the program has exited when it returns, and
/// fails the test, naming `name` and showing what the program wrote, if it cannot start or has
/// not finished in time (then it is killed). For the one-shot programs a test asks something:
/// PyJWT, openssl, coturn's clients, the binary's subcommands.
pub fn run(name: &str, mut command: Command, within: Duration) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("{name} does not start: {error}"));
    // Read on threads, so that a program writing more than a pipe holds never blocks.
    fn drain(stream: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = BufReader::new(stream).read_to_end(&mut bytes);
            bytes
        })
    }
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + within;
    let status = loop {
        let exited = child
            .try_wait()
            .unwrap_or_else(|error| panic!("{name} is reaped: {error}"));
        if let Some(status) = exited {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let wrote = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
            panic!(
                "{name} did not finish within {within:?}; stdout:\n{}\nstderr:\n{}",
                wrote(stdout.join().unwrap_or_default()),
                wrote(stderr.join().unwrap_or_default())
            );
        }
        // Short: these programs usually answer in milliseconds.
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout is read"),
        stderr: stderr.join().expect("stderr is read"),
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

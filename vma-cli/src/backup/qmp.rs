//! A small QMP (and guest agent) client over a Unix socket.
//!
//! Owns the JSON-lines conversation: a reader thread turns every line into a
//! [`Msg`] on a channel, so the caller can wait for a command's answer or for
//! job events with a timeout while it also watches signals and the archive.
//! Command answers are matched by the `id` we send; events seen while waiting
//! for an answer are kept for [`Qmp::next_event`].

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// One line from the peer.
enum Msg {
    Line(Value),
    /// The connection ended (QEMU exited) or broke; the text says how.
    Closed(String),
}

/// A connected QMP (or guest agent) session.
pub struct Qmp {
    what: &'static str,
    stream: UnixStream,
    rx: Receiver<Msg>,
    events: VecDeque<Value>,
    next_id: u64,
    closed: Option<String>,
}

impl Qmp {
    /// Connects to QEMU's QMP socket and enters command mode.
    pub fn connect(path: &Path) -> Result<Qmp> {
        let mut q = Self::open(path, "QMP")?;
        // The greeting comes first, unasked.
        match q.recv(Some(Duration::from_secs(30)))? {
            Some(v) if v.get("QMP").is_some() => {}
            Some(v) => bail!("{}: not a QMP greeting: {v}", path.display()),
            None => bail!("{}: no QMP greeting within 30 s", path.display()),
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// Connects to a guest agent socket (no greeting, no capabilities).
    pub fn connect_agent(path: &Path) -> Result<Qmp> {
        Self::open(path, "guest agent")
    }

    fn open(path: &Path, what: &'static str) -> Result<Qmp> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("can't connect to the {what} socket {}", path.display()))?;
        let reader = stream.try_clone().context("can't duplicate a socket")?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("vma-qmp".into())
            .spawn(move || {
                let mut r = BufReader::new(reader);
                let mut line = String::new();
                loop {
                    line.clear();
                    let msg = match r.read_line(&mut line) {
                        Ok(0) => Msg::Closed("connection closed".into()),
                        Ok(_) if line.trim().is_empty() => continue,
                        Ok(_) => match serde_json::from_str(line.trim_start_matches('\u{ff}')) {
                            Ok(v) => Msg::Line(v),
                            Err(e) => Msg::Closed(format!("malformed JSON ({e}): {line:?}")),
                        },
                        Err(e) => Msg::Closed(e.to_string()),
                    };
                    let end = matches!(msg, Msg::Closed(_));
                    if tx.send(msg).is_err() || end {
                        return;
                    }
                }
            })
            .context("can't start the QMP reader thread")?;
        Ok(Qmp {
            what,
            stream,
            rx,
            events: VecDeque::new(),
            next_id: 0,
            closed: None,
        })
    }

    /// Whether the peer is gone (QEMU exited).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// The next line, `None` on timeout; an error once the peer is gone.
    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Value>> {
        if let Some(why) = &self.closed {
            bail!("{} {why}", self.what);
        }
        let msg = match timeout {
            Some(t) => match self.rx.recv_timeout(t) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => Msg::Closed("connection closed".into()),
            },
            None => self
                .rx
                .recv()
                .unwrap_or(Msg::Closed("connection closed".into())),
        };
        match msg {
            Msg::Line(v) => Ok(Some(v)),
            Msg::Closed(why) => {
                let text = format!("{} {why}", self.what);
                self.closed = Some(why);
                Err(anyhow!(text))
            }
        }
    }

    /// Runs `command`, waiting at most `timeout`; returns its `return` value.
    pub fn execute_timeout(
        &mut self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value> {
        self.next_id += 1;
        let id = format!("vma-{}", self.next_id);
        let mut cmd = json!({"execute": command, "id": id});
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            cmd["arguments"] = arguments;
        }
        let mut line = cmd.to_string();
        line.push('\n');
        if let Some(why) = &self.closed {
            bail!("{} {why}", self.what);
        }
        self.stream
            .write_all(line.as_bytes())
            .with_context(|| format!("{} command {command}", self.what))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} command {command}: no answer within {timeout:?}",
                    self.what
                );
            }
            let Some(v) = self.recv(Some(left))? else {
                continue;
            };
            if v.get("event").is_some() {
                self.events.push_back(v);
                continue;
            }
            if v.get("id").and_then(Value::as_str) != Some(&id) {
                // An answer to an earlier command we gave up on.
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            let desc = v
                .pointer("/error/desc")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            bail!("{} command {command} failed: {desc}", self.what);
        }
    }

    /// Runs `command` (at most 60 s).
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        self.execute_timeout(command, arguments, Duration::from_secs(60))
    }

    /// The next event, waiting at most `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Value>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(v) = self.recv(Some(left))? else {
                return Ok(None);
            };
            if v.get("event").is_some() {
                return Ok(Some(v));
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }
}

/// Freezes the guest's filesystems through its agent; [`Agent::thaw`] (or
/// drop) thaws them.
pub struct Agent {
    qga: Qmp,
    frozen: bool,
}

impl Agent {
    /// Connects and syncs with the agent (drops stale answers), then freezes.
    pub fn freeze(path: &Path) -> Result<Agent> {
        let mut qga = Qmp::connect_agent(path)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Unique per run, so a stale answer of an earlier sync cannot match.
        let token = u64::from(std::process::id()) << 32 | u64::from(nanos);
        let r = qga.execute_timeout("guest-sync", json!({"id": token}), Duration::from_secs(10))?;
        if r.as_u64() != Some(token) {
            bail!("guest agent: guest-sync answered {r} instead of {token}");
        }
        let mut agent = Agent { qga, frozen: true };
        // Count the freeze as done even if it fails half-way: thaw is harmless.
        let n = agent.qga.execute_timeout(
            "guest-fsfreeze-freeze",
            json!({}),
            Duration::from_secs(60),
        )?;
        eprintln!("backup: guest filesystems frozen ({n})");
        Ok(agent)
    }

    /// Thaws the guest's filesystems.
    pub fn thaw(mut self) -> Result<()> {
        self.do_thaw()
    }

    fn do_thaw(&mut self) -> Result<()> {
        if !self.frozen {
            return Ok(());
        }
        self.frozen = false;
        let n =
            self.qga
                .execute_timeout("guest-fsfreeze-thaw", json!({}), Duration::from_secs(60))?;
        eprintln!("backup: guest filesystems thawed ({n})");
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.do_thaw() {
            eprintln!("vma: warning: can't thaw the guest's filesystems: {e:#}");
        }
    }
}

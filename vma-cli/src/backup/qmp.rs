//! A small QMP (and guest agent) client over a Unix socket.
//!
//! Owns the JSON-lines conversation: a reader thread turns every line into a
//! [`Msg`] on a channel, so the caller can wait for a command's answer or for
//! job events with a timeout while it also watches signals and the archive.
//! Command answers are matched by the `id` we send; events seen while waiting
//! for an answer are kept for [`Qmp::next_event`].

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// Longest JSON line accepted from QEMU or the agent.
const MAX_LINE: u64 = 64 << 20;

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
                    // Bounded: a peer gone mad cannot make us buffer forever.
                    let msg = match r.by_ref().take(MAX_LINE).read_line(&mut line) {
                        Ok(0) => Msg::Closed("connection closed".into()),
                        Ok(n) if n as u64 == MAX_LINE && !line.ends_with('\n') => {
                            Msg::Closed(format!("sent a line longer than {MAX_LINE} bytes"))
                        }
                        Ok(_) if line.trim().is_empty() => continue,
                        Ok(_) => match serde_json::from_str(&line) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP server: greeting, then for each command line the
    /// next canned answer (with the command's id filled in).
    fn fake_qmp(answers: Vec<Value>) -> (std::path::PathBuf, std::thread::JoinHandle<()>) {
        let path = std::env::temp_dir().join(format!("vma-qmp-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            writeln!(w, "{}", json!({"QMP": {"version": {}, "capabilities": []}})).unwrap();
            let mut r = BufReader::new(s);
            for mut a in answers {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                let cmd: Value = serde_json::from_str(&line).unwrap();
                if a.get("event").is_none() {
                    a["id"] = cmd["id"].clone();
                } else {
                    // An event first, then the real answer.
                    writeln!(w, "{a}").unwrap();
                    a = json!({"return": {}, "id": cmd["id"]});
                }
                writeln!(w, "{a}").unwrap();
            }
            // Then QEMU "exits".
        });
        (path, t)
    }

    #[test]
    fn answers_errors_events_and_eof() {
        let (path, t) = fake_qmp(vec![
            json!({"return": {}}),
            json!({"error": {"class": "GenericError", "desc": "Node 'x' not found"}}),
            json!({"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": "pending"}}),
        ]);
        let mut q = Qmp::connect(&path).unwrap();
        let e = q
            .execute("blockdev-del", json!({"node-name": "x"}))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "QMP command blockdev-del failed: Node 'x' not found"
        );
        // The event that came before the answer is kept for next_event.
        assert_eq!(q.execute("query-jobs", json!({})).unwrap(), json!({}));
        let ev = q.next_event(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(ev["data"]["status"], "pending");
        t.join().unwrap();
        let e = q.next_event(Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("QMP connection closed"), "{e}");
        assert!(q.is_closed());
        let _ = std::fs::remove_file(&path);
    }
}

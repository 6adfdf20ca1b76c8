//! `vma`: a drop-in for Proxmox's `vma` tool (list, config, create, extract,
//! verify) plus `mount`/`umount` of an archive through FUSE and `serve` over
//! NBD, as a library.
//!
//! The binary (`src/main.rs`) is one call to [`main`]; tests and fuzz targets
//! call [`run`] with their own arguments, so they drive the real commands.
//!
//! This file owns the command-line definition (one clap derive tree, also used
//! for shell completions and the man page), dispatch and the error/exit-code
//! convention. Each subcommand lives in its own module.

#![deny(unsafe_code)]

// Unix-only commands (FUSE, NBD, QMP): the modules, their `Command` variants
// and their dispatch arms carry `#[cfg(unix)]`, so Windows builds leave them
// out of the program and of `--help`.
#[cfg(unix)]
mod backup;
mod config;
mod create;
mod extract;
mod index;
mod input;
mod interrupt;
mod json_doc;
mod list;
mod listing;
#[cfg(unix)]
mod mount;
#[cfg(unix)]
mod nbd_client;
mod outcome;
mod progress;
#[cfg(feature = "remote")]
mod remote;
mod restore_map;
#[cfg(unix)]
mod serve;
// The only module allowed `unsafe` (libc and windows-sys calls std lacks),
// and the only one with Unix and Windows halves; see its doc.
#[allow(unsafe_code)]
mod sys;
mod verify;
mod writer;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// Exit status of fatal errors. Proxmox's tool dies through `g_error`
/// (SIGTRAP), which shells report as 133; we exit with the same number so
/// scripts that look at it see no difference.
pub const EXIT_FATAL: u8 = 133;
/// Exit status of `vma config` when the config is missing (Proxmox: -1).
pub const EXIT_NO_CONFIG: u8 = 255;
/// Exit status of `vma extract --salvage` when data was damaged or missing
/// (everything readable was written; see `vma extract --help`).
pub const EXIT_SALVAGED: u8 = 3;
/// Exit status of command-line usage errors (Proxmox prints its usage and exits 1).
pub const EXIT_USAGE: u8 = 1;
/// Exit status of every command ended by SIGINT, SIGTERM or SIGHUP (the
/// shell's 128 + SIGINT), after one `vma: interrupted` line.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The text after `vma --help`'s options (a macro, so that Windows builds
/// can append their note with `concat!`).
macro_rules! after_help_text {
    () => {
        "\
list, config, verify and extract read a plain, zstd, gzip or lzop compressed
archive (detected by content, not by name), or '-' for standard input; mount
and index need a file (they read at random offsets, so '-' is refused). create
writes to '-' (standard output) too. Options may come before or after the file
names.

Exit status: 0 on success; 133 on fatal errors (the message starts with 'vma: ',
the same status Proxmox's tool yields); 255 when 'vma config' finds no such
config; 3 when 'vma extract --salvage' found damaged or missing data; 1 on
command-line usage errors; 130 when SIGINT, SIGTERM or SIGHUP stopped the
command (it prints 'vma: interrupted', removes its incomplete output as it
does on failure, and prints the one JSON document with --json). 'vma mount'
is the exception: there these signals unmount.

With --json, standard output carries exactly one JSON document even when the
command fails: {\"ok\": false, \"error\": ..., \"offset\": ...} (offset: the
archive byte offset, when the error has one).

Examples:
  vma list vzdump-qemu-100-2026_01_01-00_00_00.vma.zst
  zstd -q -d -c backup.vma.zst | vma extract -v - /var/tmp/restore
  vma verify -v backup.vma"
    };
}

#[cfg(unix)]
const AFTER_HELP: &str = after_help_text!();
#[cfg(not(unix))]
const AFTER_HELP: &str = concat!(
    after_help_text!(),
    "\n\nmount, umount (FUSE), serve (NBD) and backup (QMP and NBD) are Unix-only:\n\
this Windows build has none of them."
);

/// List, verify, extract, create and mount Proxmox VE VMA backup archives.
#[derive(Parser, Debug)]
#[command(name = "vma", version, after_help = AFTER_HELP, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the configs, devices and creation time of an archive (reads only the header).
    #[command(after_help = "Output lines (as Proxmox's tool prints them):\n  \
        CFG: size: <len> name: <name>\n  DEV: dev_id=<id> size: <bytes> devname: <name>\n  \
        VMSTATE: dev_id=<id> memory: <bytes>\n  CTIME: <ctime(3) in local time>\n\n\
        Examples:\n  vma list backup.vma\n  TZ=UTC vma list backup.vma.zst\n  vma list --json backup.vma")]
    List(list::ListArgs),
    /// Write one config blob of an archive to standard output.
    #[command(after_help = "Examples:\n  vma config backup.vma\n  \
        zstd -q -d -c backup.vma.zst | vma config - -c qemu-server.fw")]
    Config(config::ConfigArgs),
    /// Create an archive from config files and disk images.
    Create(create::CreateArgs),
    /// Back up a running QEMU VM over QMP and NBD (consistent, no temporary storage).
    #[cfg(unix)]
    Backup(backup::BackupArgs),
    /// Restore an archive: configs and disk images into a new directory.
    ///
    /// Disk images are written as disk-<DEVNAME>.raw: the names Proxmox's tool
    /// writes, which qmrestore relies on (`vma mount` shows the same disks as
    /// <DEVNAME>.raw, since a mount holds nothing but disks and configs).
    #[command(after_help = extract::AFTER_HELP)]
    Extract(extract::ExtractArgs),
    /// Read a whole archive and check every header, extent and cluster, and
    /// that no cluster is missing.
    #[command(
        after_help = "Unlike Proxmox's tool, verify also fails when clusters are missing \
        (e.g. a truncated archive).\n\nExamples:\n  vma verify backup.vma\n  \
        vma verify -v backup.vma.zst\n  vma verify --json backup.vma"
    )]
    Verify(verify::VerifyArgs),
    /// Mount an archive read-only with FUSE: one file per disk and config.
    #[command(after_help = "Disks appear as <DEVNAME>.raw (`vma extract` writes \
        disk-<DEVNAME>.raw instead: Proxmox's names, which qmrestore relies on).\n\
        The archive must be a file: '-' (standard input) is refused, since FUSE reads \
        at random offsets.\n\n\
        Examples:\n  vma mount backup.vma /mnt/vma\n  \
        vma mount -f -o allow_other backup.vma /mnt/vma\n  vma umount /mnt/vma")]
    #[cfg(unix)]
    Mount(mount::MountArgs),
    /// Unmount an archive mounted with `vma mount`.
    #[cfg(unix)]
    Umount(mount::UmountArgs),
    /// Serve each disk of an archive as a read-only NBD export (e.g. for
    /// qemu-img, nbdcopy, or a live restore through a qcow2 overlay).
    #[command(after_help = serve::AFTER_HELP)]
    #[cfg(unix)]
    Serve(serve::ServeArgs),
    /// Build (or validate) the sidecar index giving random access into a
    /// compressed archive, without mounting; print where it is and its size.
    #[command(
        after_help = "Examples:\n  vma index backup.vma.zst\n  vma index --rebuild --json backup.vma.gz"
    )]
    Index(index::IndexArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  vma completions bash > /etc/bash_completion.d/vma")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write all of them into a directory.
    #[command(
        after_help = "vma.1 refers to one page per command (vma-list(1), ...): \
        --dir writes them all.\n\n\
        Examples:\n  vma manpage > vma.1 && man ./vma.1\n  \
        vma manpage --dir /usr/local/share/man/man1"
    )]
    Manpage {
        /// Write vma.1 and vma-<COMMAND>.1 for every command into DIR
        /// (which must exist) instead of printing vma.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// An error that already printed its message and only carries an exit status.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// The `vma` program: parses the process's arguments and runs the command,
/// with the process-wide signal handling of `interrupt`.
pub fn main() -> ExitCode {
    run_with(std::env::args_os(), true)
}

/// Runs `vma` with `args` (the first one is the program name), printing to
/// the process's stdout and stderr as the binary does, and returns the exit
/// status the binary would exit with. Unlike [`main`], it leaves the
/// process's signal handling alone (fuzz targets and tests call it).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run_with(args, false)
}

fn run_with<I, T>(args: I, signals: bool) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    if let Some(note) = stdin_note(&cli.command, std::io::stdin().is_terminal()) {
        eprintln!("{note}");
    }
    // Only for pure output commands is a closed stdout not a failure.
    let pipe_ok = matches!(
        cli.command,
        Command::List(_)
            | Command::Config(_)
            | Command::Completions { .. }
            | Command::Manpage { dir: None }
    );
    // mount and serve fork into daemons (no threads allowed before) and stop
    // on these signals themselves; backup unwinds itself (cancels QEMU's jobs).
    #[cfg(unix)]
    let (daemon, backup) = (
        matches!(cli.command, Command::Mount(_) | Command::Serve(_)),
        matches!(cli.command, Command::Backup(_)),
    );
    #[cfg(not(unix))]
    let (daemon, backup) = (false, false);
    if signals && !daemon {
        if backup {
            interrupt::install_flag_only();
        } else {
            interrupt::install();
        }
    }
    let json = match &cli.command {
        Command::List(a) => a.json,
        Command::Verify(a) => a.json,
        Command::Index(a) => a.json,
        _ => false,
    };
    let _json_on_interrupt = json.then(json_doc::on_interrupt);
    let result = match cli.command {
        Command::List(a) => list::run(a),
        Command::Config(a) => config::run(a),
        Command::Create(a) => create::run(a),
        #[cfg(unix)]
        Command::Backup(a) => backup::run(a),
        Command::Extract(a) => extract::run(a),
        Command::Verify(a) => verify::run(a),
        #[cfg(unix)]
        Command::Mount(a) => mount::run_mount(a),
        #[cfg(unix)]
        Command::Umount(a) => mount::run_umount(a),
        #[cfg(unix)]
        Command::Serve(a) => serve::run(a),
        Command::Index(a) => index::run(a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vma", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage { dir: None } => clap_mangen::Man::new(man_command())
            .source(format!("vma {}", env!("CARGO_PKG_VERSION")))
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
        Command::Manpage { dir: Some(dir) } => write_man_pages(&dir)
            .with_context(|| format!("can't write man pages to {}", dir.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if interrupt::interrupted() {
                // A loop stopped for a signal: the signal thread is ending
                // the process (one message, cleanups, exit status).
                interrupt::exit_interrupted();
            }
            if json && !json_doc::emitted() {
                let _ = json_doc::emit(&json_doc::failure(&e));
            }
            let _ = std::io::stdout().flush();
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            if pipe_ok && is_broken_pipe(&e) {
                // Like Proxmox's users (`vma config - | head`), a closed
                // stdout is not our failure.
                return ExitCode::SUCCESS;
            }
            eprintln!("vma: {}", error_text(&e));
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// The clap tree the man pages are rendered from: the one `--help` uses,
/// without the `help` pseudo-command (there is no page for it).
fn man_command() -> clap::Command {
    Cli::command().disable_help_subcommand(true)
}

/// Writes vma.1 and vma-<COMMAND>.1 for every command into `dir`: the pages
/// vma.1 refers to. (clap_mangen's own `generate_to` would label each
/// subcommand page with the bare command name instead of "vma VERSION".)
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut cmd = man_command();
    cmd.build();
    let source = format!("vma {}", env!("CARGO_PKG_VERSION"));
    for sub in cmd.get_subcommands() {
        clap_mangen::Man::new(sub.clone())
            .source(&source)
            .generate_to(dir)?;
    }
    clap_mangen::Man::new(cmd).source(source).generate_to(dir)?;
    Ok(())
}

/// What to print before a command reads an archive from a terminal: without
/// it, `vma list -` typed by mistake seems to hang.
fn stdin_note(command: &Command, stdin_is_tty: bool) -> Option<&'static str> {
    let file = match command {
        Command::List(a) => &a.file,
        Command::Config(a) => &a.file,
        Command::Verify(a) => &a.file,
        Command::Extract(a) => &a.file,
        _ => return None,
    };
    (stdin_is_tty && file.as_os_str() == "-").then_some(
        "vma: waiting for an archive on standard input (a terminal); \
         pipe one in, or give a file name instead of '-' (Ctrl-D ends the input)",
    )
}

/// The error chain as one line, `outer: cause: …`, skipping a cause whose
/// text is already part of what was printed: vma-format's I/O errors (and
/// many `io::Error` wrappers) embed their source in their own message and
/// also expose it as `source()`, which `{:#}` would print twice.
///
/// The operating system's error goes last as ` - <strerror>`, as Proxmox's
/// tool writes it (`can't open file x.vma - No such file or directory`),
/// without Rust's ` (os error N)` suffix.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut os_code = None;
    for cause in e.chain() {
        let (text, code) = strip_os_error(&cause.to_string());
        os_code = code.or(os_code);
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    if let Some(code) = os_code {
        let (strerror, _) = strip_os_error(&std::io::Error::from_raw_os_error(code).to_string());
        if let Some(head) = out.strip_suffix(&strerror) {
            let head = head.trim_end_matches([':', ' ', '-']);
            if !head.is_empty() {
                out = format!("{head} - {strerror}");
            }
        }
    }
    out
}

/// Removes every ` (os error N)` from `text`; returns the text and the last N.
fn strip_os_error(text: &str) -> (String, Option<i32>) {
    const MARK: &str = " (os error ";
    let (mut out, mut rest, mut code) = (String::new(), text, None);
    while let Some(i) = rest.find(MARK) {
        let after = &rest[i + MARK.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match (
            after[..digits].parse::<i32>(),
            after[digits..].starts_with(')'),
        ) {
            (Ok(n), true) => {
                out.push_str(&rest[..i]);
                code = Some(n);
                rest = &after[digits + 1..];
            }
            _ => {
                out.push_str(&rest[..i + MARK.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, code)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_after_positionals() {
        let cli =
            Cli::try_parse_from(["vma", "extract", "a.vma", "-v", "dir", "-d", "x,y"]).unwrap();
        let Command::Extract(a) = cli.command else {
            panic!("not extract")
        };
        assert!(a.verbose);
        assert_eq!(a.file, std::path::PathBuf::from("a.vma"));
        assert_eq!(a.drives, vec!["x,y".to_string()]);
    }

    #[test]
    fn error_text_prints_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::EPIPE);
        let io_text = strerror(libc::EPIPE);
        let e = anyhow::Error::from(vma_format::Error::Read {
            offset: 12288,
            source: io,
        })
        .context("restore failed");
        let text = error_text(&e);
        assert_eq!(text.matches(&io_text).count(), 1, "{text}");
        assert_eq!(
            text,
            format!(
                "restore failed: read error at byte offset 12288 - {}",
                strerror(libc::EPIPE)
            )
        );
        // Causes that add something are all kept.
        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_text(&e), "outer: middle: inner");
    }

    use crate::sys::strerror;

    #[test]
    fn error_text_puts_strerror_last_without_rusts_os_error_suffix() {
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOENT))
            .context("can't open file x.vma");
        assert_eq!(
            error_text(&e),
            format!("can't open file x.vma - {}", strerror(libc::ENOENT))
        );
        // An io::Error whose own message embeds the OS error (writer.rs does).
        let inner = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = anyhow::Error::from(std::io::Error::new(
            inner.kind(),
            format!("write of 4096 bytes at offset 0 failed: {inner}"),
        ))
        .context("can't write out.vma");
        let text = error_text(&e);
        assert_eq!(
            text,
            format!(
                "can't write out.vma: write of 4096 bytes at offset 0 failed - {}",
                strerror(libc::ENOSPC)
            )
        );
        assert!(!text.contains("os error"), "{text}");
        // Text without an OS error is left alone.
        let e = anyhow::anyhow!("bad (os error x) here").context("outer");
        assert_eq!(error_text(&e), "outer: bad (os error x) here");
    }

    #[test]
    fn waiting_on_a_terminal_is_announced_only_for_dash_readers_on_a_tty() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().command;
        for args in [
            &["vma", "list", "-"][..],
            &["vma", "verify", "-"],
            &["vma", "extract", "-", "out"],
            &["vma", "config", "-"],
        ] {
            let note = stdin_note(&parse(args), true).expect("a note on a tty");
            assert!(note.contains("waiting for an archive on standard input"));
            assert_eq!(stdin_note(&parse(args), false), None, "{args:?} piped");
        }
        assert_eq!(stdin_note(&parse(&["vma", "list", "a.vma"]), true), None);
        #[cfg(unix)]
        assert_eq!(stdin_note(&parse(&["vma", "umount", "-"]), true), None);
    }

    #[test]
    fn dash_is_a_file_name() {
        let cli = Cli::try_parse_from(["vma", "list", "-"]).unwrap();
        let Command::List(a) = cli.command else {
            panic!("not list")
        };
        assert_eq!(a.file, std::path::PathBuf::from("-"));
    }
}

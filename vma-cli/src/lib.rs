//! `vma`: a drop-in for Proxmox's `vma` tool (list, config, create, extract,
//! verify) plus `mount`/`umount` of an archive through FUSE, as a library.
//!
//! The binary (`src/main.rs`) is one call to [`main`]; tests and fuzz targets
//! call [`run`] with their own arguments, so they drive the real commands.
//!
//! This file owns the command-line definition (one clap derive tree, also used
//! for shell completions and the man page), dispatch and the error/exit-code
//! convention. Each subcommand lives in its own module.

mod config;
mod create;
mod extract;
mod index;
mod input;
mod interrupt;
mod json_doc;
mod list;
mod listing;
mod mount;
mod outcome;
mod progress;
mod restore_map;
mod verify;
mod writer;

use std::io::Write;
use std::process::ExitCode;

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

const AFTER_HELP: &str = "\
Every reading command accepts a plain, zstd, gzip or lzop compressed archive
(detected by content, not by name), or '-' for standard input. Options may
come before or after the file names.

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
  vma verify -v backup.vma";

/// vma: list, verify, extract, create and mount Proxmox VE VMA backup archives.
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
    /// Restore an archive: configs and disk images into a new directory.
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
    #[command(after_help = "Examples:\n  vma mount backup.vma /mnt/vma\n  \
        vma mount -f -o allow_other backup.vma /mnt/vma\n  vma umount /mnt/vma")]
    Mount(mount::MountArgs),
    /// Unmount an archive mounted with `vma mount`.
    Umount(mount::UmountArgs),
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
    /// Print the man page (roff) to standard output.
    #[command(after_help = "Example:\n  vma manpage > vma.1 && man ./vma.1")]
    Manpage,
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
/// with the process-wide signal handling of [`interrupt`].
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
    // Only for pure output commands is a closed stdout not a failure.
    let pipe_ok = matches!(
        cli.command,
        Command::List(_) | Command::Config(_) | Command::Completions { .. } | Command::Manpage
    );
    // mount forks into a daemon (no threads allowed before) and unmounts on
    // these signals itself.
    if signals && !matches!(cli.command, Command::Mount(_)) {
        interrupt::install();
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
        Command::Extract(a) => extract::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Mount(a) => mount::run_mount(a),
        Command::Umount(a) => mount::run_umount(a),
        Command::Index(a) => index::run(a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vma", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
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

/// The error chain as one line, `outer: cause: …`, skipping a cause whose
/// text is already part of what was printed: vma-format's I/O errors (and
/// many `io::Error` wrappers) embed their source in their own message and
/// also expose it as `source()`, which `{:#}` would print twice.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
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
        let io_text = io.to_string();
        let e = anyhow::Error::from(vma_format::Error::Read {
            offset: 12288,
            source: io,
        })
        .context("restore failed");
        let text = error_text(&e);
        assert_eq!(text.matches(&io_text).count(), 1, "{text}");
        assert!(text.starts_with("restore failed: read error at byte offset 12288: "));
        // Causes that add something are all kept.
        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_text(&e), "outer: middle: inner");
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

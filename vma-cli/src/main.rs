//! The `vma` binary: everything lives in the `vma_cli` library.

fn main() -> std::process::ExitCode {
    vma_cli::main()
}

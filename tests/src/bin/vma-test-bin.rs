//! The `vma` program, built inside this test package so that its integration
//! tests get it as `CARGO_BIN_EXE_vma-test-bin` (cargo gives a test only its
//! own package's binaries). Same code as `vma-cli`'s `vma`: one library call.

fn main() -> std::process::ExitCode {
    vma_cli::main()
}

//! `taskctl`: command-line client and demo for taskrouter (see `docs/TASKCTL.md`).

fn main() -> std::process::ExitCode {
    taskctl::main()
}

//! The `aihost` binary. Everything it does is in the library (`cli.rs` parses the command line);
//! keeping this file empty of logic lets the library keep its items crate-private.

fn main() -> std::process::ExitCode {
    aihost::cli::main()
}

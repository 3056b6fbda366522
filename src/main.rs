fn main() -> std::process::ExitCode {
    stocksync::ops::cli::main()
}

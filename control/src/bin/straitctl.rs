fn main() -> std::process::ExitCode {
    strait_control::cli::main()
}

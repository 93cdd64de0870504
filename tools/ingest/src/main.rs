fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-ingest", ft_ingest::run)
}

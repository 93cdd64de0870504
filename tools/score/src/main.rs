fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-score", ft_score::run)
}

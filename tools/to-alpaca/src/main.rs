fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-to-alpaca", ft_to_alpaca::run)
}

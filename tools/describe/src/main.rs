fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-describe", ft_describe::run)
}

fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-fetch", ft_fetch::run)
}

fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-filter", ft_filter::run)
}

fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-generate", ft_generate::run)
}

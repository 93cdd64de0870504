fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-chunk", ft_chunk::run)
}

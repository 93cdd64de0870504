fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-split", ft_split::run)
}

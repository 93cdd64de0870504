fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-merge-export", ft_merge_export::run)
}

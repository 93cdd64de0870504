fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-catalog-to-manifest", ft_catalog_to_manifest::run)
}

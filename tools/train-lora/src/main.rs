fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-train-lora", ft_train_lora::run)
}

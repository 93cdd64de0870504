fn main() -> std::process::ExitCode {
    ftkit_model::runtime::tune_for_cpu_training();
    ftkit_core::run_main("ft-train-lora", ft_train_lora::run)
}

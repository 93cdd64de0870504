fn main() -> std::process::ExitCode {
    // SAFETY: nothing has started a thread yet.
    #[allow(unsafe_code)]
    unsafe {
        ftkit_model::runtime::tune_for_cpu_training()
    };
    ftkit_core::run_main("ft-train-lora", ft_train_lora::run)
}

fn main() -> std::process::ExitCode {
    ftkit_core::run_main("ft-qa-synth", ft_qa_synth::run)
}

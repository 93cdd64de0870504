//! Chat templates → Ollama Modelfiles, per family (golden files), and a template no family
//! renders like (an error that names it).
#![allow(clippy::unwrap_used)]

use ft_merge_export::modelfile::{Family, Translation};
use ftkit_model::ChatTemplate;
use ftkit_model::fixtures::LLAMA3_TEMPLATE;
use ftkit_testkit::{golden, testdata};

/// OpenHermes-style ChatML, no system prompt of its own.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Mistral-7B-Instruct-v0.1's template.
const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

/// Gemma's: a family we do not translate.
const GEMMA: &str = "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";

fn translate(source: &str, bos: Option<&str>, eos: Option<&str>) -> anyhow::Result<Translation> {
    let tmpl = ChatTemplate::new(source, bos, eos)?;
    Translation::translate(&tmpl, bos, Some(source))
}

#[test]
fn each_family_gives_its_modelfile() {
    // Qwen2.5-Instruct's template, tool sections included (Apache-2.0, as Qwen ships it).
    let qwen =
        std::fs::read_to_string(testdata("merge-export", "qwen2.5-chat-template.jinja")).unwrap();
    for (name, source, bos, eos, family) in [
        ("chatml", CHATML, None, Some("<|im_end|>"), Family::ChatMl),
        (
            "qwen",
            qwen.as_str(),
            None,
            Some("<|im_end|>"),
            Family::Qwen,
        ),
        (
            "llama3",
            LLAMA3_TEMPLATE,
            Some("<|begin_of_text|>"),
            Some("<|eot_id|>"),
            Family::Llama3,
        ),
        (
            "mistral",
            MISTRAL,
            Some("<s>"),
            Some("</s>"),
            Family::Mistral,
        ),
    ] {
        let t = translate(source, bos, eos).unwrap();
        assert_eq!(t.family, family, "{name}");
        let text = t.modelfile("./model.gguf", None, None);
        golden::check(
            &testdata("merge-export", &format!("{name}.Modelfile")),
            text.as_bytes(),
        );
    }
}

#[test]
fn a_template_of_no_known_family_is_an_error_naming_it() {
    let err = format!(
        "{:#}",
        translate(GEMMA, Some("<bos>"), Some("<eos>")).unwrap_err()
    );
    assert!(
        err.contains("<start_of_turn>") && err.contains("none we can translate"),
        "{err}"
    );
    // ChatML without the newline after each turn is not ChatML as Ollama's template writes it.
    let off = CHATML.replace("'<|im_end|>' + '\\n'", "'<|im_end|>'");
    assert!(translate(&off, None, None).is_err());
}

#[test]
fn adapter_and_system_lines() {
    let t = translate(CHATML, None, None).unwrap();
    let text = t.modelfile(
        "/models/base.gguf",
        Some("./adapter.gguf"),
        Some("Say \"\"\"hi\"\"\"."),
    );
    assert!(
        text.starts_with("FROM /models/base.gguf\nADAPTER ./adapter.gguf\nTEMPLATE \"\"\""),
        "{text}"
    );
    assert!(
        text.ends_with("SYSTEM \"\"\"Say \\\"\\\"\\\"hi\\\"\\\"\\\".\"\"\"\n"),
        "{text}"
    );
}

//! ft-to-alpaca: QA records (or any records, with a field mapping) into training formats.

pub mod field;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use field::{render, require_text, text_at};
use ftkit_core::chunks::load_chunks;
use ftkit_core::io::Output;
use ftkit_core::template::Template;
use ftkit_core::{CommonArgs, Engine, ObjectWriter, RawRecord, usage};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// {"instruction","input","output"} (+ "system").
    Alpaca,
    /// {"messages":[{"role","content"}]} (OpenAI / ChatML style).
    Messages,
    /// {"conversations":[{"from","value"}]} with human/gpt (and system).
    Sharegpt,
    /// CLaRa stage 1: {"data_type":"qa","question":[..],"answers":[..],"docs":[..]}.
    ClaraPretrain,
    /// CLaRa stage 2: {"data_type":"instruction","instruction","input","output","docs":[..]}.
    ClaraInstruction,
    /// CLaRa stage 3: {"data_type":"end_to_end","question":[..],"context":[..],"answer"}.
    ClaraE2e,
}

impl Format {
    fn is_clara(self) -> bool {
        matches!(
            self,
            Format::ClaraPretrain | Format::ClaraInstruction | Format::ClaraE2e
        )
    }
}

const LONG_ABOUT: &str = "\
Turns QA records (question, answer, optional context or docs) or any records, through a field mapping, \
into one training format per line.

Fields are dotted paths (a.b.0: objects by key, arrays by index; a top-level key holding the dots \
wins). The instruction is --instruction-field (default question) or --template with {field} \
placeholders (\\n, \\t and \\\\ are a newline, a tab and a backslash; {{ and }} literal braces, as in \
ft-ingest --template); the input is --input-field (default context; \
empty when absent; --input-field '' for none) or --input-template; the output is --output-field (default answer). A field may be \
a string or a list of strings (joined by blank lines). A missing instruction or output is an error \
naming the line (or a reject under --on-error skip).

Documents for the CLaRa formats: the --docs-field (default docs; a list of strings or one string), else \
the text of the chunk named by the record's chunk_id in --chunks FILE (ft-chunk output), else the \
input field; none of them is an error.

Every field other than the instruction, input, output and docs fields (named by the --*-field \
options) is kept under \"meta\" in input order (id, doc_id, chunk_id, score, ...), unless --strip-meta. \
In the CLaRa formats, a question or answer field that holds a list of strings stays a list.

Formats (keys in this order):
  alpaca             instruction, input, output, system (with --system), meta
  messages           messages [system?, user, assistant], meta; the user turn is the instruction,
                     then a blank line and the input when there is one
  sharegpt           conversations [system?, human, gpt] as {\"from\",\"value\"}, meta
  clara-pretrain     data_type \"qa\", question [q], answers [a], docs [..], meta
  clara-instruction  data_type \"instruction\", instruction, input, output, docs [..], meta
  clara-e2e          data_type \"end_to_end\", question [q], context [..], answer, meta";

const EXAMPLE: &str = "\
Examples:
  ft-filter --min-score 7 scored.jsonl | ft-split --out-dir splits
  ft-to-alpaca --system 'You answer questions about our docs.' splits/train.jsonl -o train.alpaca.jsonl
  ft-to-alpaca --format messages --strip-meta splits/train.jsonl > train.messages.jsonl
  ft-to-alpaca --format clara-pretrain --chunks chunks.jsonl qa.jsonl > pretrain_data.jsonl
  ft-to-alpaca --template 'Summarise: {title}' --output-field summary --input-field text docs.jsonl";

#[derive(Parser, Debug)]
#[command(name = "ft-to-alpaca", version, about = "Turn QA records into alpaca, messages, sharegpt or CLaRa training records",
    long_about = LONG_ABOUT, after_long_help = EXAMPLE)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Alpaca, value_name = "FORMAT")]
    pub format: Format,

    /// Field holding the instruction (the question).
    #[arg(long, value_name = "FIELD", default_value = "question")]
    pub instruction_field: String,

    /// Field holding the input (optional in the record).
    #[arg(long, value_name = "FIELD", default_value = "context")]
    pub input_field: String,

    /// Field holding the output (the answer).
    #[arg(long, value_name = "FIELD", default_value = "answer")]
    pub output_field: String,

    /// Build the instruction from this template instead of --instruction-field: `{field}` placeholders,
    /// `\n` `\t` `\\` escapes, `{{` `}}` braces.
    #[arg(long, value_name = "TEXT")]
    pub template: Option<String>,

    /// Build the input from this template instead of --input-field (same syntax as --template).
    #[arg(long, value_name = "TEXT")]
    pub input_template: Option<String>,

    /// Field holding the documents for the CLaRa formats.
    #[arg(long, value_name = "FIELD", default_value = "docs")]
    pub docs_field: String,

    /// Chunk records (id, text) whose text becomes the documents of the records naming them.
    #[arg(long, value_name = "FILE")]
    pub chunks: Option<PathBuf>,

    /// Field of a record naming its chunk in --chunks.
    #[arg(long, value_name = "FIELD", default_value = "chunk_id")]
    pub chunk_key: String,

    /// System prompt (alpaca, messages, sharegpt).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    /// Do not keep the other fields under "meta".
    #[arg(long)]
    pub strip_meta: bool,
}

struct Converter {
    format: Format,
    instruction_field: String,
    input_field: String,
    output_field: String,
    template: Option<Template>,
    input_template: Option<Template>,
    docs_field: String,
    chunks: Option<HashMap<String, String>>,
    chunk_key: String,
    system: Option<String>,
    strip_meta: bool,
}

impl Converter {
    fn docs<'a>(&'a self, rec: &RawRecord<'a>, input: &str) -> Result<Vec<Cow<'a, str>>> {
        if let Some(raw) = rec.lookup(&self.docs_field)?
            && raw.get() != "null"
        {
            let text = raw.get();
            if text.starts_with('"') {
                return Ok(vec![Cow::Owned(serde_json::from_str::<String>(text)?)]);
            }
            return match serde_json::from_str::<Vec<String>>(text) {
                Ok(list) => Ok(list.into_iter().map(Cow::Owned).collect()),
                Err(_) => bail!("field \"{}\" is not a list of strings", self.docs_field),
            };
        }
        if let Some(chunks) = &self.chunks {
            let Some(id) = text_at(rec, &self.chunk_key)? else {
                bail!(
                    "missing field \"{}\" (needed to find the chunk in --chunks)",
                    self.chunk_key
                );
            };
            return match chunks.get(id.as_ref()) {
                Some(text) => Ok(vec![Cow::Borrowed(text.as_str())]),
                None => bail!("chunk {id:?} is not in --chunks"),
            };
        }
        if !input.is_empty() {
            return Ok(vec![Cow::Owned(input.to_string())]);
        }
        bail!(
            "missing field \"{}\" (the documents; or give --chunks, or an input field)",
            self.docs_field
        )
    }

    /// A CLaRa list field: the record's list of strings as it is when the field holds one (and no
    /// template replaces it), else the one text.
    fn list(&self, rec: &RawRecord<'_>, field: &str, text: &str) -> Result<Vec<String>> {
        let templated = field == self.instruction_field && self.template.is_some();
        if !templated
            && let Some(raw) = rec.lookup(field)?
            && raw.get().starts_with('[')
        {
            return Ok(serde_json::from_str(raw.get())?);
        }
        Ok(vec![text.to_string()])
    }

    fn convert(&self, line: &str, out: &mut Vec<u8>) -> Result<()> {
        let rec = RawRecord::parse(line)?;
        let instruction = match &self.template {
            Some(t) => Cow::Owned(render(t, &rec)?),
            None => require_text(&rec, &self.instruction_field)?,
        };
        let input = match &self.input_template {
            Some(t) => Cow::Owned(render(t, &rec)?),
            None => text_at(&rec, &self.input_field)?.unwrap_or(Cow::Borrowed("")),
        };
        let output = require_text(&rec, &self.output_field)?;
        let docs = if self.format.is_clara() {
            self.docs(&rec, &input)?
        } else {
            Vec::new()
        };

        let mut w = ObjectWriter::new(out);
        let system = self.system.as_deref();
        match self.format {
            Format::Alpaca => {
                w.str("instruction", &instruction)
                    .str("input", &input)
                    .str("output", &output);
                if let Some(s) = system {
                    w.str("system", s);
                }
            }
            Format::Messages => {
                let user = user_turn(&instruction, &input);
                let mut turns = Vec::new();
                if let Some(s) = system {
                    turns.push(Message {
                        role: "system",
                        content: s,
                    });
                }
                turns.push(Message {
                    role: "user",
                    content: &user,
                });
                turns.push(Message {
                    role: "assistant",
                    content: &output,
                });
                w.value("messages", &turns);
            }
            Format::Sharegpt => {
                let user = user_turn(&instruction, &input);
                let mut turns = Vec::new();
                if let Some(s) = system {
                    turns.push(Turn {
                        from: "system",
                        value: s,
                    });
                }
                turns.push(Turn {
                    from: "human",
                    value: &user,
                });
                turns.push(Turn {
                    from: "gpt",
                    value: &output,
                });
                w.value("conversations", &turns);
            }
            Format::ClaraPretrain => {
                w.str("data_type", "qa")
                    .value(
                        "question",
                        &self.list(&rec, &self.instruction_field, &instruction)?,
                    )
                    .value("answers", &self.list(&rec, &self.output_field, &output)?)
                    .value("docs", &docs);
            }
            Format::ClaraInstruction => {
                w.str("data_type", "instruction")
                    .str("instruction", &instruction)
                    .str("input", &input)
                    .str("output", &output)
                    .value("docs", &docs);
            }
            Format::ClaraE2e => {
                w.str("data_type", "end_to_end")
                    .value(
                        "question",
                        &self.list(&rec, &self.instruction_field, &instruction)?,
                    )
                    .value("context", &docs)
                    .str("answer", &output);
            }
        }
        if !self.strip_meta {
            let used = [
                self.instruction_field.as_str(),
                self.input_field.as_str(),
                self.output_field.as_str(),
                self.docs_field.as_str(),
            ];
            let mut meta = Vec::new();
            let mut m = ObjectWriter::new(&mut meta);
            let mut any = false;
            for (k, v) in rec.others(&used) {
                m.raw(k, v);
                any = true;
            }
            m.end();
            if any {
                meta.truncate(meta.len() - 1); // ObjectWriter::end adds "}\n"
                let raw: &serde_json::value::RawValue =
                    serde_json::from_slice(&meta).context("meta is not valid JSON")?;
                w.raw("meta", raw);
            }
        }
        w.end();
        Ok(())
    }
}

#[derive(serde::Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(serde::Serialize)]
struct Turn<'a> {
    from: &'a str,
    value: &'a str,
}

fn user_turn(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.format.is_clara() && args.system.is_some() {
        usage!(
            "--system applies to alpaca, messages and sharegpt, not {:?}",
            args.format
        );
    }
    let parse_template = |flag: &str, t: &Option<String>| -> Result<Option<Template>> {
        t.as_deref()
            .map(|t| Template::parse(t).with_context(|| flag.to_string()))
            .transpose()
    };
    let (template, input_template) = match (
        parse_template("--template", &args.template),
        parse_template("--input-template", &args.input_template),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => usage!("{e:#}"),
    };
    let chunks = args
        .chunks
        .as_deref()
        .map(|p| load_chunks(&p.display().to_string()))
        .transpose()?;
    let converter = Converter {
        format: args.format,
        instruction_field: args.instruction_field.clone(),
        input_field: args.input_field.clone(),
        output_field: args.output_field.clone(),
        template,
        input_template,
        docs_field: args.docs_field.clone(),
        chunks,
        chunk_key: args.chunk_key.clone(),
        system: args.system.clone(),
        strip_meta: args.strip_meta,
    };
    let mut engine = Engine::new(&args.common)?;
    let mut out = Output::create(args.common.run.output.as_deref())?;
    engine.map(&mut out, |_, line, buf| converter.convert(line, buf))?;
    out.finish()?;
    engine.finish()?;
    Ok(())
}

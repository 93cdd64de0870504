//! ft-filter: keep the records that pass field predicates, drop exact and near duplicates.
//!
//! Predicates run in parallel; dedup runs in input order, so the first of a set of duplicates is the
//! one kept, whatever `--threads` says. Kept records are written byte for byte as they came.

pub mod dedup;
pub mod field;
pub mod predicate;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use dedup::{ExactSet, Lsh, MinHasher};
use ftkit_core::cli::warn;
use ftkit_core::io::Output;
use ftkit_core::{CommonArgs, Engine, ObjectWriter, RawRecord, usage};
use predicate::Where;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DedupMode {
    /// Same normalised text (lowercased, whitespace collapsed).
    Exact,
    /// Near duplicates: MinHash over word shingles with LSH banding.
    Minhash,
}

const LONG_ABOUT: &str = "\
Keeps the JSONL records that pass every predicate given, and drops duplicates.

Predicates: --min-score (reads score.overall unless --score-field says otherwise), --where 'FIELD OP \
VALUE' (repeatable, all must hold; OP is ==, !=, <, <=, >, >=, contains or matches; FIELD may be a \
dotted path such as score.overall or tags.0, see ftkit(7); VALUE is JSON when it parses as a JSON scalar, else bare text), \
--min-chars/--max-chars on a text field, --lang on a language field. A missing or null field fails \
every --where operator except != (and '== null' matches it), fails --min-score and --lang.

Dedup runs after the predicates, on the records that passed them, and keeps the first record in input \
order. Its text is the --dedup-fields (default: question and answer when the record has either, else \
text), lowercased with whitespace collapsed. A record that lacks one of these fields (or has it null) is \
an error naming the field, like a malformed line: never a duplicate by an empty key. 'exact' drops \
records whose text was seen before; 'minhash' drops records whose MinHash signature (word shingles, \
--num-perm permutations) shares an LSH band with a kept record, with bands and rows chosen for \
--threshold as datasketch's MinHashLSH chooses them (printed on stderr). Memory grows with the kept records only: 16 bytes each for exact, \
8 bytes per band for minhash.

Kept records are written unchanged. --rejects FILE receives, in input order, every dropped record with \
a \"reject_reason\" field added (min_score, where: EXPR, min_chars, max_chars, lang, duplicate_exact, \
duplicate_minhash) and, under --on-error skip, every unreadable input line verbatim. A summary \
(kept, dropped per reason) goes to stderr unless --quiet.";

const EXAMPLE: &str = "\
Examples:
  ft-score qa.jsonl | ft-filter --min-score 7 --where 'verdict == pass' --dedup minhash > curated.jsonl
  ft-filter --where 'lang == en' --min-chars 40 --chars-field answer --rejects dropped.jsonl qa.jsonl
  ft-filter --dedup exact --dedup-fields text chunks.jsonl.zst -o unique.jsonl.zst";

#[derive(Parser, Debug)]
#[command(name = "ft-filter", version, about = "Keep records that pass field predicates; drop exact and near duplicates",
    long_about = LONG_ABOUT, after_long_help = EXAMPLE)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Keep records whose score is at least X.
    #[arg(long, value_name = "X")]
    pub min_score: Option<f64>,

    /// Field (dotted path) holding the score for --min-score.
    #[arg(long, value_name = "FIELD", default_value = "score.overall")]
    pub score_field: String,

    /// Keep records where 'FIELD OP VALUE' holds (repeatable: all must hold).
    #[arg(long = "where", value_name = "EXPR")]
    pub wheres: Vec<String>,

    /// Keep records whose --chars-field has at least N characters.
    #[arg(long, value_name = "N")]
    pub min_chars: Option<usize>,

    /// Keep records whose --chars-field has at most N characters.
    #[arg(long, value_name = "N")]
    pub max_chars: Option<usize>,

    /// Field measured by --min-chars/--max-chars [default: text when present, else answer].
    #[arg(long, value_name = "FIELD")]
    pub chars_field: Option<String>,

    /// Keep records in these languages (comma-separated or repeated).
    #[arg(long, value_name = "LANG", value_delimiter = ',')]
    pub lang: Vec<String>,

    /// Field holding the language for --lang.
    #[arg(long, value_name = "FIELD", default_value = "lang")]
    pub lang_field: String,

    /// Drop duplicates, keeping the first in input order.
    #[arg(long, value_enum, value_name = "MODE")]
    pub dedup: Option<DedupMode>,

    /// Fields whose text is compared by --dedup (comma-separated) [default: question,answer when
    /// present, else text].
    #[arg(long, value_name = "FIELDS", value_delimiter = ',')]
    pub dedup_fields: Vec<String>,

    /// Jaccard similarity from which --dedup minhash counts records as duplicates [default: 0.8].
    #[arg(long, value_name = "T")]
    pub threshold: Option<f64>,

    /// MinHash permutations.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub num_perm: usize,

    /// Words per shingle for --dedup minhash.
    #[arg(long, value_name = "K", default_value_t = 3)]
    pub shingle_size: usize,
}

/// Why a record was dropped, in summary order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    MinScore,
    Where(usize),
    MinChars,
    MaxChars,
    Lang,
    DuplicateExact,
    DuplicateMinhash,
}

enum DedupKey {
    None,
    Exact(u128),
    Bands(Vec<u64>),
}

enum Verdict {
    Keep(DedupKey),
    Drop(Reason),
    /// An unreadable line: copied verbatim to --rejects, then handed to the --on-error policy.
    Bad(anyhow::Error),
}

struct Filter {
    min_score: Option<f64>,
    score_field: String,
    wheres: Vec<Where>,
    min_chars: Option<usize>,
    max_chars: Option<usize>,
    chars_field: Option<String>,
    langs: Vec<String>,
    lang_field: String,
    dedup: Option<DedupMode>,
    dedup_fields: Vec<String>,
    minhash: Option<(MinHasher, usize, usize)>,
}

/// The fixed seed of the MinHash permutations.
const MINHASH_SEED: u64 = 0x6674_6b69_745f_6d68;

impl Filter {
    /// Position of a reason in the summary (and in the drop counters).
    fn reason_index(&self, reason: Reason) -> usize {
        let w = self.wheres.len();
        match reason {
            Reason::MinScore => 0,
            Reason::Where(i) => 1 + i,
            Reason::MinChars => 1 + w,
            Reason::MaxChars => 2 + w,
            Reason::Lang => 3 + w,
            Reason::DuplicateExact => 4 + w,
            Reason::DuplicateMinhash => 5 + w,
        }
    }

    /// Every reason, in summary order.
    fn reasons(&self) -> Vec<Reason> {
        let mut all = vec![Reason::MinScore];
        all.extend((0..self.wheres.len()).map(Reason::Where));
        all.extend([
            Reason::MinChars,
            Reason::MaxChars,
            Reason::Lang,
            Reason::DuplicateExact,
            Reason::DuplicateMinhash,
        ]);
        all
    }

    fn reason_name(&self, reason: Reason) -> String {
        match reason {
            Reason::MinScore => "min_score".into(),
            Reason::Where(i) => format!("where: {}", self.wheres[i].text),
            Reason::MinChars => "min_chars".into(),
            Reason::MaxChars => "max_chars".into(),
            Reason::Lang => "lang".into(),
            Reason::DuplicateExact => "duplicate_exact".into(),
            Reason::DuplicateMinhash => "duplicate_minhash".into(),
        }
    }

    fn judge(&self, line: &str) -> Result<Verdict> {
        let rec = RawRecord::parse(line)?;
        if let Some(min) = self.min_score {
            let score = match rec.lookup(&self.score_field)? {
                None => None,
                Some(raw) => match field::Val::of(raw)? {
                    field::Val::Null => None,
                    field::Val::Num(n) => Some(n),
                    field::Val::Str(s) => match s.trim().parse::<f64>() {
                        Ok(n) => Some(n),
                        Err(_) => bail!(
                            "field \"{}\" is not a number: {}",
                            self.score_field,
                            raw.get()
                        ),
                    },
                    _ => bail!(
                        "field \"{}\" is not a number: {}",
                        self.score_field,
                        raw.get()
                    ),
                },
            };
            if !score.is_some_and(|s| s >= min) {
                return Ok(Verdict::Drop(Reason::MinScore));
            }
        }
        for (i, w) in self.wheres.iter().enumerate() {
            if !w.eval(&rec)? {
                return Ok(Verdict::Drop(Reason::Where(i)));
            }
        }
        if self.min_chars.is_some() || self.max_chars.is_some() {
            let text = match &self.chars_field {
                Some(f) => rec.text_at(f)?,
                None => match rec.text_at("text")? {
                    Some(t) => Some(t),
                    None => rec.text_at("answer")?,
                },
            };
            let n = text.map_or(0, |t| t.chars().count());
            if self.min_chars.is_some_and(|m| n < m) {
                return Ok(Verdict::Drop(Reason::MinChars));
            }
            if self.max_chars.is_some_and(|m| n > m) {
                return Ok(Verdict::Drop(Reason::MaxChars));
            }
        }
        if !self.langs.is_empty() {
            let lang = rec.text_at(&self.lang_field)?;
            if !lang.is_some_and(|l| self.langs.iter().any(|want| want == l.as_ref())) {
                return Ok(Verdict::Drop(Reason::Lang));
            }
        }
        let Some(mode) = self.dedup else {
            return Ok(Verdict::Keep(DedupKey::None));
        };
        // A missing field is an error, never an empty key: with an empty key every record lacking the
        // field (or every record, under a misspelt --dedup-fields) would be a duplicate of the first.
        let mut text = String::new();
        let add = |name: &str, text: &mut String| -> Result<()> {
            match rec.text_at(name)? {
                Some(v) => dedup::normalise_into(&v, text),
                None => bail!("--dedup: field \"{name}\" is missing or null"),
            }
            text.push('\u{1f}');
            Ok(())
        };
        if self.dedup_fields.is_empty() {
            if rec.get("question").is_some() || rec.get("answer").is_some() {
                add("question", &mut text)?;
                add("answer", &mut text)?;
            } else {
                add("text", &mut text)?;
            }
        } else {
            for f in &self.dedup_fields {
                add(f, &mut text)?;
            }
        }
        Ok(Verdict::Keep(match (mode, &self.minhash) {
            (DedupMode::Minhash, Some((hasher, bands, rows))) => {
                // Fields are separated by a space for shingling: a shingle may span two fields.
                let words = text.replace('\u{1f}', " ");
                let sig = hasher.signature(&hasher.shingles(&words));
                DedupKey::Bands(dedup::band_keys(&sig, *bands, *rows))
            }
            _ => DedupKey::Exact(dedup::exact_key(&text)),
        }))
    }
}

/// `line` with `"reject_reason"` set (any earlier one replaced), as one JSONL line.
fn with_reason(line: &[u8], reason: &str, buf: &mut Vec<u8>) -> Result<()> {
    // Only dropped records come here: checking their UTF-8 again costs little.
    let rec = RawRecord::parse(std::str::from_utf8(line)?)?;
    let mut w = ObjectWriter::new(buf);
    for (k, v) in rec.others(&["reject_reason"]) {
        w.raw(k, v);
    }
    w.str("reject_reason", reason);
    w.end();
    Ok(())
}

fn build(args: &Args) -> Result<Filter> {
    let mut wheres = Vec::new();
    for expr in &args.wheres {
        match Where::parse(expr) {
            Ok(w) => wheres.push(w),
            Err(e) => usage!("{e:#}"),
        }
    }
    if let (Some(lo), Some(hi)) = (args.min_chars, args.max_chars)
        && lo > hi
    {
        usage!("--min-chars {lo} is greater than --max-chars {hi}");
    }
    if args.chars_field.is_some() && args.min_chars.is_none() && args.max_chars.is_none() {
        usage!("--chars-field needs --min-chars or --max-chars");
    }
    if args.dedup.is_none() && !args.dedup_fields.is_empty() {
        usage!("--dedup-fields needs --dedup");
    }
    let minhash = match args.dedup {
        Some(DedupMode::Minhash) => {
            let threshold = args.threshold.unwrap_or(0.8);
            if !(threshold > 0.0 && threshold < 1.0) {
                usage!("--threshold must be between 0 and 1 (exclusive), got {threshold}");
            }
            if args.num_perm < 2 || args.num_perm > 1024 {
                usage!(
                    "--num-perm must be between 2 and 1024, got {}",
                    args.num_perm
                );
            }
            if args.shingle_size == 0 {
                usage!("--shingle-size must be at least 1");
            }
            let (bands, rows) = dedup::optimal_params(threshold, args.num_perm);
            if !args.common.run.quiet {
                warn(format!(
                    "minhash: threshold {threshold}, {} permutations, {bands} bands x {rows} rows, {}-word shingles",
                    args.num_perm, args.shingle_size
                ));
            }
            Some((
                MinHasher::new(args.num_perm, args.shingle_size, MINHASH_SEED),
                bands,
                rows,
            ))
        }
        _ => {
            if args.threshold.is_some() {
                usage!("--threshold needs --dedup minhash");
            }
            None
        }
    };
    Ok(Filter {
        min_score: args.min_score,
        score_field: args.score_field.clone(),
        wheres,
        min_chars: args.min_chars,
        max_chars: args.max_chars,
        chars_field: args.chars_field.clone(),
        langs: args.lang.clone(),
        lang_field: args.lang_field.clone(),
        dedup: args.dedup,
        dedup_fields: args.dedup_fields.clone(),
        minhash,
    })
}

pub fn run(args: Args) -> Result<()> {
    let filter = build(&args)?;
    // One --rejects file for both kinds, in input order: the engine copies unreadable lines (bad
    // JSON, invalid UTF-8) into it, this tool adds the records it drops.
    let mut engine = Engine::new(&args.common)?;
    let rejects = engine.rejects();
    let mut out = Output::create(args.common.run.output.as_deref())?;

    let reasons = filter.reasons();
    let mut dropped = vec![0u64; reasons.len()];
    let kept: u64;
    if filter.dedup.is_none() && rejects.is_none() {
        // Stateless: a parallel ordered map, no sequential pass over the lines.
        let counters: Vec<AtomicU64> = reasons.iter().map(|_| AtomicU64::new(0)).collect();
        let kept_counter = AtomicU64::new(0);
        engine.map(&mut out, |_, line, buf| {
            match filter.judge(line)? {
                Verdict::Drop(reason) => {
                    counters[filter.reason_index(reason)].fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Bad(err) => return Err(err),
                Verdict::Keep(_) => {
                    kept_counter.fetch_add(1, Ordering::Relaxed);
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                }
            }
            Ok(())
        })?;
        kept = kept_counter.into_inner();
        for (d, c) in dropped.iter_mut().zip(counters) {
            *d = c.into_inner();
        }
    } else {
        let mut exact = ExactSet::default();
        let mut lsh = filter
            .minhash
            .as_ref()
            .map(|(_, bands, _)| Lsh::new(*bands));
        let mut kept_count: u64 = 0;
        let mut buf = Vec::new();
        engine.scan(
            |_, line| Ok(filter.judge(line).unwrap_or_else(Verdict::Bad)),
            |_, line, verdict| {
                let verdict = match verdict {
                    Verdict::Keep(DedupKey::None) => None,
                    Verdict::Keep(DedupKey::Exact(key)) => {
                        (!exact.insert(key)).then_some(Reason::DuplicateExact)
                    }
                    Verdict::Keep(DedupKey::Bands(keys)) => match &mut lsh {
                        Some(index) => {
                            (!index.insert_if_new(&keys)).then_some(Reason::DuplicateMinhash)
                        }
                        None => None,
                    },
                    Verdict::Drop(reason) => Some(reason),
                    // The engine's policy copies the line to --rejects.
                    Verdict::Bad(err) => return Err(err),
                };
                match verdict {
                    None => {
                        kept_count += 1;
                        out.write_all(line)?;
                        out.write_all(b"\n")?;
                    }
                    Some(reason) => {
                        dropped[filter.reason_index(reason)] += 1;
                        if let Some(file) = &rejects {
                            buf.clear();
                            with_reason(line, &filter.reason_name(reason), &mut buf)?;
                            file.write_all(&buf)?;
                        }
                    }
                }
                Ok(())
            },
        )?;
        kept = kept_count;
    }
    out.finish()?;
    drop(rejects);
    engine.finish()?;
    if !args.common.run.quiet {
        let total: u64 = dropped.iter().sum();
        let mut line = format!("kept {kept} of {} records", kept + total);
        if total > 0 {
            let parts: Vec<String> = reasons
                .iter()
                .zip(&dropped)
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| format!("{} {n}", filter.reason_name(*r)))
                .collect();
            line.push_str(&format!("; dropped {total}: {}", parts.join(", ")));
        }
        warn(line);
    }
    Ok(())
}

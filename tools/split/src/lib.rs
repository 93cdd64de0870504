//! ft-split: deterministic splits by a stable hash.
//!
//! A record's split depends only on its key (or group) value and the seed, never on the other records
//! or their order: `u = first 8 bytes of stable_id([seed, value]) / 2^64`, a number uniform in [0, 1),
//! falls into the split whose cumulative ratio range holds it. Caps keep the records of lowest *rank*
//! (`stable_id([seed, "rank", value])`, the group's for --group-by, then the record key's), so the
//! records kept do not depend on input order either, and memory stays bounded by the caps.

pub mod hash;

use anyhow::{Context, Result, bail};
use clap::Parser;
use ftkit_core::cli::warn;
use ftkit_core::io::{Output, write_atomic};
use ftkit_core::{CommonArgs, Engine, ObjectWriter, RawRecord, usage};
use std::borrow::Cow;
use std::collections::{BinaryHeap, HashSet};
use std::io::Write;
use std::path::PathBuf;

const LONG_ABOUT: &str = "\
Assigns every record to a split (train, val, test by default) by a stable hash of its --key value \
(default id) and --seed, or of its --group-by value, so that a whole group (a document) stays in one \
split. The split of a record depends on nothing else: adding, removing or reordering records never \
moves another record.

The hash: u = the first 16 hex digits of stable_id([SEED, VALUE]) read as an integer, divided by 2^64 \
(stable_id is the first 16 bytes of SHA-256 over each part followed by 0x1F); a string value is used \
as its contents, any other value as its JSON text. The record goes to the first split whose cumulative \
ratio exceeds u.

Without --out-dir, records go to stdout with a \"split\" field added (last; an earlier one is replaced). \
With --out-dir, each split is written unchanged to DIR/NAME.jsonl (.jsonl.zst with --compress), plus \
DIR/split_stats.json (records and distinct groups per split); every file appears only when the run \
succeeds.

Caps: --max-per-split N keeps in each split the N records of lowest rank, --max-total N keeps the N of \
lowest rank overall (after the per-split caps). The rank is stable_id([SEED, \"rank\", VALUE]) of the \
group (with --group-by; groups are then kept or cut whole except at the boundary) and then of the \
record's --key, so the kept set does not depend on input order (records with equal values tie, and \
input order breaks the tie). Capped output keeps input order; it is \
written when the input ends, holding at most the capped records in memory.";

const EXAMPLE: &str = "\
Examples:
  ft-filter --min-score 7 qa.jsonl | ft-split --group-by doc_id --out-dir splits
  ft-split --ratios 0.9,0.1 --names train,eval --seed 7 qa.jsonl > tagged.jsonl
  ft-split --max-per-split 10000 --out-dir sft --compress medicine.jsonl";

#[derive(Parser, Debug)]
#[command(name = "ft-split", version, about = "Split records into train/val/test by a stable hash of a key or group",
    long_about = LONG_ABOUT, after_long_help = EXAMPLE)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Field (dotted path) whose value decides the split.
    #[arg(long, value_name = "FIELD", default_value = "id")]
    pub key: String,

    /// Keep records with the same value of this field in the same split (hashes it instead of --key).
    #[arg(long, value_name = "FIELD")]
    pub group_by: Option<String>,

    /// Seed of the hash: another seed, another split.
    #[arg(long, value_name = "SEED", default_value = "42")]
    pub seed: String,

    /// Split ratios, comma-separated, summing to 1.
    #[arg(
        long,
        value_name = "R,R,..",
        value_delimiter = ',',
        default_value = "0.8,0.1,0.1"
    )]
    pub ratios: Vec<f64>,

    /// Split names, one per ratio [default: train,val,test; train,test for two ratios].
    #[arg(long, value_name = "NAME,..", value_delimiter = ',')]
    pub names: Vec<String>,

    /// Write DIR/NAME.jsonl per split and DIR/split_stats.json instead of tagging records on stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,

    /// With --out-dir: write NAME.jsonl.zst.
    #[arg(long)]
    pub compress: bool,

    /// Keep at most N records per split (those of lowest rank).
    #[arg(long, value_name = "N")]
    pub max_per_split: Option<usize>,

    /// Keep at most N records in all (those of lowest rank).
    #[arg(long, value_name = "N")]
    pub max_total: Option<usize>,
}

/// One parsed record.
struct Item {
    split: usize,
    group: Option<u64>,
    rank: (u64, u64),
    /// The tagged line (stdout mode) or nothing (the input line is written as is).
    tagged: Vec<u8>,
}

/// A record held for a cap: ordered by rank, then input position.
struct Held {
    rank: (u64, u64),
    seq: u64,
    split: usize,
    group: Option<u64>,
    bytes: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.rank, self.seq) == (other.rank, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.rank, self.seq).cmp(&(other.rank, other.seq))
    }
}

/// Pushes into a max-heap bounded to `cap` elements, dropping the largest.
fn push_capped(heap: &mut BinaryHeap<Held>, item: Held, cap: usize) {
    if heap.len() < cap {
        heap.push(item);
    } else if heap.peek().is_some_and(|top| item < *top) {
        heap.pop();
        heap.push(item);
    }
}

#[derive(Default, Clone)]
struct Counts {
    records: u64,
    groups: HashSet<u64>,
}

struct Splitter {
    key: String,
    group_by: Option<String>,
    seed: String,
    bounds: Vec<f64>,
    tag: bool,
    names: Vec<String>,
}

impl Splitter {
    fn item(&self, line: &str) -> Result<Item> {
        let rec = RawRecord::parse(line)?;
        let key = rec.text_at(&self.key)?.map(Cow::into_owned);
        let (split_value, group) = match &self.group_by {
            Some(field) => match rec.text_at(field)? {
                Some(g) => (g.into_owned(), true),
                None => bail!("missing field \"{field}\""),
            },
            None => match &key {
                Some(k) => (k.clone(), false),
                None => bail!("missing field \"{}\"", self.key),
            },
        };
        let u = hash::unit(&self.seed, &split_value);
        let split = self
            .bounds
            .iter()
            .position(|&b| u < b)
            .unwrap_or(self.bounds.len() - 1);
        let group_rank = hash::rank(&self.seed, &split_value);
        let rank = if group {
            (
                group_rank,
                key.as_deref().map_or(0, |k| hash::rank(&self.seed, k)),
            )
        } else {
            (group_rank, 0)
        };
        let mut tagged = Vec::new();
        if self.tag {
            let mut w = ObjectWriter::new(&mut tagged);
            for (k, v) in rec.others(&["split"]) {
                w.raw(k, v);
            }
            w.str("split", &self.names[split]);
            w.end();
        }
        Ok(Item {
            split,
            group: group.then_some(group_rank),
            rank,
            tagged,
        })
    }
}

fn default_names(n: usize) -> Option<Vec<String>> {
    let names: &[&str] = match n {
        1 => &["train"],
        2 => &["train", "test"],
        3 => &["train", "val", "test"],
        _ => return None,
    };
    Some(names.iter().map(|s| s.to_string()).collect())
}

fn check(args: &Args) -> Result<(Vec<String>, Vec<f64>)> {
    if args.ratios.is_empty() || args.ratios.iter().any(|r| !(r.is_finite() && *r >= 0.0)) {
        usage!("--ratios must be non-negative numbers");
    }
    let sum: f64 = args.ratios.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        usage!("--ratios must sum to 1, not {sum}");
    }
    let names = if args.names.is_empty() {
        match default_names(args.ratios.len()) {
            Some(n) => n,
            None => usage!("{} ratios need --names", args.ratios.len()),
        }
    } else {
        args.names.clone()
    };
    if names.len() != args.ratios.len() {
        usage!("{} names for {} ratios", names.len(), args.ratios.len());
    }
    for (i, n) in names.iter().enumerate() {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            usage!("split name {n:?}: use letters, digits, '_' and '-'");
        }
        if names[..i].contains(n) {
            usage!("split name {n:?} given twice");
        }
    }
    if args.out_dir.is_some() && args.common.run.output.is_some() {
        usage!("--out-dir and --output exclude each other");
    }
    if args.compress && args.out_dir.is_none() {
        usage!("--compress needs --out-dir");
    }
    if args.max_per_split == Some(0) || args.max_total == Some(0) {
        usage!("caps must be at least 1");
    }
    let mut acc = 0.0;
    let mut bounds: Vec<f64> = args
        .ratios
        .iter()
        .map(|r| {
            acc += r;
            acc
        })
        .collect();
    if let Some(last) = bounds.last_mut() {
        *last = f64::INFINITY;
    }
    Ok((names, bounds))
}

pub fn run(args: Args) -> Result<()> {
    let (names, bounds) = check(&args)?;
    let splitter = Splitter {
        key: args.key.clone(),
        group_by: args.group_by.clone(),
        seed: args.seed.clone(),
        bounds,
        tag: args.out_dir.is_none(),
        names: names.clone(),
    };
    let ext = if args.compress { "jsonl.zst" } else { "jsonl" };
    if let Some(dir) = &args.out_dir {
        let mut paths = args.common.paths();
        for n in &names {
            paths = paths.output("--out-dir", dir.join(format!("{n}.{ext}")));
        }
        paths
            .output("--out-dir", dir.join("split_stats.json"))
            .check()?;
    }
    let mut engine = Engine::new(&args.common)?;
    let mut outs: Vec<Output> = match &args.out_dir {
        Some(dir) => names
            .iter()
            .map(|n| Output::create(Some(&dir.join(format!("{n}.{ext}")))))
            .collect::<Result<_>>()?,
        None => vec![Output::create(args.common.run.output.as_deref())?],
    };
    let out_index = |split: usize| if args.out_dir.is_some() { split } else { 0 };
    let capped = args.max_per_split.is_some() || args.max_total.is_some();
    let mut heaps: Vec<BinaryHeap<Held>> = match (args.max_per_split, args.max_total) {
        (Some(_), _) => (0..names.len()).map(|_| BinaryHeap::new()).collect(),
        (None, Some(_)) => vec![BinaryHeap::new()],
        _ => Vec::new(),
    };
    let mut counts = vec![Counts::default(); names.len()];
    let mut seen: Vec<u64> = vec![0; names.len()];
    let mut seq: u64 = 0;

    engine.scan(
        |_, line| splitter.item(line),
        |_, line, item| {
            seq += 1;
            seen[item.split] += 1;
            let bytes = if splitter.tag {
                item.tagged
            } else {
                let mut b = Vec::with_capacity(line.len() + 1);
                b.extend_from_slice(line);
                b.push(b'\n');
                b
            };
            if capped {
                let held = Held {
                    rank: item.rank,
                    seq,
                    split: item.split,
                    group: item.group,
                    bytes,
                };
                match args.max_per_split {
                    Some(n) => push_capped(&mut heaps[item.split], held, n),
                    None => push_capped(&mut heaps[0], held, args.max_total.unwrap_or(usize::MAX)),
                }
                return Ok(());
            }
            let c = &mut counts[item.split];
            c.records += 1;
            if let Some(g) = item.group {
                c.groups.insert(g);
            }
            outs[out_index(item.split)].write_all(&bytes)?;
            Ok(())
        },
    )?;

    if capped {
        let mut kept: Vec<Held> = heaps.into_iter().flat_map(BinaryHeap::into_vec).collect();
        if let (Some(total), Some(_)) = (args.max_total, args.max_per_split)
            && kept.len() > total
        {
            kept.sort_unstable();
            kept.truncate(total);
        }
        kept.sort_unstable_by_key(|h| h.seq);
        for h in kept {
            let c = &mut counts[h.split];
            c.records += 1;
            if let Some(g) = h.group {
                c.groups.insert(g);
            }
            outs[out_index(h.split)].write_all(&h.bytes)?;
        }
    }
    for out in outs {
        out.finish()?;
    }
    engine.finish()?;

    if let Some(dir) = &args.out_dir {
        let splits: Vec<serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut s = serde_json::json!({
                    "name": n,
                    "file": format!("{n}.{ext}"),
                    "ratio": args.ratios[i],
                    "records": counts[i].records,
                    "capped": seen[i] - counts[i].records,
                });
                if args.group_by.is_some() {
                    s["groups"] = serde_json::json!(counts[i].groups.len());
                }
                s
            })
            .collect();
        let stats = serde_json::json!({
            "seed": args.seed,
            "key": args.key,
            "group_by": args.group_by,
            "max_per_split": args.max_per_split,
            "max_total": args.max_total,
            "records_in": seq,
            "records_out": counts.iter().map(|c| c.records).sum::<u64>(),
            "splits": splits,
        });
        let mut bytes = serde_json::to_vec_pretty(&stats)?;
        bytes.push(b'\n');
        write_atomic(&dir.join("split_stats.json"), &bytes).context("split_stats.json")?;
    }
    if !args.common.run.quiet {
        let parts: Vec<String> = names
            .iter()
            .zip(&counts)
            .map(|(n, c)| match &args.group_by {
                Some(_) => format!("{n} {} ({} groups)", c.records, c.groups.len()),
                None => format!("{n} {}", c.records),
            })
            .collect();
        let dropped = seq - counts.iter().map(|c| c.records).sum::<u64>();
        let capped_note = if dropped > 0 {
            format!("; {dropped} over the caps")
        } else {
            String::new()
        };
        warn(format!(
            "{} (seed {}){capped_note}",
            parts.join(", "),
            args.seed
        ));
    }
    Ok(())
}

//! The shapes a constrained reply may take, and their compiled form (a table of nodes the
//! automaton in [`super::automaton`] walks).

use anyhow::{Result, bail, ensure};

/// A small JSON schema: objects with a fixed key order (every key required), strings with a
/// length cap, non-negative numbers in a range, enums of strings, arrays with item bounds.
/// Key order is fixed and no whitespace is allowed between tokens, so each shape has one
/// spelling per value: fewer ways for a small model to wander, and the cheapest close is known.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// `{"k1":v1,"k2":v2}`: every key present, in this order.
    Object(Vec<(String, Shape)>),
    /// A string whose JSON body (between the quotes, escapes included) has at most `max_len`
    /// bytes; `wordy`: at least one letter or digit (what `ftkit_llm::parse` asks of pairs).
    String { max_len: usize, wordy: bool },
    /// A number `min..=max` (non-negative integers), with up to `frac_digits` decimals
    /// (`8.5`; never above `max`, no exponent, no leading zeros).
    Number { min: u32, max: u32, frac_digits: u8 },
    /// One of these strings, exactly.
    Enum(Vec<String>),
    /// `[item,...]` with `min..=max` items.
    Array {
        items: Box<Shape>,
        min: usize,
        max: usize,
    },
}

impl Shape {
    pub fn object(fields: &[(&str, Shape)]) -> Shape {
        Shape::Object(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    pub fn string(max_len: usize) -> Shape {
        Shape::String {
            max_len,
            wordy: false,
        }
    }

    /// A string holding at least one letter or digit: small models copy a prompt's `"..."`.
    pub fn wordy_string(max_len: usize) -> Shape {
        Shape::String {
            max_len,
            wordy: true,
        }
    }

    pub fn integer(min: u32, max: u32) -> Shape {
        Shape::Number {
            min,
            max,
            frac_digits: 0,
        }
    }

    pub fn array(items: Shape, min: usize, max: usize) -> Shape {
        Shape::Array {
            items: Box::new(items),
            min,
            max,
        }
    }

    /// ft-qa-synth's reply, `{"pairs":[{"question":"..","answer":".."}]}` with 1..=`max_pairs`
    /// pairs and wordy strings of at most `max_len` bytes: what `ftkit_llm::parse::qa_pairs`
    /// accepts without its leniency (it drops blank pairs and fails when none is left).
    pub fn qa_pairs(max_pairs: usize, max_len: usize) -> Shape {
        let pair = Shape::object(&[
            ("question", Shape::wordy_string(max_len)),
            ("answer", Shape::wordy_string(max_len)),
        ]);
        Shape::object(&[("pairs", Shape::array(pair, 1, max_pairs.max(1)))])
    }

    /// ft-score's judge reply: five scores 1-10 (one decimal allowed, as `8.5`) and a rationale
    /// of at most `max_rationale` bytes, in the order of the judge prompt and
    /// `ftkit_llm::parse::judgement`.
    pub fn judge_scores(max_rationale: usize) -> Shape {
        let score = Shape::Number {
            min: 1,
            max: 10,
            frac_digits: 1,
        };
        Shape::object(&[
            ("relevance", score.clone()),
            ("accuracy", score.clone()),
            ("clarity", score.clone()),
            ("grounding", score.clone()),
            ("overall", score),
            ("rationale", Shape::string(max_rationale)),
        ])
    }
}

/// Deepest nesting the automaton's fixed stack holds.
pub(crate) const MAX_DEPTH: usize = 8;

pub(crate) enum Node {
    /// `lits[f]` is written before field `f` (`{"key":` / `,"key":`), `lits[n]` closes (`}`, or
    /// `{}` for no field); `tail[f]`: fewest bytes from the start of `lits[f]` to the end.
    Object {
        lits: Vec<Vec<u8>>,
        children: Vec<u16>,
        tail: Vec<u32>,
    },
    Str {
        max: u16,
        wordy: bool,
    },
    Num {
        min: u32,
        max: u32,
        frac: u8,
        min_digits: u8,
        max_digits: u8,
    },
    /// JSON-encoded options, quotes included: prefix-free, since only the last quote is bare.
    Enum {
        opts: Vec<Vec<u8>>,
    },
    Array {
        item: u16,
        min: u16,
        max: u16,
    },
}

pub(crate) struct Compiled {
    pub nodes: Vec<Node>,
    /// Fewest bytes of a complete value of each node.
    pub min_bytes: Vec<u32>,
    /// Bytes some closing path may need as a token of their own.
    pub literal_bytes: Vec<u8>,
}

fn digits(x: u32) -> u8 {
    x.to_string().len() as u8
}

pub(crate) fn compile(shape: &Shape) -> Result<Compiled> {
    ensure!(
        matches!(shape, Shape::Object(_) | Shape::Array { .. }),
        "a constrained json value must be an object or an array"
    );
    let mut c = Compiled {
        nodes: Vec::new(),
        min_bytes: Vec::new(),
        literal_bytes: Vec::new(),
    };
    add(&mut c, shape, 1)?;
    c.literal_bytes.sort_unstable();
    c.literal_bytes.dedup();
    Ok(c)
}

fn small(x: usize, what: &str) -> Result<u16> {
    u16::try_from(x)
        .ok()
        .filter(|&v| v < u16::MAX)
        .ok_or_else(|| anyhow::anyhow!("{what} {x} is too large"))
}

fn add(c: &mut Compiled, shape: &Shape, depth: usize) -> Result<u16> {
    ensure!(
        depth <= MAX_DEPTH,
        "json shape nested deeper than {MAX_DEPTH}"
    );
    let (node, min) = match shape {
        Shape::Object(fields) => {
            let mut lits = Vec::new();
            let mut children = Vec::new();
            let mut child_min = Vec::new();
            for (i, (key, value)) in fields.iter().enumerate() {
                if fields[..i].iter().any(|(k, _)| k == key) {
                    bail!("json shape repeats the key {key:?}");
                }
                let mut lit = if i == 0 { b"{".to_vec() } else { b",".to_vec() };
                lit.extend(serde_json::to_vec(key)?);
                lit.push(b':');
                c.literal_bytes.extend(&lit);
                lits.push(lit);
                let child = add(c, value, depth + 1)?;
                child_min.push(c.min_bytes[child as usize]);
                children.push(child);
            }
            lits.push(if fields.is_empty() {
                b"{}".to_vec()
            } else {
                b"}".to_vec()
            });
            let mut tail = vec![lits[fields.len()].len() as u32];
            for f in (0..fields.len()).rev() {
                let t = tail[0] + lits[f].len() as u32 + child_min[f];
                tail.insert(0, t);
            }
            let min = tail[0];
            (
                Node::Object {
                    lits,
                    children,
                    tail,
                },
                min,
            )
        }
        Shape::String { max_len, wordy } => {
            let max = small(*max_len, "string length")?;
            ensure!(
                !wordy || max >= 1,
                "a wordy string needs a max length of at least 1"
            );
            (Node::Str { max, wordy: *wordy }, 2 + *wordy as u32)
        }
        Shape::Number {
            min,
            max,
            frac_digits,
        } => {
            ensure!(min <= max, "number range {min}..={max} is empty");
            ensure!(*frac_digits <= 9, "at most 9 decimals");
            let n = Node::Num {
                min: *min,
                max: *max,
                frac: *frac_digits,
                min_digits: digits(*min),
                max_digits: digits(*max),
            };
            (n, digits(*min) as u32)
        }
        Shape::Enum(options) => {
            ensure!(
                !options.is_empty() && options.len() <= 64,
                "an enum needs 1 to 64 options"
            );
            let mut opts: Vec<Vec<u8>> = Vec::new();
            for o in options {
                let enc = serde_json::to_vec(o)?;
                ensure!(!opts.contains(&enc), "enum repeats the option {o:?}");
                c.literal_bytes.extend(&enc);
                opts.push(enc);
            }
            let min = opts.iter().map(|o| o.len() as u32).min().unwrap_or(2);
            (Node::Enum { opts }, min)
        }
        Shape::Array { items, min, max } => {
            ensure!(min <= max, "array bounds {min}..={max} are empty");
            let item = add(c, items, depth + 1)?;
            let mi = c.min_bytes[item as usize];
            let (min, max) = (small(*min, "array length")?, small(*max, "array length")?);
            let bytes = if min == 0 {
                2
            } else {
                2 + min as u32 * mi + (min as u32 - 1)
            };
            (Node::Array { item, min, max }, bytes)
        }
    };
    c.nodes.push(node);
    c.min_bytes.push(min);
    small(c.nodes.len() - 1, "json shape node count")
}

//! Constrained decoding of JSON: at every step, only the tokens that keep the output a prefix of
//! a value of a [`Shape`] (and that still leave room to close it within the token budget).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use ftkit_model::constrain::{JsonConstraint, Shape, TokenBytes};
//! # let tok: tokenizers::Tokenizer = todo!(); let eos_id = 0; let vocab_len = 0;
//! let vocab = TokenBytes::from_tokenizer(&tok, &[eos_id])?;
//! let constraint = JsonConstraint::new(&Shape::qa_pairs(3, 400), &vocab)?; // once per run
//! let mut state = constraint.start(); // once per sequence
//! let mut mask = vec![false; vocab_len]; // the model's vocabulary, padding included
//! let max_new_tokens = 256;
//! for step in 0..max_new_tokens {
//!     state.allowed(max_new_tokens - step, &mut mask); // logits[i] = -inf where !mask[i]
//!     # let token = 0;
//!     if state.is_eos(token) { break; }
//!     state.advance(token)?;
//! }
//! assert!(state.is_complete()); // guaranteed, whatever the sampler picked among the allowed
//! # Ok(()) }
//! ```
//!
//! The output is written without whitespace and with keys in the shape's order. Decode it from
//! the tokens' bytes ([`ConstraintState::text`] has them), not through a tokenizer decoder that
//! cleans up spaces.

mod automaton;
mod shape;
mod vocab;

pub use shape::Shape;
pub use vocab::TokenBytes;

use anyhow::{Result, bail, ensure};
use automaton::Stack;
use shape::Compiled;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use vocab::Trie;

/// Cached walks at most: each holds a token list, up to the vocabulary's size.
const CACHE_ENTRIES: usize = 2048;

/// The allowed tokens from one automaton state, each with the bytes it leaves to close.
struct Walk {
    ids: Vec<u32>,
    costs: Vec<u32>,
    max_cost: u32,
}

/// A shape compiled against a vocabulary; shared by every sequence generated with it.
pub struct JsonConstraint {
    shape: Compiled,
    root: u16,
    trie: Trie,
    vocab: TokenBytes,
    cache: Mutex<HashMap<Stack, Arc<Walk>>>,
}

impl JsonConstraint {
    pub fn new(shape: &Shape, vocab: &TokenBytes) -> Result<Arc<JsonConstraint>> {
        let compiled = shape::compile(shape)?;
        let root = (compiled.nodes.len() - 1) as u16;
        let trie = Trie::new(vocab);
        // The budget rule counts one token per byte of the cheapest close: each byte it may
        // write needs a token of its own.
        let mut single = [false; 256];
        for id in 0..vocab.len() as u32 {
            if let Some([b]) = vocab.get(id) {
                single[*b as usize] = !vocab.eos().contains(&id);
            }
        }
        let needed = (0x20..=0x7eu8)
            .chain(0x80..=0xbf)
            .chain(compiled.literal_bytes.iter().copied());
        for b in needed {
            if !single[b as usize] {
                bail!(
                    "the vocabulary has no token for the single byte {b:#04x}: constrained json needs a \
                     byte-level vocabulary"
                );
            }
        }
        ensure!(
            !vocab.eos().is_empty(),
            "constrained json needs at least one eos token id"
        );
        Ok(Arc::new(JsonConstraint {
            shape: compiled,
            root,
            trie,
            vocab: vocab.clone(),
            cache: Mutex::default(),
        }))
    }

    /// A fresh state for one sequence.
    pub fn start(self: &Arc<Self>) -> ConstraintState {
        ConstraintState {
            c: self.clone(),
            stack: Stack::new(&self.shape, self.root),
            text: Vec::new(),
        }
    }

    /// The fewest tokens any complete value takes (EOS not counted: a budget that ends on the
    /// complete value needs none): a `max_new_tokens` below it cannot work.
    pub fn min_tokens(&self) -> usize {
        self.shape.min_bytes[self.root as usize] as usize
    }

    /// Every token that continues `stack`, with its close cost (no budget applied).
    fn walk(&self, stack: &Stack) -> Walk {
        let mut w = Walk {
            ids: Vec::new(),
            costs: Vec::new(),
            max_cost: 0,
        };
        let mut todo = vec![(0u32, *stack)];
        while let Some((node, s)) = todo.pop() {
            for &(b, child) in self.trie.edges(node) {
                let mut next = s;
                if !next.feed(&self.shape, b) {
                    continue;
                }
                let ids = self.trie.tokens(child);
                if !ids.is_empty() {
                    let cost = next.close_cost(&self.shape);
                    w.max_cost = w.max_cost.max(cost);
                    for &id in ids {
                        w.ids.push(id);
                        w.costs.push(cost);
                    }
                }
                todo.push((child, next));
            }
        }
        w
    }

    fn cached_walk(&self, stack: &Stack) -> Arc<Walk> {
        let Some(key) = stack.cache_key(&self.shape, self.trie.longest) else {
            return Arc::new(self.walk(stack));
        };
        if let Some(w) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return w;
        }
        let w = Arc::new(self.walk(stack));
        if let Ok(mut c) = self.cache.lock()
            && c.len() < CACHE_ENTRIES
        {
            c.insert(key, w.clone());
        }
        w
    }
}

/// One sequence's progress through a [`JsonConstraint`].
#[derive(Clone)]
pub struct ConstraintState {
    c: Arc<JsonConstraint>,
    stack: Stack,
    text: Vec<u8>,
}

impl ConstraintState {
    /// Marks in `out` (indexed by token id; ids past the vocabulary stay false) the tokens that
    /// may come next when `remaining` tokens may still be generated, this one included: those
    /// that keep the text a prefix of the shape and leave enough budget to close it; EOS only
    /// once the value is complete. Never empty while `remaining` >= [`Self::min_tokens_to_close`]
    /// (one token per byte of the cheapest close); below it, long tokens may still fit, and
    /// whatever is allowed keeps the close within budget.
    pub fn allowed(&self, remaining: usize, out: &mut [bool]) {
        out.fill(false);
        for id in self.allowed_ids(remaining) {
            if let Some(slot) = out.get_mut(id as usize) {
                *slot = true;
            }
        }
    }

    /// [`Self::allowed`] as a list of token ids.
    pub fn allowed_ids(&self, remaining: usize) -> Vec<u32> {
        if remaining == 0 {
            return Vec::new();
        }
        if self.is_complete() {
            return self.c.vocab.eos().to_vec();
        }
        let w = self.c.cached_walk(&self.stack);
        let left = (remaining - 1).min(u32::MAX as usize) as u32;
        if w.max_cost <= left {
            return w.ids.clone();
        }
        w.ids
            .iter()
            .zip(&w.costs)
            .filter(|&(_, &c)| c <= left)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Takes `token` as the next output; an error when it is not one [`Self::allowed`] admits
    /// structurally (the budget is the caller's).
    pub fn advance(&mut self, token: u32) -> Result<()> {
        if self.is_eos(token) {
            ensure!(self.is_complete(), "eos before the json value is complete");
            return Ok(());
        }
        let Some(bytes) = self.c.vocab.get(token) else {
            bail!("token {token} writes no text and cannot continue the json value");
        };
        let mut next = self.stack;
        for &b in bytes {
            if !next.feed(&self.c.shape, b) {
                bail!(
                    "token {token} ({:?}) does not continue the json value after {:?}",
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&self.text)
                );
            }
        }
        self.stack = next;
        self.text.extend_from_slice(bytes);
        Ok(())
    }

    /// The value is complete: only EOS may follow.
    pub fn is_complete(&self) -> bool {
        self.stack.is_complete()
    }

    pub fn is_eos(&self, token: u32) -> bool {
        self.c.vocab.eos().contains(&token)
    }

    /// The budget the cheapest close needs (one token per byte, EOS not counted): [`Self::allowed`]
    /// keeps it at most the remaining budget, so a value started within budget ends within it.
    pub fn min_tokens_to_close(&self) -> usize {
        self.stack.close_cost(&self.c.shape) as usize
    }

    /// The output bytes so far (valid UTF-8 once complete).
    pub fn text(&self) -> &[u8] {
        &self.text
    }
}

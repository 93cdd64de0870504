//! Constrained decoding of JSON: at every step, only the tokens that keep the output a prefix of
//! a value of a [`Shape`] (and that still leave room to close it within the token budget).
//!
//! ```
//! use ftkit_model::constrain::{JsonConstraint, Shape, TokenBytes};
//!
//! /// `sample` picks a token from the logits masked where `mask` is false.
//! fn generate(
//!     tok: &tokenizers::Tokenizer,
//!     eos_id: u32,
//!     model_vocab: usize, // the model's vocabulary, padding included
//!     max_new_tokens: usize,
//!     mut sample: impl FnMut(&[bool]) -> u32,
//! ) -> anyhow::Result<serde_json::Value> {
//!     let vocab = TokenBytes::from_tokenizer(tok, &[eos_id])?;
//!     let constraint = JsonConstraint::new(&Shape::qa_pairs(3, 400), &vocab)?; // once per run
//!     let mut state = constraint.start(); // once per sequence
//!     let mut mask = vec![false; model_vocab];
//!     for step in 0..max_new_tokens {
//!         state.allowed(max_new_tokens - step, &mut mask);
//!         let token = sample(&mask);
//!         if state.is_eos(token) {
//!             break;
//!         }
//!         state.advance(token)?;
//!     }
//!     // Complete whatever the sampler picked among the allowed tokens.
//!     Ok(serde_json::from_slice(state.text())?)
//! }
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

/// Cached walks at most (each a bit set over the vocabulary, 6 KiB at 49k tokens, and a few
/// exceptions).
const CACHE_ENTRIES: usize = 4096;

/// The allowed tokens from one automaton state, each with the bytes it leaves to close: most
/// share one cost (inside a string, all that stay in it), the others are listed by id.
struct Walk {
    bits: Vec<u64>,
    common: u32,
    others: Vec<(u32, u32)>,
    max_cost: u32,
}

impl Walk {
    fn new(vocab_len: usize, mut found: Vec<(u32, u32)>) -> Walk {
        found.sort_unstable();
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for &(_, c) in &found {
            *counts.entry(c).or_default() += 1;
        }
        let common = counts
            .into_iter()
            .max_by_key(|&(c, n)| (n, std::cmp::Reverse(c)))
            .map_or(0, |(c, _)| c);
        let mut bits = vec![0u64; vocab_len.div_ceil(64)];
        for &(id, _) in &found {
            bits[id as usize / 64] |= 1 << (id % 64);
        }
        let max_cost = found.iter().map(|&(_, c)| c).max().unwrap_or(0);
        found.retain(|&(_, c)| c != common);
        Walk {
            bits,
            common,
            others: found,
            max_cost,
        }
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                (word != 0).then(|| {
                    let bit = word.trailing_zeros();
                    word &= word - 1;
                    w as u32 * 64 + bit
                })
            })
        })
    }

    /// The tokens whose close needs at most `left` bytes, in id order.
    fn for_each_within(&self, left: u32, mut f: impl FnMut(u32)) {
        if self.max_cost <= left {
            self.ids().for_each(f);
        } else if self.common <= left {
            // All but the listed ones that cost too much: merge the two id-ordered lists.
            let mut too_dear = self
                .others
                .iter()
                .filter(|&&(_, c)| c > left)
                .map(|&(id, _)| id)
                .peekable();
            for id in self.ids() {
                if too_dear.peek() == Some(&id) {
                    too_dear.next();
                } else {
                    f(id);
                }
            }
        } else {
            self.others
                .iter()
                .filter(|&&(_, c)| c <= left)
                .for_each(|&(id, _)| f(id));
        }
    }
}

/// A shape compiled against a vocabulary; shared by every sequence generated with it.
pub struct JsonConstraint {
    shape: Compiled,
    root: u16,
    trie: Trie,
    /// The tokens that are not [`vocab::is_plain`], for strings' bodies.
    string_trie: Trie,
    /// `(id, byte length, all whitespace)` of the plain tokens.
    plain: Vec<(u32, u16, bool)>,
    vocab: TokenBytes,
    cache: Mutex<HashMap<Stack, Arc<Walk>>>,
}

impl JsonConstraint {
    pub fn new(shape: &Shape, vocab: &TokenBytes) -> Result<Arc<JsonConstraint>> {
        let compiled = shape::compile(shape)?;
        let root = (compiled.nodes.len() - 1) as u16;
        let trie = Trie::new(vocab, |_| true);
        let string_trie = Trie::new(vocab, |b| !vocab::is_plain(b));
        let mut plain = Vec::new();
        for id in 0..vocab.len() as u32 {
            if let Some(b) = vocab
                .get(id)
                .filter(|b| vocab::is_plain(b) && !vocab.eos().contains(&id))
            {
                let blank =
                    std::str::from_utf8(b).is_ok_and(|s| !s.chars().any(char::is_alphanumeric));
                plain.push((id, b.len().min(u16::MAX as usize) as u16, blank));
            }
        }
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
            string_trie,
            plain,
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
        let mut found = Vec::new();
        // In a string's body most tokens just extend it: decided from their length and
        // wordiness, so the automaton walks only the others.
        let trie = match stack.string_body(&self.shape) {
            Some((len, wordy, max, need_word)) => {
                // What the enclosing values need once the string is closed.
                let outer = stack.close_cost(&self.shape) - 1 - (need_word && !wordy) as u32;
                for &(id, n, blank) in &self.plain {
                    let wordy = wordy || !blank;
                    let owed = (need_word && !wordy) as u32;
                    if len as u32 + n as u32 + owed <= max as u32 {
                        found.push((id, outer + 1 + owed));
                    }
                }
                &self.string_trie
            }
            None => &self.trie,
        };
        let mut todo = vec![(0u32, *stack)];
        while let Some((node, s)) = todo.pop() {
            for &(b, child) in trie.edges(node) {
                let mut next = s;
                if !next.feed(&self.shape, b) {
                    continue;
                }
                let ids = trie.tokens(child);
                if !ids.is_empty() {
                    let cost = next.close_cost(&self.shape);
                    found.extend(ids.iter().map(|&id| (id, cost)));
                }
                todo.push((child, next));
            }
        }
        Walk::new(self.vocab.len(), found)
    }

    fn cached_walk(&self, stack: &Stack) -> Arc<Walk> {
        let key = stack.cache_key(&self.shape, self.trie.longest);
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
        self.for_each_allowed(remaining, |id| {
            if let Some(slot) = out.get_mut(id as usize) {
                *slot = true;
            }
        });
    }

    /// [`Self::allowed`] as a list of token ids.
    pub fn allowed_ids(&self, remaining: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        self.for_each_allowed(remaining, |id| ids.push(id));
        ids
    }

    fn for_each_allowed(&self, remaining: usize, mut f: impl FnMut(u32)) {
        if remaining == 0 {
            return;
        }
        if self.is_complete() {
            self.c.vocab.eos().iter().for_each(|&id| f(id));
            return;
        }
        let left = (remaining - 1).min(u32::MAX as usize) as u32;
        self.c.cached_walk(&self.stack).for_each_within(left, f);
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

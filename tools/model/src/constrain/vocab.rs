//! The bytes each token id writes, and a trie over them so one walk of the automaton tests the
//! whole vocabulary.

use anyhow::{Result, anyhow};
use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

/// A token that, inside a string's body, stays there whatever came before: whole UTF-8
/// characters, no quote, backslash or control character.
pub(crate) fn is_plain(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| !s.chars().any(|c| c == '"' || c == '\\' || c < ' '))
}

/// The output bytes of every token id (`None`: a token that writes no text we can constrain,
/// like `<|im_end|>`), and the ids that end generation.
#[derive(Clone, Debug)]
pub struct TokenBytes {
    bytes: Vec<Option<Vec<u8>>>,
    eos: Vec<u32>,
}

/// GPT-2's byte ↔ printable-character table that byte-level BPE vocabularies are written in.
/// `tokenizers` keeps its copy private (`pre_tokenizers::byte_level::bytes_char`) and its
/// decoder goes through a lossy UTF-8 string, which loses tokens that end inside a character.
fn byte_level_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        table[b as usize] = if printable {
            b as char
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

fn has_byte_level_decoder(d: &DecoderWrapper) -> bool {
    match d {
        DecoderWrapper::ByteLevel(_) => true,
        DecoderWrapper::Sequence(s) => s.get_decoders().iter().any(has_byte_level_decoder),
        _ => false,
    }
}

impl TokenBytes {
    /// From explicit bytes (index = token id).
    pub fn new(bytes: Vec<Option<Vec<u8>>>, eos: Vec<u32>) -> TokenBytes {
        TokenBytes { bytes, eos }
    }

    /// From a `tokenizers` vocabulary: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM) through
    /// the byte table; otherwise SentencePiece conventions (`▁` is a space, `<0x0A>` a byte).
    /// Added special tokens write nothing here; `eos` ends generation.
    pub fn from_tokenizer(tok: &Tokenizer, eos: &[u32]) -> Result<TokenBytes> {
        let byte_level = tok.get_decoder().is_some_and(has_byte_level_decoder);
        let mut to_byte = std::collections::HashMap::new();
        for (b, c) in byte_level_chars().into_iter().enumerate() {
            to_byte.insert(c, b as u8);
        }
        let specials = tok.get_added_tokens_decoder();
        let n = tok.get_vocab_size(true);
        let mut bytes = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let special = specials.get(&id).is_some_and(|t| t.special);
            let Some(text) = tok.id_to_token(id).filter(|_| !special) else {
                bytes.push(None);
                continue;
            };
            let b = if specials.contains_key(&id) {
                // A non-special added token is written as it reads.
                Some(text.into_bytes())
            } else if byte_level {
                text.chars()
                    .map(|c| to_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
            } else if let Some(hex) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
                u8::from_str_radix(hex, 16).ok().map(|b| vec![b])
            } else {
                Some(text.replace('\u{2581}', " ").into_bytes())
            };
            bytes.push(b.filter(|b| !b.is_empty()));
        }
        if let Some(&bad) = eos.iter().find(|&&e| e as usize >= n) {
            return Err(anyhow!(
                "eos token id {bad} is outside the vocabulary of {n}"
            ));
        }
        Ok(TokenBytes {
            bytes,
            eos: eos.to_vec(),
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn get(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)?.as_deref()
    }

    pub fn eos(&self) -> &[u32] {
        &self.eos
    }
}

/// A byte trie over the vocabulary, stored flat: node `i`'s edges are
/// `edges[edge_start[i]..edge_start[i + 1]]`, the tokens ending there
/// `tokens[token_start[i]..token_start[i + 1]]`.
pub(crate) struct Trie {
    pub edge_start: Vec<u32>,
    pub edges: Vec<(u8, u32)>,
    pub token_start: Vec<u32>,
    pub tokens: Vec<u32>,
    pub longest: usize,
}

impl Trie {
    /// Over the tokens `keep` admits (EOS never).
    pub fn new(vocab: &TokenBytes, keep: impl Fn(&[u8]) -> bool) -> Trie {
        // Build with maps, then flatten: the vocabulary is read once per constraint.
        let mut children: Vec<std::collections::BTreeMap<u8, u32>> = vec![Default::default()];
        let mut ends: Vec<Vec<u32>> = vec![Vec::new()];
        let mut longest = 0;
        for id in 0..vocab.len() as u32 {
            let Some(bytes) = vocab.get(id) else { continue };
            if vocab.eos.contains(&id) || !keep(bytes) {
                continue;
            }
            longest = longest.max(bytes.len());
            let mut node = 0usize;
            for &b in bytes {
                let next = children.len() as u32;
                let child = *children[node].entry(b).or_insert(next);
                if child == next {
                    children.push(Default::default());
                    ends.push(Vec::new());
                }
                node = child as usize;
            }
            ends[node].push(id);
        }
        let mut t = Trie {
            edge_start: vec![0],
            edges: Vec::new(),
            token_start: vec![0],
            tokens: Vec::new(),
            longest,
        };
        for (c, e) in children.iter().zip(&ends) {
            t.edges.extend(c.iter().map(|(&b, &n)| (b, n)));
            t.edge_start.push(t.edges.len() as u32);
            t.tokens.extend(e);
            t.token_start.push(t.tokens.len() as u32);
        }
        t
    }

    pub fn edges(&self, node: u32) -> &[(u8, u32)] {
        &self.edges
            [self.edge_start[node as usize] as usize..self.edge_start[node as usize + 1] as usize]
    }

    pub fn tokens(&self, node: u32) -> &[u32] {
        &self.tokens
            [self.token_start[node as usize] as usize..self.token_start[node as usize + 1] as usize]
    }
}

//! A byte-level pushdown automaton over a compiled [`super::shape`]: which bytes may come next,
//! and the fewest bytes that complete the value from here.

use super::shape::{Compiled, MAX_DEPTH, Node};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum ArrStage {
    Open,
    /// After `[`.
    First,
    /// After an item.
    AfterItem,
    /// After `,`, or an item in progress above this frame.
    Item,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum StrStage {
    Open,
    Body,
    /// After a backslash.
    Esc,
    /// `\u` and `done` hex digits (value so far in `cp`).
    Hex {
        done: u8,
        cp: u32,
    },
    /// Inside a multi-byte UTF-8 character: `need` continuation bytes, the next in `lo..=hi`.
    Utf8 {
        need: u8,
        lo: u8,
        hi: u8,
        cp: u32,
    },
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Inside `lits[field]` at `pos`; when `field`'s value is on the stack above, `pos` is the
    /// literal's length.
    Obj { node: u16, field: u16, pos: u16 },
    /// `count` items completed.
    Arr {
        node: u16,
        count: u16,
        stage: ArrStage,
    },
    /// `len` body bytes so far; `wordy`: a letter or digit was written.
    Str {
        node: u16,
        len: u16,
        stage: StrStage,
        wordy: bool,
    },
    /// Integer part `int` with `digits` digits; `frac`: 0 no dot, 1 dot, 1 + k decimals.
    Num {
        node: u16,
        int: u64,
        digits: u8,
        frac: u8,
    },
    /// `pos` bytes matched of the options in the `alive` bit set.
    Enum { node: u16, pos: u16, alive: u64 },
}

const EMPTY: Frame = Frame::Obj {
    node: 0,
    field: 0,
    pos: 0,
};

/// The automaton's configuration: a fixed stack, so copies are cheap and it can be hashed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Stack {
    frames: [Frame; MAX_DEPTH],
    depth: u8,
}

fn initial(c: &Compiled, node: u16) -> Frame {
    match &c.nodes[node as usize] {
        Node::Object { .. } => Frame::Obj {
            node,
            field: 0,
            pos: 0,
        },
        Node::Array { .. } => Frame::Arr {
            node,
            count: 0,
            stage: ArrStage::Open,
        },
        Node::Str { .. } => Frame::Str {
            node,
            len: 0,
            stage: StrStage::Open,
            wordy: false,
        },
        Node::Num { .. } => Frame::Num {
            node,
            int: 0,
            digits: 0,
            frac: 0,
        },
        Node::Enum { opts } => {
            let alive = if opts.len() == 64 {
                u64::MAX
            } else {
                (1u64 << opts.len()) - 1
            };
            Frame::Enum {
                node,
                pos: 0,
                alive,
            }
        }
    }
}

/// What a required string must hold at least one of (`"..."` or `" - "` say nothing).
fn is_word(cp: u32) -> bool {
    char::from_u32(cp).is_some_and(char::is_alphanumeric)
}

/// Whether some number in `min..=max` spells `int` (of `n` digits) followed by more digits, and
/// the fewest more digits it takes.
fn extra_digits(int: u64, n: u8, min: u32, max: u32, max_digits: u8) -> Option<u8> {
    if n == 1 && int == 0 {
        // "0" takes no further digit.
        return (min == 0).then_some(0);
    }
    let mut scale = 1u64;
    for extra in 0..=max_digits.saturating_sub(n) {
        let lo = int * scale;
        let hi = (int + 1) * scale - 1;
        if lo <= max as u64 && hi >= min as u64 {
            return Some(extra);
        }
        scale *= 10;
    }
    None
}

impl Stack {
    pub fn new(c: &Compiled, root: u16) -> Stack {
        let mut frames = [EMPTY; MAX_DEPTH];
        frames[0] = initial(c, root);
        Stack { frames, depth: 1 }
    }

    pub fn is_complete(&self) -> bool {
        self.depth == 0
    }

    fn push(&mut self, f: Frame) -> bool {
        if self.depth as usize == MAX_DEPTH {
            return false;
        }
        self.frames[self.depth as usize] = f;
        self.depth += 1;
        true
    }

    /// Pops the finished top frame and tells its parent that its value is done.
    fn pop(&mut self) {
        self.depth -= 1;
        self.frames[self.depth as usize] = EMPTY;
        let Some(parent) = self.depth.checked_sub(1) else {
            return;
        };
        match &mut self.frames[parent as usize] {
            Frame::Obj { field, pos, .. } => {
                *field += 1;
                *pos = 0;
            }
            Frame::Arr { count, stage, .. } => {
                *count += 1;
                *stage = ArrStage::AfterItem;
            }
            _ => {}
        }
    }

    /// Consumes one byte; false when it cannot continue a value of the shape (the stack is then
    /// unspecified: callers feed a copy).
    pub fn feed(&mut self, c: &Compiled, b: u8) -> bool {
        loop {
            let Some(top) = self.depth.checked_sub(1) else {
                return false;
            };
            let frame = &mut self.frames[top as usize];
            match frame {
                Frame::Obj { node, field, pos } => {
                    let Node::Object { lits, children, .. } = &c.nodes[*node as usize] else {
                        return false;
                    };
                    let lit = &lits[*field as usize];
                    if lit.get(*pos as usize) != Some(&b) {
                        return false;
                    }
                    *pos += 1;
                    if *pos as usize == lit.len() {
                        if let Some(&child) = children.get(*field as usize) {
                            return self.push(initial(c, child));
                        }
                        self.pop();
                    }
                    return true;
                }
                Frame::Arr { node, count, stage } => {
                    let Node::Array { item, min, max } = c.nodes[*node as usize] else {
                        return false;
                    };
                    match *stage {
                        ArrStage::Open => {
                            *stage = ArrStage::First;
                            return b == b'[';
                        }
                        ArrStage::First if b == b']' => {
                            if min > 0 {
                                return false;
                            }
                            self.pop();
                            return true;
                        }
                        ArrStage::AfterItem => {
                            if b == b',' && *count < max {
                                *stage = ArrStage::Item;
                                return true;
                            }
                            if b == b']' && *count >= min {
                                self.pop();
                                return true;
                            }
                            return false;
                        }
                        ArrStage::First | ArrStage::Item => {
                            if *count >= max {
                                return false;
                            }
                            *stage = ArrStage::Item;
                            if !self.push(initial(c, item)) {
                                return false;
                            }
                            // The item's first byte: go round again.
                        }
                    }
                }
                Frame::Str {
                    node,
                    len,
                    stage,
                    wordy,
                } => {
                    let Node::Str {
                        max,
                        wordy: need_word,
                    } = c.nodes[*node as usize]
                    else {
                        return false;
                    };
                    match *stage {
                        StrStage::Open => {
                            *stage = StrStage::Body;
                            return b == b'"';
                        }
                        StrStage::Body => match b {
                            b'"' => {
                                if need_word && !*wordy {
                                    return false;
                                }
                                self.pop();
                                return true;
                            }
                            b'\\' => *stage = StrStage::Esc,
                            0..=0x1f => return false,
                            0x20..=0x7f => *wordy |= b.is_ascii_alphanumeric(),
                            0xc2..=0xdf => {
                                *stage = StrStage::Utf8 {
                                    need: 1,
                                    lo: 0x80,
                                    hi: 0xbf,
                                    cp: (b & 0x1f) as u32,
                                }
                            }
                            0xe0..=0xef => {
                                let (lo, hi) = match b {
                                    0xe0 => (0xa0, 0xbf),
                                    0xed => (0x80, 0x9f), // no surrogates
                                    _ => (0x80, 0xbf),
                                };
                                *stage = StrStage::Utf8 {
                                    need: 2,
                                    lo,
                                    hi,
                                    cp: (b & 0x0f) as u32,
                                }
                            }
                            0xf0..=0xf4 => {
                                let (lo, hi) = match b {
                                    0xf0 => (0x90, 0xbf),
                                    0xf4 => (0x80, 0x8f), // up to U+10FFFF
                                    _ => (0x80, 0xbf),
                                };
                                *stage = StrStage::Utf8 {
                                    need: 3,
                                    lo,
                                    hi,
                                    cp: (b & 0x07) as u32,
                                }
                            }
                            _ => return false,
                        },
                        StrStage::Esc => {
                            let ch = match b {
                                b'"' | b'\\' | b'/' => b,
                                b'b' => 0x08,
                                b'f' => 0x0c,
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'u' => 0,
                                _ => return false,
                            };
                            if b == b'u' {
                                *stage = StrStage::Hex { done: 0, cp: 0 };
                            } else {
                                *stage = StrStage::Body;
                                *wordy |= is_word(ch as u32);
                            }
                        }
                        StrStage::Hex { done, cp } => {
                            let Some(v) = (b as char).to_digit(16) else {
                                return false;
                            };
                            // No \uD800-\uDFFF: a lone surrogate is not a string serde_json reads,
                            // and pairing them is not worth it (any character may be written raw).
                            if done == 0 && v == 0xd {
                                return false;
                            }
                            let cp = cp * 16 + v;
                            if done == 3 {
                                *stage = StrStage::Body;
                                *wordy |= is_word(cp);
                            } else {
                                *stage = StrStage::Hex { done: done + 1, cp };
                            }
                        }
                        StrStage::Utf8 { need, lo, hi, cp } => {
                            if !(lo..=hi).contains(&b) {
                                return false;
                            }
                            let cp = (cp << 6) | (b & 0x3f) as u32;
                            if need == 1 {
                                *stage = StrStage::Body;
                                *wordy |= is_word(cp);
                            } else {
                                *stage = StrStage::Utf8 {
                                    need: need - 1,
                                    lo: 0x80,
                                    hi: 0xbf,
                                    cp,
                                };
                            }
                        }
                    }
                    *len += 1;
                    // What the body still needs must fit under the cap.
                    let need = Self::str_body_need(*stage, *wordy, need_word);
                    return (*len as u32 + need) <= max as u32;
                }
                Frame::Num {
                    node,
                    int,
                    digits,
                    frac,
                } => {
                    let Node::Num {
                        min,
                        max,
                        frac: max_frac,
                        max_digits,
                        ..
                    } = c.nodes[*node as usize]
                    else {
                        return false;
                    };
                    match b {
                        b'0'..=b'9' if *frac == 0 => {
                            if *digits == 1 && *int == 0 {
                                return false;
                            }
                            let v = *int * 10 + (b - b'0') as u64;
                            if extra_digits(v, *digits + 1, min, max, max_digits).is_none() {
                                return false;
                            }
                            *int = v;
                            *digits += 1;
                            return true;
                        }
                        b'0'..=b'9' => {
                            if *frac > max_frac {
                                return false;
                            }
                            *frac += 1;
                            return true;
                        }
                        b'.' => {
                            let ok = *frac == 0
                                && *digits > 0
                                && max_frac > 0
                                && *int >= min as u64
                                && *int < max as u64;
                            *frac = 1;
                            return ok;
                        }
                        _ => {
                            let done = *digits > 0
                                && *frac != 1
                                && (min as u64..=max as u64).contains(int);
                            if !done {
                                return false;
                            }
                            self.pop();
                            // The byte belongs to the parent: go round again.
                        }
                    }
                }
                Frame::Enum { node, pos, alive } => {
                    let Node::Enum { opts } = &c.nodes[*node as usize] else {
                        return false;
                    };
                    let mut next = 0u64;
                    let mut done = false;
                    for (i, o) in opts.iter().enumerate() {
                        if *alive & (1 << i) != 0 && o.get(*pos as usize) == Some(&b) {
                            next |= 1 << i;
                            done |= o.len() == *pos as usize + 1;
                        }
                    }
                    if next == 0 {
                        return false;
                    }
                    *alive = next;
                    *pos += 1;
                    if done {
                        self.pop();
                    }
                    return true;
                }
            }
        }
    }

    /// For a string in its body (no escape or character pending): its length, whether it is
    /// wordy, its cap and whether it must be.
    pub fn string_body(&self, c: &Compiled) -> Option<(u16, bool, u16, bool)> {
        let top = self.depth.checked_sub(1)?;
        match self.frames[top as usize] {
            Frame::Str {
                node,
                len,
                stage: StrStage::Body,
                wordy,
            } => match c.nodes[node as usize] {
                Node::Str { max, wordy: need } => Some((len, wordy, max, need)),
                _ => None,
            },
            _ => None,
        }
    }

    fn str_body_need(stage: StrStage, wordy: bool, need_word: bool) -> u32 {
        match stage {
            StrStage::Open => 0,
            StrStage::Body => (need_word && !wordy) as u32,
            // What is pending may not end up a letter or digit: one more byte (an ASCII letter)
            // is owed then. An upper bound, and one byte less after each cheapest step.
            StrStage::Esc => 1 + (need_word && !wordy) as u32,
            StrStage::Hex { done, .. } => 4 - done as u32 + (need_word && !wordy) as u32,
            StrStage::Utf8 { need, .. } => need as u32 + (need_word && !wordy) as u32,
        }
    }

    /// The fewest bytes that complete the value from here (each one a token of its own, at
    /// worst): the bound the token budget is checked against.
    pub fn close_cost(&self, c: &Compiled) -> u32 {
        let depth = self.depth as usize;
        let mut total = 0;
        for (i, f) in self.frames[..depth].iter().enumerate() {
            let top = i + 1 == depth;
            total += match *f {
                Frame::Obj { node, field, pos } => {
                    let Node::Object { tail, .. } = &c.nodes[node as usize] else {
                        continue;
                    };
                    if top {
                        tail[field as usize] - pos as u32
                    } else {
                        tail[field as usize + 1]
                    }
                }
                Frame::Arr { node, count, stage } => {
                    let Node::Array { item, min, .. } = c.nodes[node as usize] else {
                        continue;
                    };
                    let mi = c.min_bytes[item as usize];
                    let (min, count) = (min as u32, count as u32);
                    // Items still owed after `done` complete ones, then `]`.
                    let rest = |done: u32| min.saturating_sub(done) * (1 + mi) + 1;
                    match (top, stage) {
                        (false, _) => rest(count + 1),
                        (true, ArrStage::Open) => c.min_bytes[node as usize],
                        (true, ArrStage::First) => c.min_bytes[node as usize] - 1,
                        (true, ArrStage::AfterItem) => rest(count),
                        (true, ArrStage::Item) => mi + rest(count + 1),
                    }
                }
                Frame::Str {
                    node, stage, wordy, ..
                } => {
                    let Node::Str { wordy: need, .. } = c.nodes[node as usize] else {
                        continue;
                    };
                    match stage {
                        StrStage::Open => 2 + need as u32,
                        s => Self::str_body_need(s, wordy, need) + 1,
                    }
                }
                Frame::Num {
                    node,
                    int,
                    digits,
                    frac,
                } => {
                    let Node::Num {
                        min,
                        max,
                        min_digits,
                        max_digits,
                        ..
                    } = c.nodes[node as usize]
                    else {
                        continue;
                    };
                    match (digits, frac) {
                        (0, _) => min_digits as u32,
                        (_, 1) => 1,
                        (_, 0) => {
                            extra_digits(int, digits, min, max, max_digits).unwrap_or(0) as u32
                        }
                        _ => 0,
                    }
                }
                Frame::Enum { node, pos, alive } => {
                    let Node::Enum { opts } = &c.nodes[node as usize] else {
                        continue;
                    };
                    let left = opts
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| alive & (1 << i) != 0)
                        .map(|(_, o)| o.len() as u32 - pos as u32)
                        .min();
                    left.unwrap_or(0)
                }
            };
        }
        total
    }

    /// The stack as a cache key: a string's length is forgotten while no token of at most
    /// `longest` bytes can reach its cap (near it, the exact length stays: at most `longest` + 8
    /// keys per string), a character's value once it cannot matter.
    pub fn cache_key(&self, c: &Compiled, longest: usize) -> Stack {
        let mut key = *self;
        if let Some(top) = key.depth.checked_sub(1)
            && let Frame::Str {
                node,
                len,
                stage,
                wordy,
            } = &mut key.frames[top as usize]
        {
            if let Node::Str { max, .. } = c.nodes[*node as usize]
                && (*len as usize) + longest + 8 <= max as usize
            {
                *len = u16::MAX;
            }
            if *wordy {
                match stage {
                    StrStage::Hex { cp, .. } | StrStage::Utf8 { cp, .. } => *cp = 0,
                    _ => {}
                }
            }
        }
        key
    }
}

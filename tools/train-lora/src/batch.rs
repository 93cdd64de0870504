//! From tokenised examples to training rows and micro-batches.
//!
//! An [`Encoded`] example is token ids plus, per token, whether the model should learn to predict it
//! (assistant tokens, or every token but the first with `--train-on-prompt`). Examples become [`Row`]s
//! (one example each, or several packed up to `--max-seq-len` with segment ids so no token attends
//! across an example boundary), rows are shuffled per epoch by a seeded generator and cut into
//! micro-batches padded to their longest row.

use ftkit_model::rng::Rng;

/// One tokenised example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// `target[i]`: token `i` is a loss target (predicted from positions `..i`).
    pub target: Vec<bool>,
}

impl Encoded {
    /// Builds an example from the chat encoder's output. `assistant[i]` marks assistant tokens;
    /// with `train_on_prompt` every token but the first is a target.
    pub fn new(ids: Vec<u32>, assistant: Vec<bool>, train_on_prompt: bool) -> Self {
        let target = if train_on_prompt {
            (0..ids.len()).map(|i| i > 0).collect()
        } else {
            assistant
        };
        Self { ids, target }
    }

    /// Number of loss targets (the first token can never be one: nothing predicts it).
    pub fn targets(&self) -> usize {
        self.target.iter().skip(1).filter(|&&t| t).count()
    }

    /// Cuts to `max_len` tokens; true when something was cut.
    pub fn truncate(&mut self, max_len: usize) -> bool {
        if self.ids.len() <= max_len {
            return false;
        }
        self.ids.truncate(max_len);
        self.target.truncate(max_len);
        true
    }
}

/// One sequence of the batch: one example, or several packed ones told apart by `segment`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub ids: Vec<u32>,
    pub target: Vec<bool>,
    /// Example index within the row (0, 0, 0, 1, 1, ...); attention never crosses a change.
    pub segment: Vec<u32>,
    /// Position within its own example (restarts at 0 for every packed example).
    pub position: Vec<u32>,
}

impl Row {
    fn from_examples(examples: &[&Encoded]) -> Self {
        let mut row = Row {
            ids: vec![],
            target: vec![],
            segment: vec![],
            position: vec![],
        };
        for (s, e) in examples.iter().enumerate() {
            row.ids.extend_from_slice(&e.ids);
            // The first token of each example is never a target: the previous token belongs to another example.
            row.target
                .extend(e.target.iter().enumerate().map(|(i, &t)| t && i > 0));
            row.segment
                .extend(std::iter::repeat_n(s as u32, e.ids.len()));
            row.position.extend(0..e.ids.len() as u32);
        }
        row
    }

    pub fn targets(&self) -> usize {
        self.target.iter().filter(|&&t| t).count()
    }
}

/// Turns examples into rows: one each, or packed greedily in order up to `max_len` tokens with `pack`.
pub fn make_rows(examples: &[Encoded], max_len: usize, pack: bool) -> Vec<Row> {
    if !pack {
        return examples.iter().map(|e| Row::from_examples(&[e])).collect();
    }
    let mut rows = Vec::new();
    let mut current: Vec<&Encoded> = Vec::new();
    let mut len = 0;
    for e in examples {
        if !current.is_empty() && len + e.ids.len() > max_len {
            rows.push(Row::from_examples(&current));
            current.clear();
            len = 0;
        }
        current.push(e);
        len += e.ids.len();
    }
    if !current.is_empty() {
        rows.push(Row::from_examples(&current));
    }
    rows
}

/// A padded micro-batch, flattened row-major as `[rows, len]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<u32>,
    pub segment: Vec<u32>,
    pub position: Vec<u32>,
    /// `[rows, len - 1]`: the label predicted at position `t` is `ids[t + 1]`.
    pub labels: Vec<u32>,
    /// `[rows, len - 1]`: 1.0 where the label is a loss target, else 0.0.
    pub weights: Vec<f32>,
    /// Tokens that are not padding.
    pub tokens: usize,
    /// Sum of `weights`.
    pub targets: usize,
    /// Flat indices `row * len + t` of the positions that predict a target (only these need logits).
    pub select: Vec<u32>,
    /// The target predicted at each `select` position.
    pub select_labels: Vec<u32>,
    /// True when a row holds more than one example (the model needs the segment mask).
    pub packed: bool,
}

/// Pads `rows` (with id `pad`, a segment of its own and zero weight) into one batch.
pub fn collate(rows: &[&Row], pad: u32) -> Batch {
    let len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0).max(2);
    let n = rows.len();
    let mut b = Batch {
        rows: n,
        len,
        ids: Vec::with_capacity(n * len),
        segment: Vec::with_capacity(n * len),
        position: Vec::with_capacity(n * len),
        labels: Vec::with_capacity(n * (len - 1)),
        weights: Vec::with_capacity(n * (len - 1)),
        tokens: 0,
        targets: 0,
        select: Vec::new(),
        select_labels: Vec::new(),
        packed: false,
    };
    for (ri, r) in rows.iter().enumerate() {
        let l = r.ids.len();
        b.tokens += l;
        let pad_segment = r.segment.last().map_or(0, |s| s + 1);
        b.packed |= pad_segment > 1;
        b.ids.extend_from_slice(&r.ids);
        b.ids.extend(std::iter::repeat_n(pad, len - l));
        b.segment.extend_from_slice(&r.segment);
        b.segment.extend(std::iter::repeat_n(pad_segment, len - l));
        b.position.extend_from_slice(&r.position);
        b.position.extend(0..(len - l) as u32);
        for t in 0..len - 1 {
            let (label, w) = if t + 1 < l && r.target[t + 1] {
                (r.ids[t + 1], 1.0)
            } else {
                (0, 0.0)
            };
            b.labels.push(label);
            b.weights.push(w);
            if w > 0.0 {
                b.targets += 1;
                b.select.push((ri * len + t) as u32);
                b.select_labels.push(label);
            }
        }
    }
    b
}

/// The order rows are visited in epoch `epoch` (0-based): a permutation that depends only on the seed
/// and the epoch, so a resumed run can rebuild it from `(epoch, position)`.
pub fn epoch_order(rows: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    let mut rng =
        Rng::from_state(seed ^ 0xA5A5_5A5A_0000_0000 ^ epoch.wrapping_mul(0x1000_0000_01B3));
    rng.shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], target: &[u8]) -> Encoded {
        Encoded {
            ids: ids.to_vec(),
            target: target.iter().map(|&t| t == 1).collect(),
        }
    }

    #[test]
    fn targets_and_truncation() {
        let mut e = ex(&[1, 2, 3, 4, 5], &[0, 0, 1, 1, 1]);
        assert_eq!(e.targets(), 3);
        assert!(e.truncate(4));
        assert_eq!(e.targets(), 2);
        assert!(!e.truncate(4));
        let p = Encoded::new(vec![1, 2, 3], vec![false, false, true], true);
        assert_eq!(p.target, vec![false, true, true]);
    }

    #[test]
    fn packing_keeps_examples_apart() {
        let a = ex(&[1, 2, 3], &[0, 1, 1]);
        let b = ex(&[4, 5], &[1, 1]);
        let c = ex(&[6, 7, 8, 9], &[0, 0, 1, 1]);
        let rows = make_rows(&[a.clone(), b.clone(), c.clone()], 5, true);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(rows[0].segment, vec![0, 0, 0, 1, 1]);
        assert_eq!(rows[0].position, vec![0, 1, 2, 0, 1]);
        // Token 4 starts example b: not predicted from example a's last token.
        assert_eq!(rows[0].target, vec![false, true, true, false, true]);
        assert_eq!(rows[1].ids, vec![6, 7, 8, 9]);
        assert_eq!(make_rows(&[a, b, c], 5, false).len(), 3);
    }

    #[test]
    fn collate_pads_and_weights() {
        let rows = make_rows(
            &[ex(&[1, 2, 3], &[0, 1, 1]), ex(&[4, 5], &[0, 1])],
            8,
            false,
        );
        let b = collate(&[&rows[0], &rows[1]], 0);
        assert_eq!(
            (b.rows, b.len, b.tokens, b.targets, b.packed),
            (2, 3, 5, 3, false)
        );
        assert_eq!(b.ids, vec![1, 2, 3, 4, 5, 0]);
        assert_eq!(b.labels, vec![2, 3, 5, 0]);
        assert_eq!(b.weights, vec![1.0, 1.0, 1.0, 0.0]);
        assert_eq!(b.segment, vec![0, 0, 0, 0, 0, 1]);
        assert_eq!(b.select, vec![0, 1, 3]);
        assert_eq!(b.select_labels, vec![2, 3, 5]);
    }

    #[test]
    fn order_is_a_seeded_permutation() {
        let a = epoch_order(50, 7, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 7, 0));
        assert_ne!(a, epoch_order(50, 7, 1));
        assert_ne!(a, epoch_order(50, 8, 0));
    }
}

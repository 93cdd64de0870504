//! Constrained JSON decoding: whatever a sampler picks among the allowed tokens, within the
//! budget, the output parses with serde_json and fits the shape (checked here by hand-written
//! checks of the JSON value, not by the automaton).

use ftkit_model::config::Arch;
use ftkit_model::constrain::{ConstraintState, JsonConstraint, Shape, TokenBytes};
use ftkit_model::fixtures::train_tokenizer_for;
use ftkit_model::rng::Rng;
use serde_json::Value;
use std::sync::Arc;

/// Pieces a byte-level vocabulary might hold: structure, words, digits, escapes, whitespace and
/// parts of multi-byte characters (中 = e4 b8 ad, é = c3 a9, 😀 = f0 9f 98 80).
fn pieces() -> Vec<Vec<u8>> {
    let text: &[&str] = &[
        "{\"",
        "{\"pairs\":[",
        "\"pairs",
        "\":",
        "\":\"",
        "\":[",
        "[{\"",
        "question",
        "\"question\":\"",
        "answer",
        "\",\"answer\":\"",
        "\"},{\"",
        "\"}]}",
        "\"}",
        "]}",
        "},",
        "\",\"",
        ",\"",
        "\"",
        "\\",
        "\\n",
        "\\\"",
        "\\u",
        "\\u00",
        "00e9",
        "d83d",
        " the",
        " fox",
        "Rust",
        " is",
        "?",
        ".",
        " ",
        "  ",
        "\n",
        "\t",
        "1",
        "10",
        "8.5",
        "9",
        "0",
        "01",
        ".5",
        "5,",
        "5}",
        "relevance",
        "\":10,\"",
        "rationale",
        "\":\"ok",
        "clarity",
        "overall",
        "grounding",
        "accuracy",
        "é",
        "中",
        "中文",
        "😀",
        "{}",
        "[]",
        "[\"",
        "\",",
        "null",
        "true",
    ];
    let mut out: Vec<Vec<u8>> = text.iter().map(|s| s.as_bytes().to_vec()).collect();
    out.extend([
        vec![0xe4],
        vec![0xb8, 0xad],
        vec![0xb8],
        vec![0xad, b'"'],
        vec![0xc3],
        vec![0xa9, b' '],
    ]);
    out.extend([
        vec![0xf0, 0x9f],
        vec![0x98, 0x80],
        vec![0xed, 0xa0, 0x80],
        vec![0xc0, 0xaf],
    ]);
    out
}

/// Ids 0..256 are the single bytes, then [`pieces`], then a token that writes nothing, then EOS.
fn synthetic_vocab() -> TokenBytes {
    let mut bytes: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    bytes.extend(pieces().into_iter().map(Some));
    bytes.push(None);
    let eos = bytes.len() as u32;
    bytes.push(None);
    TokenBytes::new(bytes, vec![eos])
}

fn id_of(vocab: &TokenBytes, piece: &[u8]) -> u32 {
    (0..vocab.len() as u32)
        .find(|&i| vocab.get(i) == Some(piece))
        .expect("piece in vocabulary")
}

fn check_string(v: &Value, max_len: usize, wordy: bool) -> Result<(), String> {
    let s = v.as_str().ok_or("not a string")?;
    // The cap counts the JSON body's bytes, escapes included.
    let body = serde_json::to_string(s).map_err(|e| e.to_string())?.len() - 2;
    if body > max_len {
        return Err(format!("string body of {body} bytes > {max_len}"));
    }
    if wordy && !s.chars().any(char::is_alphanumeric) {
        return Err("no letter or digit in a string that needs one".into());
    }
    Ok(())
}

fn check_keys(v: &Value, keys: &[&str]) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let got: Vec<&str> = o.keys().map(String::as_str).collect();
    let mut want = keys.to_vec();
    want.sort_unstable();
    let mut got_sorted = got.clone();
    got_sorted.sort_unstable();
    if got_sorted != want {
        return Err(format!("keys {got:?}, want {keys:?}"));
    }
    Ok(())
}

fn check_qa(v: &Value, max_pairs: usize, max_len: usize) -> Result<(), String> {
    check_keys(v, &["pairs"])?;
    let pairs = v["pairs"].as_array().ok_or("pairs is not an array")?;
    if pairs.is_empty() || pairs.len() > max_pairs {
        return Err(format!("{} pairs", pairs.len()));
    }
    for p in pairs {
        check_keys(p, &["question", "answer"])?;
        check_string(&p["question"], max_len, true)?;
        check_string(&p["answer"], max_len, true)?;
    }
    Ok(())
}

fn check_judge(v: &Value, max_len: usize) -> Result<(), String> {
    let scores = ["relevance", "accuracy", "clarity", "grounding", "overall"];
    let mut keys = scores.to_vec();
    keys.push("rationale");
    check_keys(v, &keys)?;
    for k in scores {
        let x = v[k].as_f64().ok_or(format!("{k} is not a number"))?;
        if !(1.0..=10.0).contains(&x) {
            return Err(format!("{k} = {x}"));
        }
        // One decimal at most.
        if ((x * 10.0).round() - x * 10.0).abs() > 1e-9 {
            return Err(format!("{k} = {x} has more than one decimal"));
        }
    }
    check_string(&v["rationale"], max_len, false)
}

/// Generates with a random policy: uniform among the allowed tokens, or (`greedy_close` of the
/// time) the allowed token that leaves the least to close. Returns the text and tokens used.
/// `brute`: check every step's allowed set against [`brute_force_allowed`] (slow).
fn random_run(
    c: &Arc<JsonConstraint>,
    vocab_len: usize,
    budget: usize,
    rng: &mut Rng,
    greedy_close: f64,
    brute: bool,
) -> (Vec<u8>, usize) {
    let mut state = c.start();
    let mut mask = vec![false; vocab_len + 3];
    for step in 0..budget {
        let remaining = budget - step;
        state.allowed(remaining, &mut mask);
        let ids: Vec<u32> = (0..mask.len() as u32)
            .filter(|&i| mask[i as usize])
            .collect();
        if brute {
            assert_eq!(
                ids,
                brute_force_allowed(&state, vocab_len, remaining),
                "after {:?}",
                show(state.text())
            );
        }
        assert!(
            !ids.is_empty(),
            "nothing allowed at step {step} after {:?}",
            show(state.text())
        );
        assert!(
            mask[vocab_len..].iter().all(|m| !m),
            "ids past the vocabulary allowed"
        );
        let eos_allowed = ids.iter().any(|&i| state.is_eos(i));
        assert_eq!(
            eos_allowed,
            state.is_complete(),
            "eos allowed iff complete, at {:?}",
            show(state.text())
        );
        let pick = if rng.uniform() < greedy_close {
            *ids.iter()
                .min_by_key(|&&i| after(&state, i).min_tokens_to_close())
                .expect("non-empty")
        } else {
            ids[rng.below(ids.len() as u64) as usize]
        };
        if state.is_eos(pick) {
            return (state.text().to_vec(), step);
        }
        state.advance(pick).expect("an allowed token advances");
        assert!(
            state.min_tokens_to_close() < remaining,
            "budget rule broken after {:?}",
            show(state.text())
        );
    }
    assert!(
        state.is_complete(),
        "budget spent before the value closed: {:?}",
        show(state.text())
    );
    (state.text().to_vec(), budget)
}

/// The allowed set token by token, through `advance` and the close cost alone: checks the trie
/// walk, its cache and its shortcut for strings.
fn brute_force_allowed(state: &ConstraintState, vocab_len: usize, remaining: usize) -> Vec<u32> {
    (0..vocab_len as u32)
        .filter(|&id| {
            if state.is_eos(id) {
                return state.is_complete();
            }
            let mut s = state.clone();
            s.advance(id).is_ok() && s.min_tokens_to_close() < remaining
        })
        .collect()
}

fn after(state: &ConstraintState, id: u32) -> ConstraintState {
    let mut s = state.clone();
    if !s.is_eos(id) {
        s.advance(id).expect("allowed token advances");
    }
    s
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse(text: &[u8]) -> Value {
    serde_json::from_slice(text).unwrap_or_else(|e| panic!("{e}: {:?}", show(text)))
}

#[test]
fn random_policies_on_a_synthetic_vocabulary_always_give_qa_pairs() {
    let vocab = synthetic_vocab();
    let c = JsonConstraint::new(&Shape::qa_pairs(3, 40), &vocab).expect("compiles");
    assert_eq!(
        c.min_tokens(),
        r#"{"pairs":[{"question":"x","answer":"x"}]}"#.len()
    );
    let mut rng = Rng::new(7);
    let mut lengths = Vec::new();
    for run in 0..300 {
        let budget = c.min_tokens() + rng.below(150) as usize;
        let greedy = [0.0, 0.2, 0.6][run % 3];
        let (text, used) = random_run(&c, vocab.len(), budget, &mut rng, greedy, run % 10 == 0);
        assert!(used <= budget);
        let v = parse(&text);
        check_qa(&v, 3, 40).unwrap_or_else(|e| panic!("{e}: {}", show(&text)));
        lengths.push(v["pairs"].as_array().map_or(0, Vec::len));
    }
    // The runs explored: one pair and several.
    assert!(
        lengths.contains(&1) && lengths.iter().any(|&n| n > 1),
        "{lengths:?}"
    );
}

#[test]
fn random_policies_on_a_synthetic_vocabulary_always_give_judge_scores() {
    let vocab = synthetic_vocab();
    let c = JsonConstraint::new(&Shape::judge_scores(30), &vocab).expect("compiles");
    let mut rng = Rng::new(11);
    let mut decimals = 0;
    for run in 0..300 {
        let budget = c.min_tokens() + rng.below(80) as usize;
        let (text, _) = random_run(
            &c,
            vocab.len(),
            budget,
            &mut rng,
            [0.0, 0.5][run % 2],
            run % 10 == 0,
        );
        let v = parse(&text);
        check_judge(&v, 30).unwrap_or_else(|e| panic!("{e}: {}", show(&text)));
        decimals += show(&text).matches('.').count();
    }
    assert!(decimals > 0, "no run wrote a decimal score");
}

#[test]
fn the_tightest_budget_still_closes() {
    let vocab = synthetic_vocab();
    for shape in [Shape::qa_pairs(2, 20), Shape::judge_scores(10)] {
        let c = JsonConstraint::new(&shape, &vocab).expect("compiles");
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let (text, used) = random_run(&c, vocab.len(), c.min_tokens(), &mut rng, 0.0, false);
            assert!(used <= c.min_tokens());
            parse(&text);
        }
        // Below the byte count of the cheapest value, long tokens may still fit: whatever is
        // allowed then closes in time too; a single token never holds a whole value.
        assert!(c.start().allowed_ids(1).is_empty());
        for budget in 2..c.min_tokens() {
            if !c.start().allowed_ids(budget).is_empty() {
                let (text, used) =
                    random_run(&c, vocab.len(), budget, &mut rng, 0.0, budget % 4 == 0);
                assert!(used <= budget);
                parse(&text);
            }
        }
    }
}

fn accept_all(c: &Arc<JsonConstraint>, ids: &[u32], budget: usize) -> ConstraintState {
    let mut s = c.start();
    for (i, &id) in ids.iter().enumerate() {
        assert!(
            s.allowed_ids(budget - i).contains(&id),
            "token {id} not allowed after {:?}",
            show(s.text())
        );
        s.advance(id).expect("advances");
    }
    s
}

fn ids(vocab: &TokenBytes, pieces: &[&[u8]]) -> Vec<u32> {
    pieces.iter().map(|p| id_of(vocab, p)).collect()
}

#[test]
fn known_texts_are_accepted_token_by_token_and_close_only_when_complete() {
    let vocab = synthetic_vocab();
    let eos = vocab.eos()[0];
    let c = JsonConstraint::new(&Shape::qa_pairs(3, 40), &vocab).expect("compiles");
    let pieces: &[&[u8]] = &[
        b"{\"pairs\":[",
        b"{\"",
        b"question",
        b"\":\"",
        b"Rust",
        b"?",
        b"\",\"answer\":\"",
        "中文".as_bytes(),
        &[0xe4],
        &[0xb8, 0xad],
        b"\\n",
        b"\\u",
        b"00e9",
        b"\"},{\"",
        b"question",
        b"\":\"",
        b"\\\"",
        b"?",
        b"\\u",
        b"00e9",
        b"\"",
        b",\"",
        b"answer",
        b"\":\"",
        b" fox",
        b"\"}]}",
    ];
    let mut s = c.start();
    let seq = ids(&vocab, pieces);
    for (i, &id) in seq.iter().enumerate() {
        let allowed = s.allowed_ids(200);
        assert!(
            allowed.contains(&id),
            "{:?} not allowed after {:?}",
            show(pieces[i]),
            show(s.text())
        );
        assert!(!allowed.contains(&eos), "eos allowed before the end");
        s.advance(id).expect("advances");
    }
    assert!(s.is_complete());
    assert_eq!(s.allowed_ids(5), vec![eos]);
    s.advance(eos).expect("eos once complete");
    let v = parse(s.text());
    assert_eq!(v["pairs"][0]["answer"], "中文中\né");
    assert_eq!(v["pairs"][1]["question"], "\"?é");

    let j = JsonConstraint::new(&Shape::judge_scores(30), &vocab).expect("compiles");
    let text = br#"{"relevance":10,"accuracy":8.5,"clarity":1,"grounding":9.0,"overall":7,"rationale":""}"#;
    let single: Vec<u32> = text.iter().map(|&b| b as u32).collect();
    let s = accept_all(&j, &single, text.len());
    assert!(s.is_complete());
}

/// The text accepted so far, then `bad` must be refused both by the mask and by `advance`.
fn assert_refused(c: &Arc<JsonConstraint>, vocab: &TokenBytes, prefix: &[u8], bad: &[u8]) {
    let s = accept_all(
        c,
        &prefix.iter().map(|&b| b as u32).collect::<Vec<_>>(),
        500,
    );
    let id = id_of(vocab, bad);
    assert!(
        !s.allowed_ids(400).contains(&id),
        "{:?} allowed after {:?}",
        show(bad),
        show(prefix)
    );
    assert!(
        s.clone().advance(id).is_err(),
        "{:?} advanced after {:?}",
        show(bad),
        show(prefix)
    );
}

#[test]
fn invalid_continuations_are_masked() {
    let vocab = synthetic_vocab();
    let qa = JsonConstraint::new(&Shape::qa_pairs(2, 12), &vocab).expect("compiles");
    let q = br#"{"pairs":[{"question":""#;
    assert_refused(&qa, &vocab, b"", b" "); // no whitespace outside strings
    assert_refused(&qa, &vocab, b"", b"[]");
    assert_refused(&qa, &vocab, b"", b"{}");
    assert_refused(&qa, &vocab, b"{\"pairs\":[", b"]}"); // at least one pair
    assert_refused(&qa, &vocab, q, b"\""); // a blank question
    assert_refused(&qa, &vocab, br#"{"pairs":[{"question":"  "#, b"\"");
    assert_refused(&qa, &vocab, br#"{"pairs":[{"question":"\n"#, b"\"");
    // A prompt's placeholder copied says nothing: a letter or digit is required.
    assert_refused(&qa, &vocab, br#"{"pairs":[{"question":"..."#, b"\"");
    assert_refused(&qa, &vocab, br#"{"pairs":[{"question":"- \u00a0"#, b"\"");
    assert_refused(&qa, &vocab, q, b"\n"); // raw control character
    // A \u escape, but not \ud83d (a lone surrogate).
    assert_refused(&qa, &vocab, br#"{"pairs":[{"question":"\u"#, b"d83d");
    assert_refused(&qa, &vocab, br#"{"pairs":[{"question":"x"#, b"\"}"); // the answer is missing
    assert_refused(
        &qa,
        &vocab,
        br#"{"pairs":[{"question":"x","answer":"y"}"#,
        b"},",
    ); // "]" first
    // The cap of 12 body bytes: 11 written, then no 2-byte piece.
    assert_refused(
        &qa,
        &vocab,
        br#"{"pairs":[{"question":"abcdefghijk"#,
        b" the",
    );
    assert_refused(
        &qa,
        &vocab,
        br#"{"pairs":[{"question":"abcdefghijk"#,
        b"\\n",
    );
    // Two pairs at most.
    let two = br#"{"pairs":[{"question":"a","answer":"b"},{"question":"a","answer":"b"}"#;
    assert_refused(&qa, &vocab, two, b",\"");
    assert_refused(&qa, &vocab, two, b"},");

    let j = JsonConstraint::new(&Shape::judge_scores(30), &vocab).expect("compiles");
    let r = br#"{"relevance":"#;
    assert_refused(&j, &vocab, r, b"0");
    assert_refused(&j, &vocab, r, b"01");
    assert_refused(&j, &vocab, r, b".5");
    assert_refused(&j, &vocab, r, b"\"");
    assert_refused(&j, &vocab, br#"{"relevance":1"#, b"1"); // 11
    assert_refused(&j, &vocab, br#"{"relevance":10"#, b".5"); // above 10
    assert_refused(&j, &vocab, br#"{"relevance":8.5"#, b"5,"); // two decimals
    assert_refused(&j, &vocab, br#"{"relevance":8."#, b",\""); // no digit after the dot
    assert_refused(&j, &vocab, br#"{"relevance":8"#, b"5}");
    assert_refused(
        &j,
        &vocab,
        br#"{"relevance":8,"accuracy":8,"clarity":8,"grounding":8,"overall":8,"rationale":"ok""#,
        b"},",
    );
}

#[test]
fn partial_utf8_tokens_continue_only_into_valid_characters() {
    let vocab = synthetic_vocab();
    let c = JsonConstraint::new(&Shape::qa_pairs(1, 40), &vocab).expect("compiles");
    let q = br#"{"pairs":[{"question":""#;
    // A continuation byte cannot start a character; nor can overlong or surrogate encodings.
    assert_refused(&c, &vocab, q, &[0xb8]);
    assert_refused(&c, &vocab, q, &[0xc0, 0xaf]);
    assert_refused(&c, &vocab, q, &[0xed, 0xa0, 0x80]);
    // Inside 中 (e4 b8 ad): only its continuation, not a quote or ASCII.
    let mut mid = q.to_vec();
    mid.push(0xe4);
    assert_refused(&c, &vocab, &mid, b"\"");
    assert_refused(&c, &vocab, &mid, b"?");
    assert_refused(&c, &vocab, &mid, "中".as_bytes());
    let s = accept_all(&c, &mid.iter().map(|&b| b as u32).collect::<Vec<_>>(), 100);
    let allowed = s.allowed_ids(100);
    assert!(allowed.contains(&id_of(&vocab, &[0xb8, 0xad])));
    assert!(
        allowed
            .iter()
            .all(|&id| vocab.get(id).is_some_and(|b| (0x80..=0xbf).contains(&b[0])))
    );
    // 😀 split over two tokens, 中 split, then a token that would close a quote while e4 ad still
    // owes a byte.
    let mut s = c.start();
    for &b in q {
        s.advance(b as u32).expect("prefix");
    }
    for p in [
        &[0xf0, 0x9f][..],
        &[0x98, 0x80],
        &[0xe4],
        &[0xb8, 0xad],
        &[0xe4],
    ] {
        s.advance(id_of(&vocab, p)).expect("valid pieces");
    }
    assert!(s.clone().advance(id_of(&vocab, &[0xad, b'"'])).is_err());
    s.advance(0xad).expect("e4 ad");
    s.advance(0x80).expect("e4 ad 80");
    assert_eq!(show(&s.text()[q.len()..]), "😀中\u{4b40}");
}

#[test]
fn fixture_tokenizers_give_their_own_bytes_and_random_runs_parse() {
    let text = "{\"pairs\":[{\"question\":\"Why 42?\",\"answer\":\"Code: fn main() {}\\n  x = 3.14; café 中文 😀\"}]}";
    for (arch, specials) in [
        (
            Arch::Qwen2,
            &["<|endoftext|>", "<|im_start|>", "<|im_end|>"][..],
        ),
        (
            Arch::Llama,
            &["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"][..],
        ),
    ] {
        let tok = train_tokenizer_for(arch, specials, 400).expect("fixture tokenizer");
        let eos = tok
            .token_to_id(specials[specials.len() - 1])
            .expect("eos id");
        let vocab = TokenBytes::from_tokenizer(&tok, &[eos]).expect("token bytes");
        // The tokenizer's own encoding, read back through our byte table, is the text.
        let enc = tok.encode(text, false).expect("encodes");
        let mut bytes = Vec::new();
        for &id in enc.get_ids() {
            bytes.extend(vocab.get(id).expect("a text token has bytes"));
        }
        assert_eq!(show(&bytes), text, "{arch:?}");
        for s in specials {
            assert_eq!(vocab.get(tok.token_to_id(s).expect("special")), None);
        }
        // Accepted token by token as the tokenizer splits it.
        let c = JsonConstraint::new(&Shape::qa_pairs(2, 80), &vocab).expect("compiles");
        let s = accept_all(&c, enc.get_ids(), 400);
        assert!(s.is_complete());
        assert_eq!(s.allowed_ids(1), vec![eos]);
        // And random runs over the real vocabulary parse.
        let mut rng = Rng::new(5);
        for run in 0..60 {
            let budget = c.min_tokens() + rng.below(120) as usize;
            let (text, _) = random_run(
                &c,
                vocab.len(),
                budget,
                &mut rng,
                [0.0, 0.3][run % 2],
                run % 10 == 0,
            );
            check_qa(&parse(&text), 2, 80).unwrap_or_else(|e| panic!("{e}: {}", show(&text)));
        }
        let j = JsonConstraint::new(&Shape::judge_scores(60), &vocab).expect("compiles");
        for _ in 0..60 {
            let budget = j.min_tokens() + rng.below(60) as usize;
            let (text, _) = random_run(&j, vocab.len(), budget, &mut rng, 0.2, false);
            check_judge(&parse(&text), 60).unwrap_or_else(|e| panic!("{e}: {}", show(&text)));
        }
    }
}

#[test]
fn a_vocabulary_without_single_bytes_is_refused() {
    let bytes = vec![Some(b"{\"pairs\":[".to_vec()), Some(b"x".to_vec()), None];
    let err = JsonConstraint::new(&Shape::qa_pairs(1, 10), &TokenBytes::new(bytes, vec![2]));
    assert!(err.is_err());
    assert!(
        JsonConstraint::new(&Shape::integer(1, 2), &synthetic_vocab()).is_err(),
        "a bare number root"
    );
}

/// A 49152-token byte-level vocabulary (SmolLM2's size): the 256 bytes, then random pieces of
/// English-like text, digits, punctuation and multi-byte characters.
fn big_vocab() -> TokenBytes {
    let alphabet: Vec<&str> = "a b c d e f g h i j k l m n o p q r s t u v w x y z A T S , . ? \" : { } [ ] \\ 1 2 0 é 中 _ -"
        .split(' ')
        .collect();
    let mut rng = Rng::new(1);
    let mut seen = std::collections::HashSet::new();
    let mut bytes: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
    while bytes.len() < 49151 {
        let len = 2 + rng.below(9) as usize;
        let mut t = if rng.uniform() < 0.6 {
            " ".to_string()
        } else {
            String::new()
        };
        for _ in 0..len {
            t.push_str(alphabet[rng.below(alphabet.len() as u64) as usize]);
        }
        if seen.insert(t.clone()) {
            bytes.push(Some(t.into_bytes()));
        }
    }
    bytes.push(None);
    TokenBytes::new(bytes, vec![49151])
}

/// `cargo test --release --locked -p ftkit-model --test constrain -- --ignored --nocapture`
#[test]
#[ignore = "timing report, run in release"]
fn step_time_at_vocabulary_49152() {
    let vocab = big_vocab();
    let c = JsonConstraint::new(&Shape::qa_pairs(4, 400), &vocab).expect("compiles");
    let mut mask = vec![false; vocab.len()];
    let mut rng = Rng::new(2);
    let (mut steps, mut total) = (0u32, std::time::Duration::ZERO);
    let mut first = None;
    let (mut slow, mut slow_time) = (0u32, std::time::Duration::ZERO);
    for _ in 0..20 {
        let mut s = c.start();
        let budget = 300;
        for step in 0..budget {
            let t = std::time::Instant::now();
            s.allowed(budget - step, &mut mask);
            let dt = t.elapsed();
            first.get_or_insert(dt);
            total += dt;
            if dt.as_micros() > 200 {
                slow += 1;
                slow_time += dt;
            }
            steps += 1;
            let ids: Vec<u32> = (0..mask.len() as u32)
                .filter(|&i| mask[i as usize])
                .collect();
            let pick = ids[rng.below(ids.len() as u64) as usize];
            if s.is_eos(pick) {
                break;
            }
            s.advance(pick).expect("allowed");
        }
    }
    let uncached = std::time::Instant::now();
    for _ in 0..20 {
        std::hint::black_box(c.start().allowed_ids(100));
    }
    let cached = uncached.elapsed() / 20;
    eprintln!(
        "vocab 49152: {steps} steps, mean {:.1} us/step (mask filled), first step {:.1} us, cached start step {:.1} us",
        total.as_secs_f64() * 1e6 / steps as f64,
        first.map_or(0.0, |d| d.as_secs_f64() * 1e6),
        cached.as_secs_f64() * 1e6
    );
    eprintln!(
        "steps over 200 us (cache misses): {slow}, mean {:.0} us",
        slow_time.as_secs_f64() * 1e6 / slow.max(1) as f64
    );
}

/// A random string: ASCII, escapes-to-be (quote, backslash, control characters), multi-byte
/// characters and blanks.
fn random_string(rng: &mut Rng, max_chars: usize) -> String {
    let chars = [
        'a', 'Z', '7', ' ', '"', '\\', '\n', '\u{1}', 'é', '中', '😀', '\u{3000}', '/', '\t',
    ];
    (0..rng.below(max_chars as u64 + 1))
        .map(|_| chars[rng.below(chars.len() as u64) as usize])
        .collect()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A judge reply written by hand in the shape's key order (serde_json's maps sort keys).
fn random_judge_text(rng: &mut Rng) -> String {
    let mut out = String::from("{");
    for (i, k) in ["relevance", "accuracy", "clarity", "grounding", "overall"]
        .iter()
        .enumerate()
    {
        let int = 1 + rng.below(10);
        let score = if int < 10 && rng.uniform() < 0.5 {
            format!("{int}.{}", rng.below(10))
        } else {
            int.to_string()
        };
        out += &format!("{}\"{k}\":{score}", if i > 0 { "," } else { "" });
    }
    out + &format!(",\"rationale\":{}}}", json_str(&random_string(rng, 6)))
}

/// The automaton takes texts written independently (serde_json's string escaping), and any text
/// it takes whole after random byte edits is JSON of the shape.
#[test]
fn texts_written_by_serde_are_accepted_and_edited_ones_only_when_valid() {
    let vocab = synthetic_vocab();
    let c = JsonConstraint::new(&Shape::judge_scores(40), &vocab).expect("compiles");
    let feed = |text: &[u8]| -> Option<ConstraintState> {
        let mut s = c.start();
        for &b in text {
            s.advance(b as u32).ok()?;
        }
        Some(s)
    };
    let mut rng = Rng::new(9);
    let mut edited_ok = 0;
    for _ in 0..2000 {
        let text = random_judge_text(&mut rng);
        let v = parse(text.as_bytes());
        if check_judge(&v, 40).is_err() {
            continue; // a rationale over the cap: not of the shape
        }
        let s = feed(text.as_bytes()).unwrap_or_else(|| panic!("refused {text:?}"));
        assert!(s.is_complete(), "{text:?}");
        let mut bytes = text.into_bytes();
        let at = rng.below(bytes.len() as u64) as usize;
        let b = b"0123456789.,:\"{}\\ a\xc3\xa9"[rng.below(18) as usize];
        match rng.below(3) {
            0 => bytes[at] = b,
            1 => bytes.insert(at, b),
            _ => {
                bytes.remove(at);
            }
        }
        if let Some(s) = feed(&bytes)
            && s.is_complete()
        {
            let v: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{e}: {:?}", show(&bytes)));
            check_judge(&v, 40).unwrap_or_else(|e| panic!("{e}: {:?}", show(&bytes)));
            edited_ok += 1;
        }
    }
    assert!(
        edited_ok > 0,
        "no edit kept the text valid: the check ran on nothing"
    );
}

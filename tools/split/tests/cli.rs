#![allow(clippy::unwrap_used)]

use clap::CommandFactory;
use ftkit_testkit::{Run, contract::Contract, golden, testdata};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const BIN: &str = env!("CARGO_BIN_EXE_ft-split");

fn qa() -> Vec<u8> {
    std::fs::read(testdata("split", "qa.jsonl")).unwrap()
}

/// id → split of a tagged output.
fn splits(out: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["split"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn contract() {
    Contract {
        bin: BIN,
        args: &[],
        input: &qa(),
    }
    .check_all();
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_split::Args::command());
}

#[test]
fn tags_records_by_key() {
    let out = Run::new(BIN).stdin(qa()).run().expect_code(0);
    golden::check(&testdata("split", "tag.out.jsonl"), &out.stdout);
    assert!(
        out.stderr.contains("train 29, val 5, test 2 (seed 42)"),
        "{}",
        out.stderr
    );
    let other_seed = Run::new(BIN)
        .args(["--seed", "7"])
        .stdin(qa())
        .run()
        .expect_code(0);
    assert_ne!(
        splits(&other_seed.stdout),
        splits(&out.stdout),
        "the seed changes the split"
    );
    // An existing "split" field is replaced, other fields pass through in order.
    let out = Run::new(BIN)
        .stdin("{\"id\":\"qa00\",\"split\":\"old\",\"x\":{\"y\":1}}\n")
        .run()
        .expect_code(0);
    assert_eq!(
        out.stdout_str(),
        "{\"id\":\"qa00\",\"x\":{\"y\":1},\"split\":\"train\"}\n"
    );
}

#[test]
fn group_by_keeps_documents_whole() {
    let out = Run::new(BIN)
        .args(["--group-by", "doc_id"])
        .stdin(qa())
        .run()
        .expect_code(0);
    golden::check(&testdata("split", "group.out.jsonl"), &out.stdout);
    let mut doc_splits: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for v in out.records() {
        doc_splits
            .entry(v["doc_id"].as_str().unwrap().into())
            .or_default()
            .insert(v["split"].as_str().unwrap().into());
    }
    assert_eq!(doc_splits.len(), 12);
    assert!(
        doc_splits.values().all(|s| s.len() == 1),
        "a document leaks across splits: {doc_splits:?}"
    );
    assert!(doc_splits.values().any(|s| s.contains("test")));
}

#[test]
fn out_dir_writes_each_split_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("splits");
    let out = Run::new(BIN)
        .args(["--group-by", "doc_id", "--out-dir"])
        .arg(&out_dir)
        .stdin(qa())
        .run()
        .expect_code(0);
    assert!(out.stdout.is_empty());
    let mut all = Vec::new();
    for name in ["train", "val", "test", "split_stats"] {
        let file = if name == "split_stats" {
            "split_stats.json".to_string()
        } else {
            format!("{name}.jsonl")
        };
        let bytes = std::fs::read(out_dir.join(&file)).unwrap();
        golden::check(&testdata("split", &format!("out-dir/{file}")), &bytes);
        if name != "split_stats" {
            all.extend(
                String::from_utf8(bytes)
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    // Files hold the input lines unchanged; together, all of them once.
    let mut input: Vec<String> = String::from_utf8(qa())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    input.sort();
    all.sort();
    assert_eq!(all, input);
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("split_stats.json")).unwrap()).unwrap();
    assert_eq!(stats["records_out"], 36);
    assert_eq!(
        stats["splits"][0]["groups"].as_u64().unwrap()
            + stats["splits"][2]["groups"].as_u64().unwrap(),
        12
    );

    let zst_dir = dir.path().join("zst");
    Run::new(BIN)
        .args(["--group-by", "doc_id", "--compress", "-q", "--out-dir"])
        .arg(&zst_dir)
        .stdin(qa())
        .run()
        .expect_code(0);
    for name in ["train", "val", "test"] {
        let packed = std::fs::read(zst_dir.join(format!("{name}.jsonl.zst"))).unwrap();
        let plain = std::fs::read(out_dir.join(format!("{name}.jsonl"))).unwrap();
        assert_eq!(zstd_decode(&packed), plain);
    }
}

fn zstd_decode(bytes: &[u8]) -> Vec<u8> {
    zstd::decode_all(bytes).unwrap()
}

#[test]
fn a_failed_run_leaves_no_split_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"noid\":1}\n").unwrap();
    let out_dir = dir.path().join("splits");
    let out = Run::new(BIN)
        .arg("--out-dir")
        .arg(&out_dir)
        .arg(&input)
        .run()
        .expect_code(1);
    assert!(
        out.stderr.contains("in.jsonl:3: missing field \"id\""),
        "{}",
        out.stderr
    );
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(
        left.is_empty() || left == [0],
        "files left in --out-dir: {left:?}"
    );
}

#[test]
fn caps_keep_the_lowest_ranks() {
    let out = Run::new(BIN)
        .args(["--max-per-split", "4"])
        .stdin(qa())
        .run()
        .expect_code(0);
    golden::check(&testdata("split", "capped.out.jsonl"), &out.stdout);
    let got = splits(&out.stdout);
    for name in ["train", "val", "test"] {
        assert!(got.values().filter(|s| *s == name).count() <= 4);
    }
    assert_eq!(got.values().filter(|s| *s == "train").count(), 4);
    // Capped records keep their uncapped split.
    let full = splits(&Run::new(BIN).stdin(qa()).run().stdout);
    assert!(got.iter().all(|(id, s)| full[id] == *s));

    let total = Run::new(BIN)
        .args(["--max-total", "10"])
        .stdin(qa())
        .run()
        .expect_code(0);
    assert_eq!(total.records().len(), 10);
    assert!(
        total.stderr.contains("26 over the caps"),
        "{}",
        total.stderr
    );
    let both = Run::new(BIN)
        .args(["--max-total", "5", "--max-per-split", "4"])
        .stdin(qa())
        .run()
        .expect_code(0);
    let both = splits(&both.stdout);
    assert_eq!(both.len(), 5);
    assert!(
        both.keys().all(|id| got.contains_key(id)),
        "--max-total picks among the per-split survivors"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--ratios", "0.5,0.4"][..],
        &["--ratios", "0.5,0.25,0.25", "--names", "a,b"],
        &["--ratios", "0.25,0.25,0.25,0.25"],
        &["--names", "train,val,train"],
        &["--names", "a/b,c,d"],
        &["--compress"],
        &["--out-dir", "x", "-o", "y"],
        &["--max-total", "0"],
    ] {
        let out = Run::new(BIN).args(args).stdin(qa()).run();
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
    let out = Run::new(BIN)
        .args(["--ratios", "0.25,0.25,0.5", "--names", "a,b,c", "-q"])
        .stdin(qa())
        .run();
    assert_eq!(out.expect_code(0).records().len(), 36);
}

fn records(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| format!("{{\"id\":\"r{i}\",\"doc_id\":\"d{}\"}}\n", i % 13))
        .collect()
}

fn run_split(input: String, extra: &[&str]) -> BTreeMap<String, String> {
    splits(
        &Run::new(BIN)
            .args(["-q"])
            .args(extra)
            .stdin(input)
            .run()
            .expect_code(0)
            .stdout,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Adding, removing or reordering records never moves another record.
    #[test]
    fn splits_are_stable(ids in prop::collection::btree_set(0u32..10_000, 1..60),
                         extra in prop::collection::btree_set(10_000u32..20_000, 0..30),
                         order in any::<prop::sample::Index>(),
                         group in any::<bool>()) {
        let flags: &[&str] = if group { &["--group-by", "doc_id"] } else { &[] };
        let ids: Vec<u32> = ids.into_iter().collect();
        let base = run_split(records(&ids), flags);
        // Remove every other record and add new ones.
        let mut changed: Vec<u32> = ids.iter().copied().step_by(2).collect();
        changed.extend(extra.iter().copied());
        let after = run_split(records(&changed), flags);
        for (id, split) in &after {
            if let Some(before) = base.get(id) {
                prop_assert_eq!(before, split, "{} moved", id);
            }
        }
        // Rotate and reverse the input.
        let mut shuffled = ids.clone();
        let k = order.index(shuffled.len());
        shuffled.rotate_left(k);
        shuffled.reverse();
        prop_assert_eq!(&run_split(records(&shuffled), flags), &base);
    }

    /// Caps keep the same records whatever the input order.
    #[test]
    fn caps_do_not_depend_on_order(ids in prop::collection::btree_set(0u32..10_000, 1..80),
                                   order in any::<prop::sample::Index>(),
                                   per_split in 1usize..10, total in 1usize..20, group in any::<bool>()) {
        let ids: Vec<u32> = ids.into_iter().collect();
        let mut shuffled = ids.clone();
        shuffled.rotate_left(order.index(ids.len()));
        shuffled.reverse();
        let per = per_split.to_string();
        let tot = total.to_string();
        let mut flags = vec!["--max-per-split", per.as_str(), "--max-total", tot.as_str()];
        if group {
            flags.extend(["--group-by", "doc_id"]);
        }
        let a = run_split(records(&ids), &flags);
        let b = run_split(records(&shuffled), &flags);
        prop_assert_eq!(&a, &b);
        prop_assert!(a.len() <= total);
    }
}

/// Issue 10: `--key tags.0` reaches into arrays (it used to say the field was missing).
#[test]
fn key_reaches_array_items_by_index() {
    let by_path = Run::new(BIN)
        .args(["--key", "tags.0", "-q"])
        .stdin(
            "{\"id\":\"a\",\"tags\":[\"g1\",\"x\"]}\n{\"id\":\"b\",\"tags\":[\"g2\"]}\n\
             {\"id\":\"c\",\"tags\":[\"g1\",\"y\"]}\n",
        )
        .run()
        .expect_code(0);
    // The same keys given as plain top-level fields: the splits must be the same.
    let by_field = Run::new(BIN)
        .args(["--key", "k", "-q"])
        .stdin(
            "{\"id\":\"a\",\"k\":\"g1\"}\n{\"id\":\"b\",\"k\":\"g2\"}\n{\"id\":\"c\",\"k\":\"g1\"}\n",
        )
        .run()
        .expect_code(0);
    assert_eq!(splits(&by_path.stdout), splits(&by_field.stdout));
    let out = Run::new(BIN)
        .args(["--key", "tags.5"])
        .stdin("{\"id\":\"a\",\"tags\":[\"g1\"]}\n")
        .run()
        .expect_code(1);
    assert!(out.stderr.contains("<stdin>:1"), "{}", out.stderr);
}

/// A file `--out-dir` would write that is an input (`in/train.jsonl`, `in/split_stats.json`) is a usage
/// error naming both; the input is untouched.
#[test]
fn out_dir_files_naming_an_input_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["train.jsonl", "split_stats.json"] {
        let input = dir.path().join(name);
        std::fs::write(&input, qa()).unwrap();
        let r = Run::new(BIN)
            .arg(&input)
            .arg("--out-dir")
            .arg(dir.path())
            .run();
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("--out-dir") && r.stderr.contains("input"),
            "{}",
            r.stderr
        );
        assert_eq!(std::fs::read(&input).unwrap(), qa(), "{name}");
        std::fs::remove_file(&input).unwrap();
    }
}

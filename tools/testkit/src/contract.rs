//! The contract every ftkit JSONL filter keeps (STYLE.md, "Tests").

use super::*;

/// What a contract check needs to know about a tool.
pub struct Contract<'a> {
    /// Path of the binary: `env!("CARGO_BIN_EXE_ft-<tool>")`.
    pub bin: &'a str,
    /// Arguments that make the tool run on valid input (no file arguments).
    pub args: &'a [&'a str],
    /// A valid JSONL input with at least three lines that produces output.
    pub input: &'a [u8],
}

impl Contract<'_> {
    fn run(&self) -> Run {
        Run::new(self.bin).args(self.args)
    }

    /// Runs every check.
    pub fn check_all(&self) {
        let reference = self.stdin_file_dash_and_zstd();
        self.output_file(&reference);
        self.unknown_flag_exits_2();
        self.malformed_line_exits_1_naming_path_line();
        self.closed_pipe_exits_0();
        self.threads_do_not_change_output();
    }

    /// stdin, `-`, a file, a `.zst` file and zstd on stdin give the same bytes; returns them.
    pub fn stdin_file_dash_and_zstd(&self) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("in.jsonl");
        let packed = dir.path().join("in.jsonl.zst");
        std::fs::write(&plain, self.input).unwrap();
        std::fs::write(&packed, zstd(self.input)).unwrap();

        let reference = self.run().stdin(self.input).run().expect_code(0);
        assert!(
            !reference.stdout.is_empty(),
            "no output on valid input; stderr:\n{}",
            reference.stderr
        );
        reference.records(); // every line is JSON
        for (what, run) in [
            ("-", self.run().arg("-").stdin(self.input)),
            ("file", self.run().arg(&plain)),
            (".zst file", self.run().arg(&packed)),
            ("zstd stdin", self.run().stdin(zstd(self.input))),
        ] {
            let out = run.run().expect_code(0);
            assert_eq!(out.stdout, reference.stdout, "{what} differs from stdin");
        }
        reference.stdout
    }

    /// `-o FILE` holds exactly what stdout would; `-o FILE.zst` decompresses to it.
    pub fn output_file(&self, reference: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let zst = dir.path().join("out.jsonl.zst");
        let r = self
            .run()
            .arg("-o")
            .arg(&out)
            .stdin(self.input)
            .run()
            .expect_code(0);
        assert!(r.stdout.is_empty(), "stdout must stay empty with -o");
        assert_eq!(std::fs::read(&out).unwrap(), reference);
        self.run()
            .arg("-o")
            .arg(&zst)
            .stdin(self.input)
            .run()
            .expect_code(0);
        assert_eq!(
            zstd::decode_all(&std::fs::read(&zst).unwrap()[..]).unwrap(),
            reference
        );
    }

    pub fn unknown_flag_exits_2(&self) {
        let out = self.run().arg("--no-such-flag").stdin(self.input).run();
        assert_eq!(out.code, 2, "unknown flag: {}", out.stderr);
        assert!(out.stdout.is_empty());
        assert!(out.stderr.contains("--no-such-flag"), "{}", out.stderr);
    }

    /// A broken third line stops the run with `path:3:` in the message; `-o` leaves no file behind.
    pub fn malformed_line_exits_1_naming_path_line(&self) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        let mut lines: Vec<&[u8]> = self
            .input
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        lines.insert(2, b"{\"broken\": ");
        std::fs::write(&path, lines.join(&b'\n')).unwrap();
        let out = self.run().arg(&path).run();
        assert_eq!(out.code, 1, "malformed line: {}", out.stderr);
        let needle = format!("{}:3: ", path.display());
        assert!(
            out.stderr.contains(&needle),
            "stderr lacks {needle:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.starts_with("ft-"),
            "errors start with the tool name: {}",
            out.stderr
        );

        let target = dir.path().join("out.jsonl");
        self.run()
            .arg(&path)
            .arg("-o")
            .arg(&target)
            .run()
            .expect_code(1);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !target.exists(),
            "a failed run must not leave its output; folder holds {left:?}"
        );
        assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");
    }

    /// Reading one line and closing the pipe ends the tool quietly with status 0.
    pub fn closed_pipe_exits_0(&self) {
        // Enough input that the output cannot fit in a pipe buffer before the reader leaves.
        let mut big = Vec::new();
        while big.len() < 4 << 20 {
            big.extend_from_slice(self.input);
            if !big.ends_with(b"\n") {
                big.push(b'\n');
            }
        }
        let out = self.run().stdin(big).run_head1();
        assert_eq!(out.code, 0, "closed pipe: {}", out.stderr);
        assert!(
            out.stderr.is_empty(),
            "closed pipe must be quiet: {}",
            out.stderr
        );
        assert!(out.stdout.ends_with(b"\n"));
    }

    pub fn threads_do_not_change_output(&self) {
        let mut big = Vec::new();
        for _ in 0..50 {
            big.extend_from_slice(self.input);
            if !big.ends_with(b"\n") {
                big.push(b'\n');
            }
        }
        let one = self
            .run()
            .args(["--threads", "1"])
            .stdin(big.clone())
            .run()
            .expect_code(0);
        let many = self
            .run()
            .args(["--threads", "7"])
            .stdin(big)
            .run()
            .expect_code(0);
        assert!(
            one.stdout == many.stdout,
            "output differs between --threads 1 and 7"
        );
    }
}

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
        self.byte_order_mark_is_skipped(&reference);
        self.outputs_that_are_inputs_are_refused();
        self.output_mode_follows_umask();
        self.interrupted_output_leaves_no_temporary();
        self.control_characters_in_messages_are_escaped();
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

    /// `-o FILE` holds exactly what stdout would, also when stdout is closed; `-o FILE.zst`
    /// decompresses to it.
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
        // A closed stdout is no reason to lose an -o file.
        std::fs::remove_file(&out).unwrap();
        let r = self
            .run()
            .arg("-o")
            .arg(&out)
            .stdin(self.input)
            .run_closed_stdout();
        assert_eq!(r.code, 0, "-o with stdout closed: {}", r.stderr);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            reference,
            "-o with stdout closed"
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

    /// Copies of the input, each line given a distinct `_contract_copy` field, up to `bytes`.
    fn distinct_copies(&self, bytes: usize) -> Vec<u8> {
        let mut big = Vec::new();
        let mut n = 0u64;
        while big.len() < bytes {
            for line in self.input.split(|&b| b == b'\n') {
                let Some(rest) = line.strip_prefix(b"{") else {
                    continue;
                };
                n += 1;
                big.extend_from_slice(format!("{{\"_contract_copy\":{n}").as_bytes());
                if !rest.trim_ascii_start().starts_with(b"}") {
                    big.push(b',');
                }
                big.extend_from_slice(rest);
                big.push(b'\n');
            }
        }
        big
    }

    /// 1 MB of input, four times the engine's 256 KiB task: the workers really share the lines.
    pub fn threads_do_not_change_output(&self) {
        let big = self.distinct_copies(1 << 20);
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

    /// A UTF-8 byte order mark before the first line is skipped: on stdin, in a (mapped) file, in zstd.
    pub fn byte_order_mark_is_skipped(&self, reference: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend_from_slice(self.input);
        let plain = dir.path().join("bom.jsonl");
        let packed = dir.path().join("bom.jsonl.zst");
        std::fs::write(&plain, &with_bom).unwrap();
        std::fs::write(&packed, zstd(&with_bom)).unwrap();
        for (what, run) in [
            ("stdin", self.run().stdin(with_bom.clone())),
            ("file", self.run().arg(&plain)),
            (".zst file", self.run().arg(&packed)),
        ] {
            let out = run.run().expect_code(0);
            assert_eq!(out.stdout, reference, "BOM in {what}");
        }
    }

    /// `-o` or `--rejects` naming an input or each other: usage error naming both, input untouched.
    pub fn outputs_that_are_inputs_are_refused(&self) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, self.input).unwrap();
        let link = dir.path().join("link.jsonl");
        std::fs::hard_link(&input, &link).unwrap();
        let out = dir.path().join("out.jsonl");
        let out_again = dir.path().join(".").join("out.jsonl");
        let cases: [(&[&std::ffi::OsStr], &str, &str); 4] = [
            (&["-o".as_ref(), input.as_os_str()], "-o", "input"),
            (
                &["--rejects".as_ref(), link.as_os_str()],
                "--rejects",
                "input",
            ),
            (
                &[
                    "-o".as_ref(),
                    out.as_os_str(),
                    "--rejects".as_ref(),
                    out_again.as_os_str(),
                ],
                "--rejects",
                "-o",
            ),
            (
                &[
                    "-o".as_ref(),
                    out.as_os_str(),
                    "--on-error".as_ref(),
                    "skip".as_ref(),
                    "--rejects".as_ref(),
                    input.as_os_str(),
                ],
                "--rejects",
                "input",
            ),
        ];
        for (extra, flag, other) in cases {
            let r = self.run().arg(&input).args(extra).run();
            assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
            assert!(
                r.stderr.contains(flag) && r.stderr.contains(other),
                "{extra:?}: the message names neither {flag} nor {other}: {}",
                r.stderr
            );
            assert_eq!(std::fs::read(&input).unwrap(), self.input, "{extra:?}");
            assert!(!out.exists(), "{extra:?} wrote its output");
        }
    }

    /// `-o` files get the mode `> file` would give: 0666 less the umask.
    pub fn output_mode_follows_umask(&self) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (umask, mode) in [("022", 0o644), ("077", 0o600), ("002", 0o664)] {
            let out = dir.path().join(format!("out-{umask}.jsonl"));
            Run::new("sh")
                .arg("-c")
                .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
                .arg(self.bin)
                .args(self.args)
                .arg("-o")
                .arg(&out)
                .stdin(self.input)
                .run()
                .expect_code(0);
            let got = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode, "umask {umask}: mode {got:o}");
        }
    }

    /// SIGTERM and SIGINT in the middle of an `-o` run remove the temporary file; after `kill -9`
    /// the next run of the same output removes the one left behind.
    pub fn interrupted_output_leaves_no_temporary(&self) {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let is_temp = |n: &str| n.starts_with(".out.jsonl.") && n.ends_with(".tmp");
        for (signal, number) in [("TERM", 15), ("INT", 2)] {
            // The tool has read the input and waits for more on the open pipe.
            let (mut child, stdin) = self.run().arg("-o").arg(&out).start_waiting(self.input);
            wait_for_entry(dir.path(), is_temp, &mut child);
            kill(child.id(), signal);
            let status = child.wait().unwrap();
            drop(stdin);
            assert_eq!(status.signal(), Some(number), "SIG{signal}: {status:?}");
            let left = entries(dir.path());
            assert!(left.is_empty(), "after SIG{signal}: {left:?}");
        }
        let (mut child, stdin) = self.run().arg("-o").arg(&out).start_waiting(self.input);
        let stale = wait_for_entry(dir.path(), is_temp, &mut child);
        kill(child.id(), "KILL");
        child.wait().unwrap();
        drop(stdin);
        assert_eq!(
            entries(dir.path()),
            vec![stale.clone()],
            "kill -9 leaves it"
        );
        self.run()
            .arg("-o")
            .arg(&out)
            .stdin(self.input)
            .run()
            .expect_code(0);
        assert_eq!(
            entries(dir.path()),
            ["out.jsonl"],
            "{stale} was not removed"
        );
    }

    /// A file name with a newline and an escape sequence cannot forge lines or colour the terminal.
    pub fn control_characters_in_messages_are_escaped(&self) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a\nft-x: forged\x1b[31m.jsonl");
        let mut bad = self.input.to_vec();
        if !bad.ends_with(b"\n") {
            bad.push(b'\n');
        }
        bad.extend_from_slice(b"{\"broken\": \n");
        std::fs::write(&path, bad).unwrap();
        let r = self.run().arg(&path).run();
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            !r.stderr.contains('\x1b'),
            "raw ESC on stderr: {:?}",
            r.stderr
        );
        assert!(
            !r.stderr.lines().any(|l| l.starts_with("ft-x: forged")),
            "forged line: {:?}",
            r.stderr
        );
        assert!(
            r.stderr.contains("a\\nft-x: forged\\u{1b}[31m.jsonl:"),
            "escaped name missing: {:?}",
            r.stderr
        );
    }
}

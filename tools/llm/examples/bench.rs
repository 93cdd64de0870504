//! Client throughput against the loopback test server: requests/s at several concurrency levels,
//! the share of the ideal (concurrency / latency), and client CPU per request.
//!
//!     cargo run --release -p ftkit-llm --features test-server --example bench -- [--latency-ms 200]
//!         [--levels 1,16,64,256] [--rounds 10]
//!
//! The server runs in a child process (this binary with `--serve`), so the CPU figures (user + system
//! time of this process, from getrusage's counters in /proc/self/stat) are the client's alone. Each
//! level sends `rounds × concurrency` QA requests through the same code path as ft-qa-synth: the
//! ordered driver, the client (no cache), the openai backend and the lenient parser.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use anyhow::{Context, Result, bail};
use ftkit_core::cli::CommonArgs;
use ftkit_llm::driver::{Driver, Outcome};
use ftkit_llm::openai::{OpenAi, OpenAiConfig};
use ftkit_llm::testing::{Fault, FaultRule, ServerConfig, TestServer};
use ftkit_llm::{Client, Params, Task, parse, prompts};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU seconds of this process (fields 14 and 15 of /proc/self/stat, in clock ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After "pid (comm) ", field 3 (state) is index 0: utime is field 14 → index 11, stime index 12.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let latency = Duration::from_millis(arg(&args, "--latency-ms", 200));
    if args.iter().any(|a| a == "--serve") {
        // --faults MOD:REM:HITS:KIND,... (KIND: 429, 500, garbage, prose, stall; HITS: a number or max)
        let mut faults = Vec::new();
        for spec in arg(&args, "--faults", String::new())
            .split(',')
            .filter(|s| !s.is_empty())
        {
            let p: Vec<&str> = spec.split(':').collect();
            if p.len() != 4 {
                bail!("--faults: {spec}");
            }
            let fault = match p[3] {
                "429" => Fault::TooManyRequests { retry_after: 0 },
                "500" => Fault::ServerError,
                "garbage" => Fault::GarbageBody,
                "prose" => Fault::ProseContent,
                "stall" => Fault::Stall(Duration::from_secs(3)),
                k => bail!("--faults: unknown kind {k}"),
            };
            let first_hits = if p[2] == "max" {
                u32::MAX
            } else {
                p[2].parse()?
            };
            faults.push(FaultRule {
                modulo: p[0].parse()?,
                remainder: p[1].parse()?,
                first_hits,
                fault,
            });
        }
        let server = TestServer::start(ServerConfig { latency, faults })?;
        println!("{}", server.url());
        std::io::stdout().flush()?;
        // Serve until the parent closes our stdin.
        let mut sink = String::new();
        while std::io::stdin().lock().read_line(&mut sink)? > 0 {}
        return Ok(());
    }
    let levels: Vec<usize> = arg(&args, "--levels", "1,16,64,256".to_string())
        .split(',')
        .map(|s| s.trim().parse().context("--levels"))
        .collect::<Result<_>>()?;
    let rounds: usize = arg(&args, "--rounds", 10);

    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--serve", "--latency-ms", &latency.as_millis().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut url = String::new();
    std::io::BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut url)?;
    let url = url.trim().to_string();
    if url.is_empty() {
        bail!("the server did not start");
    }
    let dir = tempfile::tempdir()?;

    println!(
        "latency {} ms per request, server in a separate process at {url}",
        latency.as_millis()
    );
    println!(
        "| concurrency | requests | wall s | req/s | ideal req/s | % of ideal | client CPU ms/req |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &c in &levels {
        let n = (rounds * c).max(20);
        let path = dir.path().join(format!("in-{c}.jsonl"));
        let mut input = String::new();
        for i in 0..n {
            input.push_str(&serde_json::json!({"id": format!("c{i}"), "text": format!("Item {i} is a record. The value of item {i} is {}.", i * 7)}).to_string());
            input.push('\n');
        }
        std::fs::write(&path, input)?;
        let backend = OpenAi::new(OpenAiConfig {
            base_url: url.clone(),
            model: "bench".into(),
            key: None,
            key_env: "OPENAI_API_KEY".into(),
            params: Params::default(),
            timeout: Duration::from_secs(30),
            connections: c,
        });
        let client = Client::new(Box::new(backend));
        let common = CommonArgs {
            files: vec![path.to_string_lossy().into_owned()],
            ..Default::default()
        };
        let driver = Driver {
            common: &common,
            workers: c,
            tool: "bench",
        };
        let mut sink = std::io::sink();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut ok = 0u64;
        let (summary, _) = driver.run(
            &mut sink,
            |line: &str| {
                let v: serde_json::Value = serde_json::from_str(line)?;
                Ok(v["text"].as_str().unwrap_or_default().to_string())
            },
            |text: String| {
                let task = Task::Qa {
                    text,
                    n: 3,
                    lang: "en".into(),
                    doc_lang: "en".into(),
                };
                match client.generate(|a| prompts::request(task.clone(), None, a), parse::qa_pairs)
                {
                    Ok(a) => Outcome::Done {
                        lines: Vec::new(),
                        meta: a.value.len(),
                    },
                    Err(f) => Outcome::Failed {
                        reason: f.error.to_string(),
                        raw: f.raw,
                    },
                }
            },
            |_| ok += 1,
            || false,
        )?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        if summary.failed > 0 || ok != n as u64 {
            bail!("{} of {n} requests failed", summary.failed);
        }
        let rps = n as f64 / wall;
        let ideal = c as f64 / latency.as_secs_f64();
        println!(
            "| {c} | {n} | {wall:.2} | {rps:.1} | {ideal:.1} | {:.1}% | {:.3} |",
            100.0 * rps / ideal,
            1000.0 * cpu / n as f64
        );
    }
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}

//! `stocksync demo` end to end: the real binary, a short workload, and the final result;
//! piped, its output is plain lines; on a terminal (a pty from `script`), it redraws in place.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_runs_and_converges() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stocksync"))
        .args(["demo", "--duration", "8s", "--http-addr", "127.0.0.1:0"])
        .env("STOCKSYNC_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start stocksync demo");
    // Read both pipes on threads so a full pipe never blocks the demo.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // 8 s of workload, up to 15 s of convergence wait, up to 15 s of service stop, start-up.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the demo did not finish within 120 s\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(
        status.success(),
        "demo exited with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("converged"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("SET-001"), "stdout:\n{stdout}");
    // Piped: frames are appended line by line, without terminal escape codes.
    assert!(
        !stdout.contains('\x1b'),
        "escape codes in a pipe:\n{stdout:?}"
    );
    assert!(
        stdout.matches("s/8s] orders").count() >= 2,
        "one block per second, appended:\n{stdout}"
    );
    // The last screen points at the dashboard and the operator's kit.
    let tail = &stdout[stdout.rfind("stocksync demo: done").expect("done line")..];
    for wanted in [
        "dashboard:",
        "http://127.0.0.1:",
        "deploy/grafana/stocksync.json",
        "deploy/prometheus/alerts.yml",
    ] {
        assert!(tail.contains(wanted), "{wanted} at the end:\n{tail}");
    }
}

/// On a terminal the table is redrawn in place: `script` gives the demo a pty, and what the
/// terminal receives moves the cursor home and clears lines instead of scrolling new blocks.
#[test]
fn on_a_terminal_the_demo_redraws_in_place() {
    let script = ["/usr/bin/script", "/bin/script"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("util-linux `script` (Debian: bsdutils, always installed)");
    let command = format!(
        "{} demo --duration 3s --http-addr 127.0.0.1:0",
        env!("CARGO_BIN_EXE_stocksync")
    );
    let mut child = Command::new(script)
        .args(["-q", "-e", "-f", "-c", &command, "/dev/null"])
        .env("STOCKSYNC_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for script") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the demo on a pty did not finish within 120 s:\n{}",
                out.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let terminal = out.join().unwrap();
    assert!(status.success(), "exit {status}:\n{terminal}");
    let redraws = terminal.matches("\x1b[H").count();
    assert!(
        redraws >= 2,
        "cursor home once per frame ({redraws}):\n{terminal:?}"
    );
    assert!(
        terminal.contains("\x1b[K"),
        "lines are cleared, not appended"
    );
    assert!(
        terminal.contains("\x1b[?25h"),
        "the cursor is shown again at the end"
    );
    assert!(
        terminal.contains("deploy/prometheus/alerts.yml"),
        "the last screen points at the kit:\n{terminal}"
    );
}

//! Running the configured commands: the executor, the reboot and the
//! health hook. No shell is involved; arguments are expanded from a
//! template, and every run has a timeout after which the child is killed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// Longest message a StatusUpdate carries (node.proto: 4096 bytes).
pub const MAX_MESSAGE: usize = 4096;

/// The values a command template's placeholders stand for.
#[derive(Debug, Clone, Copy)]
pub struct Placeholders<'a> {
    /// `{archive}`: path of the pulled OCI image-layout tar.
    pub archive: &'a Path,
    /// `{image}`: the target image reference.
    pub image: &'a str,
    /// `{digest}`: the target's manifest digest.
    pub digest: &'a str,
}

/// `template` with every placeholder replaced (the config validated them).
pub fn expand(template: &[String], values: &Placeholders<'_>) -> Vec<String> {
    let archive = values.archive.display().to_string();
    template
        .iter()
        .map(|word| {
            word.replace("{archive}", &archive).replace("{image}", values.image).replace("{digest}", values.digest)
        })
        .collect()
}

/// How a command run ended, when it did not exit 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// It could not be started.
    #[error("cannot start `{program}`: {message}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        message: String,
    },
    /// It exited non-zero (or was killed by a signal).
    #[error("`{program}` {status}: {last_line}")]
    Exited {
        /// The program.
        program: String,
        /// `exited with 1` or `was killed by a signal`.
        status: String,
        /// Its last non-empty line of stderr (else of stdout), or a note that it printed nothing.
        last_line: String,
    },
    /// It ran longer than its timeout and was killed.
    #[error("`{program}` did not finish within {timeout:?} and was killed")]
    TimedOut {
        /// The program.
        program: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Runs `argv` (program first) with stdin closed, waits at most `limit`,
/// and kills it after, with everything it started (its own process group:
/// an executor's mkfs or rsync must not keep writing once the upgrade is
/// reported failed). Output is logged at debug level line by line.
pub async fn run(argv: &[String], limit: Duration) -> Result<(), CommandError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(CommandError::Spawn { program: String::new(), message: "empty command".into() });
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|e| CommandError::Spawn { program: program.clone(), message: e.to_string() })?;
    let stdout = child.stdout.take().map(|out| tokio::spawn(last_line(out, program.clone(), "stdout")));
    let stderr = child.stderr.take().map(|err| tokio::spawn(last_line(err, program.clone(), "stderr")));
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(CommandError::Spawn { program: program.clone(), message: e.to_string() }),
        Err(_) => {
            if let Some(group) = child.id().and_then(|id| i32::try_from(id).ok()) {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            let _ = child.kill().await;
            return Err(CommandError::TimedOut { program: program.clone(), timeout: limit });
        }
    };
    if status.success() {
        return Ok(());
    }
    // A grandchild may keep the pipes open: do not wait for it forever.
    let collect = |task: Option<tokio::task::JoinHandle<Option<String>>>| async move {
        match task {
            Some(task) => tokio::time::timeout(Duration::from_secs(2), task).await.ok().and_then(Result::ok).flatten(),
            None => None,
        }
    };
    let err_line = collect(stderr).await;
    let out_line = collect(stdout).await;
    let last_line = err_line.or(out_line).unwrap_or_else(|| "(it printed nothing)".to_string());
    let status = match status.code() {
        Some(code) => format!("exited with {code}"),
        None => "was killed by a signal".to_string(),
    };
    Err(CommandError::Exited { program: program.clone(), status, last_line: truncate(&last_line, MAX_MESSAGE / 2) })
}

/// Reads `pipe` to its end; returns its last non-empty line.
async fn last_line(pipe: impl AsyncRead + Unpin, program: String, stream: &'static str) -> Option<String> {
    let mut lines = BufReader::new(pipe).lines();
    let mut last = None;
    // A line that is not UTF-8 ends the read; what came before still counts.
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(program = %program, stream, "{line}");
        if !line.trim().is_empty() {
            last = Some(line.trim().to_string());
        }
    }
    last
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn placeholders_are_expanded_inside_words() {
        let template = argv(&["kairos-agent", "upgrade", "--source", "ocifile:{archive}", "{image}@{digest}", "{x}"]);
        let values = Placeholders {
            archive: Path::new("/var/lib/kairos-fleet/images/a.tar"),
            image: "quay.io/kairos/opensuse:v2.4.3",
            digest: "sha256:abc",
        };
        assert_eq!(
            expand(&template, &values),
            [
                "kairos-agent",
                "upgrade",
                "--source",
                "ocifile:/var/lib/kairos-fleet/images/a.tar",
                "quay.io/kairos/opensuse:v2.4.3@sha256:abc",
                "{x}"
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_last_stderr_line() {
        let script = argv(&["sh", "-c", "echo progress; echo first >&2; echo 'disk full' >&2; exit 3"]);
        match run(&script, Duration::from_secs(10)).await {
            Err(CommandError::Exited { status, last_line, .. }) => {
                assert_eq!((status.as_str(), last_line.as_str()), ("exited with 3", "disk full"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(run(&argv(&["sh", "-c", "exit 0"]), Duration::from_secs(10)).await, Ok(()));
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        let started = std::time::Instant::now();
        let result = run(&argv(&["sleep", "30"]), Duration::from_millis(200)).await;
        assert!(matches!(result, Err(CommandError::TimedOut { .. })), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // What it started is killed too.
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let result = run(&argv(&["sh", "-c", &script]), Duration::from_millis(300)).await;
        assert!(matches!(result, Err(CommandError::TimedOut { .. })), "{result:?}");
        let pid = std::fs::read_to_string(&pid_file).expect("pid").trim().to_string();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie waiting for a reaper that this test does not control.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        };
        while alive() {
            assert!(std::time::Instant::now() < end, "the grandchild {pid} survived the timeout");
            std::thread::sleep(Duration::from_millis(20));
        }
        let missing = run(&argv(&["/nonexistent/program"]), Duration::from_secs(1)).await;
        assert!(matches!(missing, Err(CommandError::Spawn { .. })), "{missing:?}");
    }

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("äbc", 1), "");
        assert_eq!(truncate("äbc", 3), "äb");
        assert_eq!(truncate("abc", 10), "abc");
    }
}

//! The kairosctl binary's commands that need no replica: `config ...`
//! against a config file in a temp dir, `completion`, `image inspect`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod kairosctl_support;
use kairosctl_support::Run;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const SECRET: &str = "kft_0123abcd_0123456789abcdef0123456789abcdef";

/// A temp dir holding ca.pem and admin.token; kairosctl runs in it with
/// `--config <dir>/kairos/config.toml`, isolated from the user's files.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), PEM).expect("write ca");
        std::fs::write(dir.path().join("admin.token"), format!("{SECRET}\n")).expect("write token");
        Dir { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("kairos").join("config.toml")
    }

    fn run(&self, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_kairosctl"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("KAIROS_CONFIG")
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", self.dir.path())
            .output()
            .expect("kairosctl runs");
        Run::of(args, &output)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let run = self.run(&[args, &["-o", "json"]].concat());
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{args:?} -o json: {e}: {}", run.stdout))
    }

    fn yaml(&self, args: &[&str]) -> serde_yaml_ng::Value {
        let run = self.run(&[args, &["-o", "yaml"]].concat());
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        serde_yaml_ng::from_str(&run.stdout).unwrap_or_else(|e| panic!("{args:?} -o yaml: {e}: {}", run.stdout))
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn config_contexts_round_trip_from_init_to_delete() {
    let d = Dir::new();
    let lab = ["config", "init", "--context", "lab", "--server", "https://127.0.0.1:7001", "--ca", "ca.pem"];
    let run = d.run(&[&lab[..], &["--token", SECRET]].concat());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.starts_with("context \"lab\" created in "), "{}", run.stdout);
    assert_eq!(mode(&d.config()), 0o600, "the file holds an inline token");

    // The same name again is refused, and the file is left as it was.
    let before = std::fs::read_to_string(d.config()).expect("read config");
    let run = d.run(&[&lab[..], &["--token", "kft_ffffffff_other"]].concat());
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("context \"lab\" already exists"), "{}", run.stderr);
    assert!(run.stderr.contains("hint: pass --force"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(d.config()).expect("read config"), before);

    let prod = [
        "config",
        "init",
        "--context",
        "prod",
        "--server",
        "https://10.0.0.1:7443",
        "--server",
        "https://10.0.0.2:7443",
        "--ca",
        "ca.pem",
        "--token-file",
        "admin.token",
        "-o",
        "json",
    ];
    let created: serde_json::Value = serde_json::from_str(&d.run(&prod).stdout).expect("JSON");
    assert_eq!(created["action"], "created");
    assert_eq!(created["current_context"], "lab", "the first context stays current");

    // get-contexts: a table with a header, and the same rows as JSON and YAML.
    let run = d.run(&["config", "get-contexts"]);
    assert_eq!(run.code, Some(0));
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["CURRENT", "NAME", "ENDPOINTS", "CA", "TOKEN"]);
    let lab_row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!((lab_row[0], lab_row[1], lab_row[2], lab_row[4]), ("*", "lab", "https://127.0.0.1:7001", "inline"));
    let prod_row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(prod_row[0], "prod", "not current: the first cell is empty");
    assert_eq!(prod_row[1], "https://10.0.0.1:7443,https://10.0.0.2:7443");
    assert_eq!(prod_row[3], "file");
    let list = d.json(&["config", "get-contexts"]);
    assert_eq!(list["current_context"], "lab");
    assert_eq!(list["contexts"][1]["name"], "prod");
    assert_eq!(list["contexts"][1]["token"], "file");
    assert_eq!(list["contexts"][1]["current"], false);
    let ca = d.dir.path().join("ca.pem").display().to_string();
    assert_eq!(list["contexts"][1]["ca_file"], ca.as_str(), "flag paths are stored absolute");
    let list = d.yaml(&["config", "get-contexts"]);
    assert_eq!(list["contexts"][0]["token"].as_str(), Some("inline"));
    assert_eq!(list["contexts"][0]["current"].as_bool(), Some(true));

    // use-context, then current-context; an unknown name lists the known ones.
    let run = d.run(&["config", "use-context", "prod"]);
    assert_eq!((run.code, run.stdout.as_str()), (Some(0), "switched to context \"prod\"\n"));
    let run = d.run(&["config", "current-context"]);
    assert_eq!((run.code, run.stdout.as_str()), (Some(0), "prod\n"));
    assert_eq!(d.yaml(&["config", "current-context"])["current_context"].as_str(), Some("prod"));
    let run = d.run(&["config", "use-context", "staging"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("no context named \"staging\"") && run.stderr.contains("known: lab, prod"),
        "{}",
        run.stderr
    );
    assert_eq!(d.json(&["config", "current-context"])["current_context"], "prod", "unchanged by the refusal");

    // view: inline tokens redacted in every format unless --raw.
    let run = d.run(&["config", "view"]);
    assert_eq!(run.code, Some(0));
    assert!(!run.stdout.contains(SECRET), "{}", run.stdout);
    let shown: toml::Value = toml::from_str(&run.stdout).expect("the table form is the file's TOML");
    assert_eq!(shown["current_context"].as_str(), Some("prod"));
    assert_eq!(shown["contexts"]["lab"]["token"].as_str(), Some("REDACTED"));
    let view = d.json(&["config", "view"]);
    assert_eq!(view["contexts"]["lab"]["token"], "REDACTED");
    assert_eq!(view["contexts"]["lab"]["endpoints"][0], "https://127.0.0.1:7001");
    assert_eq!(view["contexts"]["prod"]["endpoints"].as_array().map(Vec::len), Some(2));
    assert!(view["contexts"]["prod"]["token_file"].as_str().is_some_and(|f| f.ends_with("admin.token")));
    assert!(view["contexts"]["prod"].get("token").is_none(), "no inline token to show");
    let view = d.yaml(&["config", "view"]);
    assert_eq!(view["contexts"]["lab"]["token"].as_str(), Some("REDACTED"));
    assert!(!serde_yaml_ng::to_string(&view).expect("yaml").contains(SECRET));
    let raw = d.json(&["config", "view", "--raw"]);
    assert_eq!(raw["contexts"]["lab"]["token"], SECRET);

    // delete-context: gone from the list; deleting the current one leaves none current.
    let run = d.run(&["config", "delete-context", "lab"]);
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.starts_with("deleted context \"lab\""), "{}", run.stdout);
    let list = d.json(&["config", "get-contexts"]);
    let names: Vec<&str> =
        list["contexts"].as_array().expect("array").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["prod"]);
    let run = d.run(&["config", "delete-context", "lab"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("known: prod"), "{}", run.stderr);
    let run = d.run(&["config", "delete-context", "prod"]);
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.contains("no context is current"), "{}", run.stdout);
    let run = d.run(&["config", "current-context"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("no context selected"), "{}", run.stderr);
    assert_eq!(mode(&d.config()), 0o600, "every rewrite keeps the file private");
}

#[test]
fn config_init_with_force_replaces_and_file_paths_are_checked() {
    let d = Dir::new();
    let base = ["config", "init", "--server", "https://127.0.0.1:7001", "--ca", "ca.pem"];
    let run = d.run(&base);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(d.json(&["config", "current-context"])["current_context"], "default", "the default name");
    assert_eq!(d.json(&["config", "get-contexts"])["contexts"][0]["token"], "none");

    let run = d.run(&[&base[..], &["--force", "--token-file", "admin.token", "-o", "yaml"]].concat());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let changed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&run.stdout).expect("YAML");
    assert_eq!(changed["action"].as_str(), Some("replaced"));
    assert_eq!(d.json(&["config", "get-contexts"])["contexts"][0]["token"], "file");

    let server = ["--server", "https://127.0.0.1:7001"];
    for (extra, want) in [
        (&[&server[..], &["--ca", "missing.pem"]].concat(), "missing.pem: cannot read it"),
        (&[&server[..], &["--ca", "admin.token"]].concat(), "holds no PEM certificate"),
        (&[&server[..], &["--ca", "ca.pem", "--token-file", "missing.token"]].concat(), "--token-file"),
        (&[&server[..], &["--ca", "ca.pem", "--token", SECRET, "--token-file", "admin.token"]].concat(), "not both"),
        (&vec!["--server", "http://127.0.0.1:7001", "--ca", "ca.pem"], "must start with https://"),
        (&vec!["--ca", "ca.pem"], "needs at least one --server"),
    ] {
        let run = d.run(&[&["config", "init", "--context", "x"][..], extra].concat());
        assert_eq!(run.code, Some(2), "{extra:?}");
        assert!(run.stderr.contains(want), "{extra:?}: {}", run.stderr);
    }
    let names = d.json(&["config", "get-contexts"])["contexts"].as_array().map(Vec::len);
    assert_eq!(names, Some(1), "no refused context was written");
}

#[test]
fn config_commands_without_a_file_say_how_to_make_one() {
    let d = Dir::new();
    for args in [&["config", "view"][..], &["config", "get-contexts"], &["config", "use-context", "x"]] {
        let run = d.run(args);
        assert_eq!(run.code, Some(2), "{args:?}");
        assert!(run.stderr.contains("no kairosctl config at"), "{}", run.stderr);
        assert!(run.stderr.contains("hint: create one with `kairosctl config init"), "{}", run.stderr);
    }
    // So do commands that call a replica.
    let run = d.run(&["cluster", "status"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("kairosctl config init"), "{}", run.stderr);
}

#[test]
fn completions_generate_for_every_shell_and_name_the_commands() {
    let d = Dir::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let run = d.run(&["completion", shell]);
        assert_eq!(run.code, Some(0), "{shell}: {}", run.stderr);
        for word in ["rollout", "config", "use-context", "enroll-tokens"] {
            assert!(run.stdout.contains(word), "{shell} completion lacks {word:?}");
        }
    }
    let run = d.run(&["completion", "tcsh"]);
    assert_eq!(run.code, Some(2), "clap refuses an unknown shell as a usage error");
}

#[test]
fn image_inspect_renders_as_json_yaml_and_a_table() {
    let d = Dir::new();
    let reference = "quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.0-k3sv1.31.1-k3s1";
    let json = d.json(&["image", "inspect", reference]);
    assert_eq!((json["flavor"].as_str(), json["release"].as_str()), (Some("ubuntu"), Some("v3.5.0")));
    let yaml = d.yaml(&["image", "inspect", reference]);
    assert_eq!(yaml["flavor_release"].as_str(), Some("24.04"));
    let run = d.run(&["image", "inspect", reference]);
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.contains("ubuntu") && run.stdout.contains("v3.5.0"), "{}", run.stdout);
    let run = d.run(&["image", "inspect", "quay.io/kairos/ubuntu:latest"]);
    assert_eq!(run.code, Some(2));
}

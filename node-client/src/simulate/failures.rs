//! `--fail-file`: which simulated upgrades end in a fallback boot.
//!
//! One rule a line; `#` starts a comment, blank lines are ignored:
//!
//! ```text
//! *                     every upgrade fails
//! ubuntu                every upgrade of an ubuntu node
//! opensuse/standard     opensuse standard (k3s) nodes only
//! alpine-ubuntu@v1.7.0  only upgrades to v1.7.0 (also `*@v1.7.0`, `*/core@v1.7.0`)
//! ```
//!
//! Rules apply to rollbacks too: a rule without `@` also fails a rollback,
//! which is how a test simulates a rollback that does not boot either.
//! The file is read again at every upgrade's reboot, so a test "publishes a
//! fixed image" by editing or emptying it while the simulation runs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use kairos_fleet_domain::fleet::model::Variant;
use semver::Version;

/// One rule: which nodes, and optionally which target release, fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailRule {
    /// Flavor id, lowercase; None = any flavor (`*`).
    pub flavor: Option<String>,
    /// Variant; None = both.
    pub variant: Option<Variant>,
    /// Target release; None = any.
    pub release: Option<Version>,
}

impl FailRule {
    /// True when an upgrade of a `flavor`/`variant` node to `target` fails.
    pub fn matches(&self, flavor: &str, variant: Variant, target: &Version) -> bool {
        self.flavor.as_deref().is_none_or(|f| f.eq_ignore_ascii_case(flavor))
            && self.variant.is_none_or(|v| v == variant)
            && self.release.as_ref().is_none_or(|r| r == target)
    }

    /// Parses one rule (comment and surrounding blanks already removed).
    pub fn parse(text: &str) -> Result<FailRule, String> {
        if text.chars().any(char::is_whitespace) {
            return Err("one rule a line, without blanks inside: FLAVOR[/VARIANT][@vX.Y.Z] or *".into());
        }
        let (who, release) = match text.split_once('@') {
            Some((who, release)) => {
                let bare = release.strip_prefix('v').unwrap_or(release);
                let release = Version::parse(bare)
                    .map_err(|e| format!("release {release:?} after `@` is not a semver such as v1.7.0: {e}"))?;
                (who, Some(release))
            }
            None => (text, None),
        };
        let (flavor, variant) = match who.split_once('/') {
            Some((flavor, variant)) => (flavor, Some(variant)),
            None => (who, None),
        };
        let flavor = match flavor {
            "*" => None,
            "" => return Err("names no flavor: use a flavor id such as `ubuntu`, or `*` for every flavor".into()),
            f if f.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) => {
                Some(f.to_ascii_lowercase())
            }
            f => return Err(format!("flavor {f:?} may hold only letters, digits, `-`, `_` and `.`")),
        };
        let variant = match variant.map(str::to_ascii_lowercase).as_deref() {
            None => None,
            Some("core") => Some(Variant::Core),
            Some("standard") => Some(Variant::Standard),
            Some(other) => return Err(format!("variant {other:?} must be `core` or `standard`")),
        };
        Ok(FailRule { flavor, variant, release })
    }
}

impl fmt::Display for FailRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flavor.as_deref().unwrap_or("*"))?;
        if let Some(variant) = self.variant {
            write!(f, "/{variant}")?;
        }
        if let Some(release) = &self.release {
            write!(f, "@v{release}")?;
        }
        Ok(())
    }
}

/// A line of a fail file that is not a rule; the rule is ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} {text:?}: {rule}")]
pub struct FailLineError {
    /// Line number, from 1.
    pub line: usize,
    /// The line as written.
    pub text: String,
    /// What is wrong with it.
    pub rule: String,
}

/// The rules of a fail file, and its lines that are not rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailRules {
    /// Rules in file order.
    pub rules: Vec<FailRule>,
    /// Lines that could not be parsed.
    pub errors: Vec<FailLineError>,
}

impl FailRules {
    /// Parses a fail file's text.
    pub fn parse(text: &str) -> FailRules {
        let mut out = FailRules::default();
        for (index, raw) in text.lines().enumerate() {
            let rule = raw.split_once('#').map_or(raw, |(rule, _)| rule).trim();
            if rule.is_empty() {
                continue;
            }
            match FailRule::parse(rule) {
                Ok(rule) => out.rules.push(rule),
                Err(why) => out.errors.push(FailLineError { line: index + 1, text: raw.to_string(), rule: why }),
            }
        }
        out
    }

    /// The first rule that fails an upgrade of a `flavor`/`variant` node to `target`.
    pub fn failing(&self, flavor: &str, variant: Variant, target: &Version) -> Option<&FailRule> {
        self.rules.iter().find(|r| r.matches(flavor, variant, target))
    }
}

/// What the file held at the last read, so an unchanged file is neither
/// parsed nor complained about again by every node.
struct LastRead {
    content: Result<String, String>,
    rules: Arc<FailRules>,
}

/// A fail file, read again on every [`FailFile::rules`].
pub struct FailFile {
    path: PathBuf,
    last: Mutex<Option<LastRead>>,
}

impl FailFile {
    /// The fail file at `path` (it need not exist).
    pub fn new(path: impl Into<PathBuf>) -> FailFile {
        FailFile { path: path.into(), last: Mutex::new(None) }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rules the file holds now; a missing file holds none. An
    /// unreadable file or a line that is not a rule is logged once for each
    /// content the file takes, not once per node.
    pub fn rules(&self) -> Arc<FailRules> {
        let content = match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e.to_string()),
        };
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = last.as_ref().filter(|l| l.content == content) {
            return Arc::clone(&last.rules);
        }
        let rules = match &content {
            Ok(text) => FailRules::parse(text),
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "cannot read the fail file; no upgrade fails");
                FailRules::default()
            }
        };
        for error in &rules.errors {
            tracing::error!(file = %self.path.display(), %error, "fail file: not a rule; ignored");
        }
        let rules = Arc::new(rules);
        *last = Some(LastRead { content, rules: Arc::clone(&rules) });
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    #[test]
    fn rules_name_a_flavor_a_variant_and_a_target_release() {
        let rules = FailRules::parse(
            "# broken images\n\nubuntu\nopensuse/standard  # k3s only\n*/core@v1.7.0\nalpine-ubuntu@1.6.1\n",
        );
        assert!(rules.errors.is_empty(), "{:?}", rules.errors);
        let shown: Vec<String> = rules.rules.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["ubuntu", "opensuse/standard", "*/core@v1.7.0", "alpine-ubuntu@v1.6.1"]);

        let t = v("1.6.1");
        assert!(rules.failing("ubuntu", Variant::Core, &t).is_some());
        assert!(rules.failing("Ubuntu", Variant::Standard, &t).is_some(), "flavors compare without case");
        assert!(rules.failing("ubuntu-22-lts", Variant::Standard, &t).is_none(), "flavor ids match whole");
        assert!(rules.failing("opensuse", Variant::Standard, &t).is_some());
        assert!(rules.failing("opensuse", Variant::Core, &t).is_none());
        assert!(rules.failing("opensuse", Variant::Core, &v("1.7.0")).is_some(), "*/core@v1.7.0");
        assert!(rules.failing("alpine-ubuntu", Variant::Core, &t).is_some());
        assert!(rules.failing("alpine-ubuntu", Variant::Standard, &v("1.6.2")).is_none());
    }

    #[test]
    fn star_fails_everything_and_an_empty_file_nothing() {
        let all = FailRules::parse("*\n");
        assert!(all.failing("anything", Variant::Standard, &v("9.9.9")).is_some());
        let none = FailRules::parse("# nothing broken today\n\n");
        assert_eq!(none, FailRules::default());
        assert!(none.failing("ubuntu", Variant::Core, &v("1.6.0")).is_none());
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number_and_the_other_rules_still_apply() {
        let rules = FailRules::parse("ubuntu/fat\nopensuse\n@v1.7.0\nalpine@seven\nfedora core\nd*b\n");
        assert_eq!(rules.rules.len(), 1, "{rules:?}");
        assert!(rules.failing("opensuse", Variant::Core, &v("1.7.0")).is_some());
        let lines: Vec<usize> = rules.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 3, 4, 5, 6]);
        let first = rules.errors[0].to_string();
        assert!(first.contains("line 1") && first.contains("ubuntu/fat") && first.contains("core"), "{first}");
        assert!(rules.errors[2].rule.contains("semver"), "{:?}", rules.errors[2]);
    }

    #[test]
    fn the_file_is_read_again_on_every_call_and_a_missing_one_fails_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = FailFile::new(dir.path().join("fail"));
        assert!(file.rules().rules.is_empty(), "missing file");
        std::fs::write(file.path(), "ubuntu\n").expect("write");
        assert_eq!(file.rules().rules.len(), 1);
        std::fs::write(file.path(), "").expect("empty it");
        assert!(file.rules().rules.is_empty(), "a fixed image was published");
        std::fs::write(file.path(), "*\nnot a rule\n").expect("write");
        let rules = file.rules();
        assert_eq!((rules.rules.len(), rules.errors.len()), (1, 1));
        assert!(Arc::ptr_eq(&rules, &file.rules()), "an unchanged file is not parsed again");
    }
}

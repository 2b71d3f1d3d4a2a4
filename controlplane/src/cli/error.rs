//! kairosctl's errors: what went wrong, a hint a person can act on, and the
//! exit code scripts branch on.
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure |
//! | 2 | bad input: config file, flags, or a request the server refused as invalid (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`) |
//! | 3 | `NOT_FOUND` |
//! | 4 | `PERMISSION_DENIED`, `UNAUTHENTICATED` |
//! | 5 | no replica could serve the call (`UNAVAILABLE`, `DEADLINE_EXCEEDED`) |
//! | 6 | `rollout watch` (or `create --watch`): the rollout ended aborted |

use std::fmt::{self, Write as _};

use tonic::Code;

use super::leader::LeaderHint;
use crate::cli_config::ConfigError;
use crate::security::Role;

/// Exit code of a failure not covered below.
pub const EXIT_OTHER: u8 = 1;
/// Exit code of bad input: config, flags, or a request refused as invalid.
pub const EXIT_INVALID: u8 = 2;
/// Exit code of `NOT_FOUND`.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code of `PERMISSION_DENIED` and `UNAUTHENTICATED`.
pub const EXIT_DENIED: u8 = 4;
/// Exit code of a call no replica could serve in time.
pub const EXIT_UNAVAILABLE: u8 = 5;
/// Exit code of `rollout watch` when the rollout it followed was aborted.
pub const EXIT_ROLLOUT_ABORTED: u8 = 6;

/// Why a kairosctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config file or a file it names could not be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A flag or setting is invalid or missing.
    #[error("{message}")]
    Usage {
        /// What is wrong, naming the flag or setting.
        message: String,
        /// How to fix it.
        hint: Option<String>,
    },
    /// A gRPC call failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The result could not be rendered or written.
    #[error("cannot write the output: {0}")]
    Output(String),
    /// A followed rollout ended aborted.
    #[error("rollout {rollout_id} was aborted{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    RolloutAborted {
        /// The rollout.
        rollout_id: String,
        /// Why, as the server put it; may be empty.
        reason: String,
    },
    /// Several items failed and each was reported already.
    #[error("{summary}")]
    Reported {
        /// What failed, in one line.
        summary: String,
        /// Exit code of the first failure.
        exit_code: u8,
    },
}

/// One endpoint kairosctl tried, and what happened there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The endpoint URL.
    pub endpoint: String,
    /// What happened, e.g. `unreachable: tcp connect error: Connection refused`.
    pub outcome: String,
}

/// A failed gRPC call, with everything needed to explain it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method}: {}", describe(self))]
pub struct RpcError {
    /// The call, `Service/Method`.
    pub method: &'static str,
    /// The final status code.
    pub code: Code,
    /// The server's message (or the transport's).
    pub message: String,
    /// Endpoints tried, in order.
    pub tried: Vec<Attempt>,
    /// The last leader hint received, if any.
    pub leader: Option<LeaderHint>,
}

fn describe(e: &RpcError) -> String {
    match e.code {
        Code::InvalidArgument | Code::FailedPrecondition => format!("refused: {}", e.message),
        Code::NotFound => format!("not found: {}", e.message),
        Code::PermissionDenied => format!("permission denied: {}", e.message),
        Code::Unauthenticated => format!("not authenticated: {}", e.message),
        Code::Unavailable => format!("no replica could serve the call: {}", e.message),
        Code::DeadlineExceeded => format!("timed out: {}", e.message),
        code => format!("{}: {}", code.description(), e.message),
    }
}

/// The exit code for a failed call with status `code`.
pub fn exit_code_for(code: Code) -> u8 {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition => EXIT_INVALID,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::PermissionDenied | Code::Unauthenticated => EXIT_DENIED,
        Code::Unavailable | Code::DeadlineExceeded => EXIT_UNAVAILABLE,
        _ => EXIT_OTHER,
    }
}

impl CliError {
    /// A usage error with a hint.
    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> CliError {
        CliError::Usage { message: message.into(), hint: Some(hint.into()) }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage { .. } => EXIT_INVALID,
            CliError::Rpc(e) => exit_code_for(e.code),
            CliError::Output(_) => EXIT_OTHER,
            CliError::RolloutAborted { .. } => EXIT_ROLLOUT_ABORTED,
            CliError::Reported { exit_code, .. } => *exit_code,
        }
    }

    /// What to do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Config(ConfigError::NoDefaultPath) => None,
            CliError::Config(_) => Some("fix the config file, or pass --config, --context or --server".into()),
            CliError::Usage { hint, .. } => hint.clone(),
            CliError::Rpc(e) => e.hint(),
            CliError::RolloutAborted { rollout_id, .. } => Some(format!(
                "upgraded nodes stay where they are: see `kairosctl rollout status {rollout_id} --nodes`, \
                 move them back with `kairosctl rollout rollback {rollout_id}`"
            )),
            CliError::Output(_) | CliError::Reported { .. } => None,
        }
    }

    /// `error: ...` and, when there is one, `hint: ...`, ready for stderr.
    pub fn report(&self) -> String {
        let mut text = format!("error: {self}\n");
        if let Some(hint) = self.hint() {
            let _ = writeln!(text, "hint: {hint}");
        }
        text
    }

    /// The status code, when this is a failed call.
    pub fn code(&self) -> Option<Code> {
        match self {
            CliError::Rpc(e) => Some(e.code),
            _ => None,
        }
    }
}

impl RpcError {
    /// What to do about it. Invalid requests get none: the server's
    /// message already names the field and the rule.
    pub fn hint(&self) -> Option<String> {
        match self.code {
            Code::PermissionDenied | Code::Unauthenticated => Some(match roles_in(&self.message) {
                Some((have, need)) => {
                    format!("your token's role is {have}; this call needs {need}: ask an admin for a token with role {need}")
                }
                None => "check the token: --token-file, or the context's token_file / token in the config".into(),
            }),
            Code::NotFound => Some("check the id or name; list what exists first".into()),
            Code::Unavailable | Code::DeadlineExceeded => Some(self.unavailable_hint()),
            _ => None,
        }
    }

    fn unavailable_hint(&self) -> String {
        let mut hint = String::new();
        if !self.tried.is_empty() {
            let tried: Vec<String> = self.tried.iter().map(|a| format!("{} ({})", a.endpoint, a.outcome)).collect();
            let _ = write!(hint, "tried {}", tried.join(", "));
        }
        if let Some(leader) = &self.leader {
            let _ = write!(hint, "{}leader: {leader}", if hint.is_empty() { "" } else { "; " });
        }
        if !hint.is_empty() {
            hint.push_str("; ");
        }
        hint.push_str(if self.code == Code::DeadlineExceeded {
            "raise --timeout, or check the replica's load"
        } else {
            "check that the replicas are running and reachable, or pass --server"
        });
        hint
    }
}

/// `(token's role, role needed)` when a denial message names both, in
/// either of the server's phrasings: `needs role Y but the token has role X`
/// or `your token's role is X; this call needs Y`.
pub fn roles_in(message: &str) -> Option<(Role, Role)> {
    let lower = message.to_ascii_lowercase();
    let role_after = |marks: &[&str]| {
        marks.iter().find_map(|mark| {
            let start = lower.find(mark)? + mark.len();
            let word: String = lower[start..].chars().take_while(char::is_ascii_alphabetic).collect();
            word.parse::<Role>().ok()
        })
    };
    let have = role_after(&["has role ", "role is "])?;
    let need = role_after(&["needs role ", "needs ", "requires role ", "requires "])?;
    Some((have, need))
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: Code, message: &str) -> CliError {
        CliError::Rpc(RpcError { method: "S/M", code, message: message.into(), tried: vec![], leader: None })
    }

    #[test]
    fn status_codes_map_to_exit_codes() {
        let cases = [
            (Code::InvalidArgument, 2),
            (Code::FailedPrecondition, 2),
            (Code::NotFound, 3),
            (Code::PermissionDenied, 4),
            (Code::Unauthenticated, 4),
            (Code::Unavailable, 5),
            (Code::DeadlineExceeded, 5),
            (Code::AlreadyExists, 1),
            (Code::Internal, 1),
            (Code::Unknown, 1),
        ];
        for (code, exit) in cases {
            assert_eq!(exit_code_for(code), exit, "{code:?}");
            assert_eq!(rpc(code, "m").exit_code(), exit, "{code:?}");
        }
        assert_eq!(CliError::usage("bad --timeout", "e.g. 30s").exit_code(), 2);
        assert_eq!(CliError::Config(ConfigError::NoDefaultPath).exit_code(), 2);
    }

    #[test]
    fn invalid_request_prints_the_servers_message_without_a_hint() {
        let err = rpc(Code::InvalidArgument, "image_ref \"x\": follows none of the Kairos tag grammars");
        assert!(err.report().contains("follows none of the Kairos tag grammars"), "{}", err.report());
        assert_eq!(err.hint(), None);
    }

    #[test]
    fn denial_names_both_roles_in_either_phrasing() {
        for message in [
            "this call needs role admin but the token has role viewer; ask an admin for a admin token",
            "your token's role is viewer; this call needs admin",
        ] {
            assert_eq!(roles_in(message), Some((Role::Viewer, Role::Admin)), "{message}");
            let hint = rpc(Code::PermissionDenied, message).hint().expect("hint");
            assert!(hint.contains("your token's role is viewer; this call needs admin"), "{hint}");
        }
        let hint = rpc(Code::Unauthenticated, "token 0123abcd was revoked").hint().expect("hint");
        assert!(hint.contains("--token-file"), "{hint}");
    }

    #[test]
    fn unavailable_hint_names_the_endpoints_tried_and_the_leader() {
        let err = CliError::Rpc(RpcError {
            method: "ClusterService/AddReplica",
            code: Code::Unavailable,
            message: "not the leader".into(),
            tried: vec![
                Attempt { endpoint: "https://a:1".into(), outcome: "unreachable: connection refused".into() },
                Attempt { endpoint: "https://b:1".into(), outcome: "not the leader".into() },
            ],
            leader: Some(LeaderHint { id: Some(3), address: Some("c:1".into()) }),
        });
        let report = err.report();
        assert!(report.contains("https://a:1 (unreachable: connection refused)"), "{report}");
        assert!(report.contains("https://b:1 (not the leader)"), "{report}");
        assert!(report.contains("leader: replica 3 at c:1"), "{report}");
    }
}

//! Leader hints: how a replica that cannot serve a call tells the client
//! where the leader is.
//!
//! The convention, shared with the server's API handlers: a call that must
//! run on the leader and reaches a replica that cannot serve or forward it
//! fails with `UNAVAILABLE`, and
//! - its message contains `leader is <id> at <host:port>` or, as the
//!   server's `api::unavailable` writes it, `leader: replica <id> at
//!   <host:port>` (`at ...` left out when the address is unknown), and/or
//! - its metadata carries [`LEADER_METADATA_KEY`] = `<host:port>` (the
//!   leader's public API address; an `https://` prefix is tolerated).
//!
//! The metadata, being structured, wins over the message for the address.

use std::fmt;

use tonic::{Code, Status};

/// Response metadata key a replica sets to the leader's public API address.
pub const LEADER_METADATA_KEY: &str = "kairos-leader";

/// Where a replica says the leader is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's replica id, when the replica named it.
    pub id: Option<u64>,
    /// The leader's public API address, `host:port`, when known.
    pub address: Option<String>,
}

impl LeaderHint {
    /// The hint an `UNAVAILABLE` status carries, if any. Other codes never
    /// carry one: only a replica that cannot serve the call redirects.
    pub fn from_status(status: &Status) -> Option<LeaderHint> {
        if status.code() != Code::Unavailable {
            return None;
        }
        let from_message = LeaderHint::parse_message(status.message()).unwrap_or_default();
        let from_metadata = status
            .metadata()
            .get(LEADER_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(normalize_address);
        let hint = LeaderHint { id: from_message.id, address: from_metadata.or(from_message.address) };
        (hint.id.is_some() || hint.address.is_some()).then_some(hint)
    }

    /// Reads `leader is <id> at <host:port>`, or the server's own
    /// `leader: replica <id> at <host:port>` (case-insensitive, `at ...`
    /// optional), out of a status message. The last mention that names a
    /// leader wins: the server appends its own view after any text it
    /// passes on (a forwarded replica's message may name an older leader).
    pub fn parse_message(message: &str) -> Option<LeaderHint> {
        // (mark, whether `replica ` must follow it)
        const MARKS: [(&str, bool); 2] = [("leader is ", false), ("leader: ", true)];
        // ASCII lowercasing keeps byte offsets, so indices carry over.
        let lower = message.to_ascii_lowercase();
        let mut starts: Vec<(usize, bool)> = MARKS
            .iter()
            .flat_map(|&(mark, replica)| lower.match_indices(mark).map(move |(at, _)| (at + mark.len(), replica)))
            .collect();
        starts.sort_unstable();
        starts.into_iter().rev().find_map(|(start, replica)| parse_after_mark(&message[start..], replica))
    }

    /// `https://<address>`, the URL to retry on.
    pub fn url(&self) -> Option<String> {
        self.address.as_ref().map(|address| format!("https://{address}"))
    }
}

/// The hint in `rest`, the text after a `leader is ` / `leader: ` mark;
/// after `leader: ` only `replica <id>` names one (`leader: 10.0.0.2:7001`
/// must not read as replica 10).
fn parse_after_mark(rest: &str, needs_replica: bool) -> Option<LeaderHint> {
    let rest = match rest.strip_prefix("replica ") {
        Some(rest) => rest,
        None if needs_replica => return None,
        None => rest,
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = rest[..digits].parse::<u64>().ok().filter(|id| *id > 0);
    let address = rest[digits..]
        .strip_prefix(" at ")
        .and_then(|tail| tail.split_whitespace().next())
        .and_then(|word| normalize_address(word.trim_start_matches(['`', '"', '\''])));
    (id.is_some() || address.is_some()).then_some(LeaderHint { id, address })
}

impl fmt::Display for LeaderHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.id, &self.address) {
            (Some(id), Some(address)) => write!(f, "replica {id} at {address}"),
            (Some(id), None) => write!(f, "replica {id} (address unknown)"),
            (None, Some(address)) => write!(f, "{address}"),
            (None, None) => write!(f, "unknown"),
        }
    }
}

/// `host:port` from `host:port` or `https://host:port[/]`, with trailing
/// punctuation of a sentence removed; `None` unless it ends in a port.
fn normalize_address(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://")).unwrap_or(text);
    // A valid address ends in its port's digits; anything after is prose.
    let text = text.trim_end_matches(|c: char| !c.is_ascii_digit());
    let (host, port) = text.rsplit_once(':')?;
    let host_ok = !host.is_empty()
        && !host.contains(['/', '@', '?', '#'])
        && (host.starts_with('[') == host.ends_with(']'))
        && (!host.contains(':') || host.starts_with('['));
    (host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)).then(|| format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    fn hint(id: Option<u64>, address: Option<&str>) -> Option<LeaderHint> {
        Some(LeaderHint { id, address: address.map(str::to_string) })
    }

    #[test]
    fn leader_hint_is_read_from_the_message() {
        let cases = [
            ("not the leader; leader is 2 at 127.0.0.1:7002", hint(Some(2), Some("127.0.0.1:7002"))),
            ("Leader is 3 at fleet-3.example:7443.", hint(Some(3), Some("fleet-3.example:7443"))),
            ("leader is 4 at https://fleet-4:7443/ (term 9)", hint(Some(4), Some("fleet-4:7443"))),
            ("leader is 5 at [::1]:7005", hint(Some(5), Some("[::1]:7005"))),
            ("leader is `6` at `10.1.2.3:7001`", None), // the id must follow directly
            ("forwarding failed: leader is replica 7", hint(Some(7), None)),
            ("leader is 8 at nowhere", hint(Some(8), None)),
            ("no leader elected yet", None),
            ("leader is unknown", None),
            ("leader is 0", None),
            // The server's own phrasing (`api::unavailable`).
            ("no leader accepted the write within 5s; last known leader: replica 2 at 10.0.0.2:7001; leader: replica 2 at 10.0.0.2:7001", hint(Some(2), Some("10.0.0.2:7001"))),
            ("forwarding to the leader failed: tcp connect error; leader: replica 3 (address unknown)", hint(Some(3), None)),
            ("no leader to run the membership change; leader: no leader known", None),
            ("leader: no leader known; but the leader is 4 at h:1", hint(Some(4), Some("h:1"))),
        ];
        for (message, want) in cases {
            assert_eq!(LeaderHint::parse_message(message), want, "{message:?}");
        }
    }

    #[test]
    fn leader_hint_needs_an_unavailable_status() {
        let status = Status::failed_precondition("leader is 2 at 127.0.0.1:7002");
        assert_eq!(LeaderHint::from_status(&status), None);
        let status = Status::unavailable("leader is 2 at 127.0.0.1:7002");
        assert_eq!(LeaderHint::from_status(&status), hint(Some(2), Some("127.0.0.1:7002")));
        assert_eq!(LeaderHint::from_status(&Status::unavailable("tcp connect error")), None);
    }

    #[test]
    fn leader_metadata_wins_over_the_message_for_the_address() {
        let mut metadata = MetadataMap::new();
        metadata.insert(LEADER_METADATA_KEY, "https://10.0.0.9:7443".parse().expect("ascii"));
        let status = Status::with_metadata(Code::Unavailable, "leader is 9 at old-name:7443", metadata.clone());
        assert_eq!(LeaderHint::from_status(&status), hint(Some(9), Some("10.0.0.9:7443")));
        let status = Status::with_metadata(Code::Unavailable, "not the leader", metadata);
        let got = LeaderHint::from_status(&status).expect("metadata alone is a hint");
        assert_eq!(got, LeaderHint { id: None, address: Some("10.0.0.9:7443".into()) });
        assert_eq!(got.url().as_deref(), Some("https://10.0.0.9:7443"));
    }

    #[test]
    fn addresses_without_a_port_or_with_junk_are_refused() {
        for bad in ["host", "host:", "host:0", "host:70000", ":7001", "a/b:1", "::1:7001", "[::1:7001"] {
            assert_eq!(normalize_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn leader_hint_displays_what_is_known() {
        assert_eq!(hint(Some(2), Some("h:1")).expect("hint").to_string(), "replica 2 at h:1");
        assert_eq!(hint(Some(2), None).expect("hint").to_string(), "replica 2 (address unknown)");
        assert_eq!(hint(None, Some("h:1")).expect("hint").to_string(), "h:1");
    }
}

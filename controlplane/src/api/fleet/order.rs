//! ListNodes order and page tokens.
//!
//! A page token holds the position of the last node shown: its sort key
//! and node id (ids are unique, so positions are a total order). The next
//! page starts strictly after it, so nodes added, changed or removed
//! between calls never shift the pages: every node that stays put is
//! listed exactly once. A node whose sort key itself changes between calls
//! (e.g. `last_seen`) may be listed twice or not at all, as with any
//! keyset pagination. The token also carries the order and a digest of the
//! filter, so a token used with another query is refused instead of
//! silently skipping nodes.

use std::cmp::Ordering;

use kairos_fleet_proto::fleet::v1 as pb;
use prost::Message;
use semver::Version;
use sha2::{Digest, Sha256};
use tonic::Status;

use super::filter::{flavor, flavor_release, parse_release, release};
use crate::nodes::{NodeRecord, SessionRecord};

/// Version of the token layout.
const TOKEN_VERSION: u32 = 1;

/// The sort order of one ListNodes call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    /// The sort key (never `Unspecified`).
    pub by: pb::NodeOrderBy,
    /// Reversed.
    pub descending: bool,
}

/// What a node sorts by before its id; one variant per order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Primary {
    /// Order by node id only.
    None,
    /// Unix milliseconds (last seen, state changed); 0 = unknown, first.
    Millis(u64),
    /// Installed release; a release that is no semver sorts before all others.
    Release(Option<Version>),
    /// Flavor, then flavor release.
    Flavor(String, String),
}

/// Where a node sorts: its primary key, then its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SortKey {
    /// The order's key.
    pub primary: Primary,
    /// The node id, which makes every key unique.
    pub node_id: String,
}

/// When the node was last heard from, as `Node.last_seen` reports it.
pub fn last_seen_ms(record: &NodeRecord, session: Option<&SessionRecord>) -> u64 {
    record.last_seen_ms.max(session.map_or(0, |s| s.connected_at_ms))
}

impl Order {
    /// The order a request asks for; an unknown `order_by` is INVALID_ARGUMENT.
    pub fn new(order_by: i32, descending: bool) -> Result<Order, Status> {
        let by = match pb::NodeOrderBy::try_from(order_by) {
            Ok(pb::NodeOrderBy::Unspecified) => pb::NodeOrderBy::NodeId,
            Ok(by) => by,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "order_by: must be a NodeOrderBy (0 to 5), got {order_by}"
                )))
            }
        };
        Ok(Order { by, descending })
    }

    /// The sort key of a node.
    pub fn key(&self, record: &NodeRecord, session: Option<&SessionRecord>) -> SortKey {
        let primary = match self.by {
            pb::NodeOrderBy::Unspecified | pb::NodeOrderBy::NodeId => Primary::None,
            pb::NodeOrderBy::LastSeen => Primary::Millis(last_seen_ms(record, session)),
            pb::NodeOrderBy::StateChanged => Primary::Millis(record.state_changed_at_ms),
            pb::NodeOrderBy::Release => Primary::Release(parse_release(release(record))),
            pb::NodeOrderBy::Flavor => Primary::Flavor(flavor(record).to_owned(), flavor_release(record).to_owned()),
        };
        SortKey { primary, node_id: record.node_id.clone() }
    }

    /// How `a` compares to `b` in this order (reversed when descending).
    pub fn cmp(&self, a: &SortKey, b: &SortKey) -> Ordering {
        let o = a.cmp(b);
        if self.descending {
            o.reverse()
        } else {
            o
        }
    }
}

/// A page token as encoded (protobuf, then lowercase hex).
#[derive(Clone, PartialEq, Message)]
struct TokenBody {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(int32, tag = "2")]
    order_by: i32,
    #[prost(bool, tag = "3")]
    descending: bool,
    /// First 8 bytes of SHA-256 of the encoded filter.
    #[prost(bytes = "vec", tag = "4")]
    filter_digest: Vec<u8>,
    #[prost(uint64, tag = "5")]
    millis: u64,
    #[prost(string, tag = "6")]
    text: String,
    #[prost(string, tag = "7")]
    text2: String,
    #[prost(string, tag = "8")]
    node_id: String,
}

fn filter_digest(filter: Option<&pb::NodeFilter>) -> Vec<u8> {
    let encoded = filter.map(Message::encode_to_vec).unwrap_or_default();
    Sha256::digest(&encoded)[..8].to_vec()
}

/// The token of the position after `last`.
pub fn page_token(order: &Order, filter: Option<&pb::NodeFilter>, last: &SortKey) -> String {
    let mut body = TokenBody {
        version: TOKEN_VERSION,
        order_by: order.by as i32,
        descending: order.descending,
        filter_digest: filter_digest(filter),
        node_id: last.node_id.clone(),
        ..TokenBody::default()
    };
    match &last.primary {
        Primary::None => {}
        Primary::Millis(ms) => body.millis = *ms,
        Primary::Release(version) => body.text = version.as_ref().map(Version::to_string).unwrap_or_default(),
        Primary::Flavor(flavor, flavor_release) => {
            body.text = flavor.clone();
            body.text2 = flavor_release.clone();
        }
    }
    body.encode_to_vec().iter().map(|b| format!("{b:02x}")).collect()
}

/// The position a `page_token` continues after; `None` for the first page.
/// A token of another order or filter, or no token of ours, is
/// INVALID_ARGUMENT.
pub fn parse_page_token(
    token: &str,
    order: &Order,
    filter: Option<&pb::NodeFilter>,
) -> Result<Option<SortKey>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let foreign = || Status::invalid_argument("page_token: not a token this server returned; omit it to start over");
    if token.len() % 2 != 0 || token.len() > 4096 {
        return Err(foreign());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(foreign)?;
    let body = TokenBody::decode(bytes.as_slice()).map_err(|_| foreign())?;
    if body.version != TOKEN_VERSION || body.node_id.is_empty() {
        return Err(foreign());
    }
    if body.order_by != order.by as i32 || body.descending != order.descending {
        return Err(Status::invalid_argument(
            "page_token: was returned for another order_by or descending; repeat the query that returned it, or \
             omit it to start over",
        ));
    }
    if body.filter_digest != filter_digest(filter) {
        return Err(Status::invalid_argument(
            "page_token: was returned for another filter; repeat the query that returned it, or omit it to start over",
        ));
    }
    let primary = match order.by {
        pb::NodeOrderBy::Unspecified | pb::NodeOrderBy::NodeId => Primary::None,
        pb::NodeOrderBy::LastSeen | pb::NodeOrderBy::StateChanged => Primary::Millis(body.millis),
        pb::NodeOrderBy::Release => {
            let version =
                if body.text.is_empty() { None } else { Some(Version::parse(&body.text).map_err(|_| foreign())?) };
            Primary::Release(version)
        }
        pb::NodeOrderBy::Flavor => Primary::Flavor(body.text, body.text2),
    };
    Ok(Some(SortKey { primary, node_id: body.node_id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, release: &str, flavor: &str, state_changed: u64) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            identity: Some(pb::NodeIdentity { release: release.into(), ..Default::default() }),
            family: Some(pb::ImageFamily { flavor: flavor.into(), ..Default::default() }),
            state_changed_at_ms: state_changed,
            last_seen_ms: state_changed,
            ..Default::default()
        }
    }

    fn sorted(order: Order, records: &[NodeRecord]) -> Vec<String> {
        let mut keys: Vec<SortKey> = records.iter().map(|r| order.key(r, None)).collect();
        keys.sort_by(|a, b| order.cmp(a, b));
        keys.into_iter().map(|k| k.node_id).collect()
    }

    fn nodes() -> Vec<NodeRecord> {
        vec![
            record("a", "v2.10.0", "ubuntu", 30),
            record("b", "v2.9.1", "alpine", 10),
            record("c", "junk", "ubuntu", 20),
            record("d", "v2.9.1", "alpine", 10),
        ]
    }

    #[test]
    fn releases_sort_as_semver_with_ties_broken_by_id() {
        let asc = Order::new(pb::NodeOrderBy::Release as i32, false).expect("valid");
        assert_eq!(sorted(asc, &nodes()), ["c", "b", "d", "a"], "v2.9.1 before v2.10.0; junk first");
        let desc = Order { descending: true, ..asc };
        assert_eq!(sorted(desc, &nodes()), ["a", "d", "b", "c"]);
    }

    #[test]
    fn other_orders_sort_by_their_key_then_id() {
        let by = |o: pb::NodeOrderBy| Order::new(o as i32, false).expect("valid");
        assert_eq!(sorted(by(pb::NodeOrderBy::Unspecified), &nodes()), ["a", "b", "c", "d"]);
        assert_eq!(sorted(by(pb::NodeOrderBy::Flavor), &nodes()), ["b", "d", "a", "c"]);
        assert_eq!(sorted(by(pb::NodeOrderBy::StateChanged), &nodes()), ["b", "d", "c", "a"]);
        assert_eq!(sorted(by(pb::NodeOrderBy::LastSeen), &nodes()), ["b", "d", "c", "a"]);
        let online = SessionRecord { replica_id: 1, session_id: 1, connected_at_ms: 99 };
        assert_eq!(by(pb::NodeOrderBy::LastSeen).key(&nodes()[1], Some(&online)).primary, Primary::Millis(99));
        let err = Order::new(17, false).expect_err("unknown order");
        assert_eq!(err.message(), "order_by: must be a NodeOrderBy (0 to 5), got 17");
    }

    #[test]
    fn page_tokens_round_trip_for_every_order() {
        let filter = pb::NodeFilter { releases: vec!["v2.4.2".into()], ..Default::default() };
        for by in 0..=5 {
            for descending in [false, true] {
                let order = Order::new(by, descending).expect("valid");
                for r in nodes() {
                    let key = order.key(&r, None);
                    let token = page_token(&order, Some(&filter), &key);
                    assert_eq!(parse_page_token(&token, &order, Some(&filter)).expect("ours"), Some(key));
                }
            }
        }
        assert_eq!(parse_page_token("", &Order::new(0, false).expect("valid"), None).expect("first page"), None);
    }

    #[test]
    fn tokens_of_another_query_or_foreign_tokens_are_refused() {
        let order = Order::new(pb::NodeOrderBy::Release as i32, false).expect("valid");
        let filter = pb::NodeFilter { online: Some(true), ..Default::default() };
        let token = page_token(&order, Some(&filter), &order.key(&nodes()[0], None));
        let other_filter = parse_page_token(&token, &order, None).expect_err("filter changed");
        assert!(other_filter.message().contains("another filter"), "{other_filter:?}");
        let reversed = Order { descending: true, ..order };
        let other_order = parse_page_token(&token, &reversed, Some(&filter)).expect_err("order changed");
        assert!(other_order.message().contains("another order_by"), "{other_order:?}");
        for foreign in ["xyz", "abc", "00ff", "zz"] {
            let err = parse_page_token(foreign, &order, Some(&filter)).expect_err(foreign);
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with("page_token: "), "{err:?}");
        }
    }
}

//! The rules of spending an enroll token, and label validation.

use tonic::Code;

use super::*;

const CREATED: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;

/// A record valid for one hour from `CREATED`, and its bootstrap token.
fn token(max_uses: u32) -> (EnrollTokenRecord, String) {
    let generated = generate_token().expect("random");
    let record = EnrollTokenRecord {
        id: generated.id().clone(),
        description: "berlin stores".into(),
        hash: hash_secret(generated.secret_part()),
        created_at_ms: CREATED,
        expires_at_ms: CREATED + HOUR,
        max_uses,
        uses: 0,
        labels: BTreeMap::from([("site".to_owned(), "berlin".to_owned())]),
        created_by: "0123abcd".into(),
        revoked: false,
        revoked_at_ms: None,
    };
    let bootstrap = format!("{ENROLL_TOKEN_PREFIX}{}_{}", record.id, generated.secret_part());
    (record, bootstrap)
}

#[test]
fn a_valid_token_spends_one_use_and_keeps_everything_else() {
    let (record, bootstrap) = token(2);
    let spent = consume_enroll_token(&record, &bootstrap, CREATED + 1).expect("valid");
    assert_eq!(spent.uses, 1);
    assert_eq!(EnrollTokenRecord { uses: 0, ..spent.clone() }, record);
    let again = consume_enroll_token(&spent, &bootstrap, CREATED + 2).expect("second use");
    assert_eq!(again.uses, 2);
    assert_eq!(enroll_token_id(&bootstrap).ok(), Some(record.id));
}

#[test]
fn a_token_with_max_uses_is_used_up_after_that_many_enrollments() {
    let (record, bootstrap) = token(1);
    let spent = consume_enroll_token(&record, &bootstrap, CREATED).expect("first use");
    let err = consume_enroll_token(&spent, &bootstrap, CREATED).unwrap_err();
    assert_eq!(err, EnrollError::UsedUp { id: record.id.clone(), max_uses: 1 });
    assert!(!spent.usable(CREATED));
    let status = Status::from(err);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("used up (1 of 1 enrollments)"), "{status:?}");
}

#[test]
fn zero_max_uses_means_unlimited_until_expiry() {
    let (mut record, bootstrap) = token(0);
    record.uses = 10_000;
    assert_eq!(consume_enroll_token(&record, &bootstrap, CREATED).map(|r| r.uses).ok(), Some(10_001));
    let err = consume_enroll_token(&record, &bootstrap, CREATED + HOUR).unwrap_err();
    assert_eq!(err, EnrollError::Expired { id: record.id.clone(), at_ms: CREATED + HOUR });
    let status = Status::from(err);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired at 2023-11-14T23:13:20Z"), "{status:?}");
}

#[test]
fn a_revoked_token_is_refused_even_with_uses_left() {
    let (mut record, bootstrap) = token(5);
    record.revoked = true;
    record.revoked_at_ms = Some(CREATED + 5);
    let err = consume_enroll_token(&record, &bootstrap, CREATED + 10).unwrap_err();
    assert_eq!(err, EnrollError::Revoked { id: record.id.clone() });
    assert_eq!(Status::from(err).code(), Code::Unauthenticated);
}

#[test]
fn a_wrong_secret_is_unauthenticated_and_reveals_no_state() {
    let (mut record, bootstrap) = token(1);
    let (_, other) = token(1);
    // Revoked and expired, yet a wrong secret learns only that it is wrong.
    record.revoked = true;
    let wrong_secret = format!("{}{}", &bootstrap[..bootstrap.len() - 64], &other[other.len() - 64..]);
    for (bad, what) in [
        (wrong_secret.as_str(), "wrong secret"),
        (other.as_str(), "another token"),
        ("kfe_0123abcd_short", "malformed"),
        (&bootstrap.replacen("kfe_", "kft_", 1), "an operator token"),
    ] {
        let err = consume_enroll_token(&record, bad, CREATED + 2 * HOUR).unwrap_err();
        assert!(matches!(err, EnrollError::Wrong { .. }), "{what}: {err:?}");
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
        assert!(!status.message().contains(&bootstrap[bootstrap.len() - 64..]), "{what}: the secret leaked");
    }
}

#[test]
fn labels_follow_the_label_requirement_rules() {
    for (key, value) in [("site", "berlin"), ("fleet.kairos.io/wave", "1"), ("a_b-c.d", ""), ("x", &"v".repeat(63))] {
        assert!(check_label(key, value).is_ok(), "{key}={value}");
    }
    for (key, value) in [
        ("", "x"),
        ("bad key", "x"),
        ("/name", "x"),
        ("Not_DNS!/name", "x"),
        (&"k".repeat(64), "x"),
        ("site", &"v".repeat(64)),
        ("site", "line\nbreak"),
    ] {
        let err = check_label(key, value).unwrap_err();
        assert!(err.code() == Code::InvalidArgument && err.message().starts_with("labels:"), "{key}={value}: {err:?}");
    }
}

#[test]
fn create_summary_lists_labels_in_order_and_no_secret() {
    let req = pb::CreateEnrollTokenRequest {
        ttl: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
        max_uses: 3,
        labels: [("zone".to_owned(), "b".to_owned()), ("site".to_owned(), "berlin".to_owned())].into_iter().collect(),
        description: "stores".into(),
    };
    assert_eq!(summary_create(&req), "ttl=86400s max_uses=3 labels={site=berlin,zone=b} description=\"stores\"");
}

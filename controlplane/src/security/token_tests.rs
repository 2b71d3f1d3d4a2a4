use super::*;

const HOUR_MS: u64 = 3_600_000;

fn record(role: Role, ttl: Option<Duration>) -> (Secret, TokenRecord) {
    let secret = generate_token().expect("token");
    let record = TokenRecord::new(&secret, role, "test", "init", 1_000, ttl);
    (secret, record)
}

#[test]
fn generated_token_has_the_documented_form_and_parses_back() {
    let secret = generate_token().expect("token");
    let token = secret.expose();
    assert!(token.starts_with("kft_"), "{token}");
    let (id, part) = parse_token(token).expect("parse");
    assert_eq!(&id, secret.id());
    assert_eq!(id.as_str().len(), 8);
    assert_eq!(part, secret.secret_part());
    assert!(part.len() >= 32 && part.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(generate_token().expect("token").expose(), token, "random");
}

#[test]
fn debug_of_a_secret_shows_the_id_only() {
    let secret = generate_token().expect("token");
    let shown = format!("{secret:?}");
    assert!(shown.contains(secret.id().as_str()));
    assert!(!shown.contains(secret.secret_part()), "{shown}");
}

#[test]
fn malformed_tokens_are_rejected() {
    let ok_secret = "a".repeat(64);
    for bad in [
        String::new(),
        format!("kft0123abcd_{ok_secret}"),
        format!("xyz_0123abcd_{ok_secret}"),
        format!("kft_0123ABCD_{ok_secret}"),
        format!("kft_0123abc_{ok_secret}"),
        "kft_0123abcd_short".to_string(),
        format!("kft_0123abcd_{ok_secret}!"),
        format!("kft_0123abcd{ok_secret}"),
    ] {
        assert!(matches!(parse_token(&bad), Err(AuthError::Malformed { .. })), "{bad}");
    }
}

#[test]
fn hash_is_sha256_hex_and_verify_compares_it() {
    assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert!(verify("abc", &hash_secret("abc")));
    assert!(!verify("abd", &hash_secret("abc")));
    assert!(!verify("abc", ""), "a truncated hash never matches");
}

#[test]
fn record_grants_its_role_to_the_right_secret() {
    let (secret, record) = record(Role::Operator, None);
    assert_eq!(record.check(secret.secret_part(), u64::MAX), Ok(Role::Operator), "no expiry");
    assert_eq!(record.hash, hash_secret(secret.secret_part()));
}

#[test]
fn wrong_secret_is_bad_secret_even_for_a_revoked_token() {
    let (_, mut record) = record(Role::Admin, None);
    record.revoked = true;
    let other = generate_token().expect("token");
    assert_eq!(record.check(other.secret_part(), 2_000), Err(AuthError::BadSecret { id: record.id.clone() }));
}

#[test]
fn revoked_token_is_refused() {
    let (secret, mut record) = record(Role::Admin, None);
    record.revoked = true;
    let err = record.check(secret.secret_part(), 2_000).expect_err("revoked");
    assert_eq!(err, AuthError::Revoked { id: record.id.clone() });
    assert!(err.to_string().contains("ask an admin"), "{err}");
}

#[test]
fn expired_token_is_refused_from_its_expiry_on() {
    let (secret, record) = record(Role::Viewer, Some(Duration::from_secs(3600)));
    assert_eq!(record.expires_at_ms, Some(1_000 + HOUR_MS));
    assert_eq!(record.check(secret.secret_part(), 1_000 + HOUR_MS - 1), Ok(Role::Viewer));
    let err = record.check(secret.secret_part(), 1_000 + HOUR_MS).expect_err("expired");
    assert_eq!(err, AuthError::Expired { id: record.id.clone(), at_ms: 1_000 + HOUR_MS });
    assert!(err.to_string().contains("1970-01-01T01:00:01"), "{err}");
}

#[test]
fn authenticate_finds_the_record_by_id() {
    let (secret, record) = record(Role::Operator, None);
    let found = authenticate(secret.expose(), 2_000, |id| (id == &record.id).then_some(&record));
    assert_eq!(found, Ok((record.id.clone(), Role::Operator)));
    let unknown = authenticate(secret.expose(), 2_000, |_| None);
    assert_eq!(unknown, Err(AuthError::Unknown { id: record.id.clone() }));
}

#[test]
fn role_ordering_table() {
    use Role::*;
    let table = [
        (Viewer, Viewer, true),
        (Viewer, Operator, false),
        (Viewer, Admin, false),
        (Operator, Viewer, true),
        (Operator, Operator, true),
        (Operator, Admin, false),
        (Admin, Viewer, true),
        (Admin, Operator, true),
        (Admin, Admin, true),
    ];
    for (role, required, allowed) in table {
        assert_eq!(role.allows(required), allowed, "{role} for {required}");
        assert_eq!(role.require(required).is_ok(), allowed);
    }
    assert_eq!(Viewer.require(Admin), Err(AuthError::Forbidden { role: Viewer, required: Admin }));
}

#[test]
fn auth_errors_map_to_grpc_codes() {
    let id = TokenId::parse("0123abcd").expect("id");
    assert_eq!(tonic::Status::from(AuthError::Revoked { id }).code(), tonic::Code::Unauthenticated);
    let forbidden = AuthError::Forbidden { role: Role::Viewer, required: Role::Admin };
    assert_eq!(tonic::Status::from(forbidden).code(), tonic::Code::PermissionDenied);
}

#[test]
fn record_round_trips_through_toml_json_and_postcard() {
    let (_, mut record) = record(Role::Admin, Some(Duration::from_secs(60)));
    record.revoked_at_ms = None;
    let toml_text = toml::to_string(&record).expect("toml");
    assert!(toml_text.contains("role = \"admin\""), "{toml_text}");
    assert_eq!(toml::from_str::<TokenRecord>(&toml_text).expect("from toml"), record);
    let json = serde_json::to_string(&record).expect("json");
    assert_eq!(serde_json::from_str::<TokenRecord>(&json).expect("from json"), record);
    let bytes = postcard::to_allocvec(&record).expect("postcard");
    assert_eq!(postcard::from_bytes::<TokenRecord>(&bytes).expect("from postcard"), record);
    let bad_id = toml_text.replace(record.id.as_str(), "NOTHEX!!");
    assert!(toml::from_str::<TokenRecord>(&bad_id).is_err(), "ids are checked when read");
}

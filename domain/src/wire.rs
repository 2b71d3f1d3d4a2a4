//! Between the wire identity (`pb::NodeIdentity`) and the domain's
//! [`NodeIdentity`].
//!
//! The server does not trust a second parser: it renders the wire fields
//! back into `/etc/kairos-release` form and runs the same
//! [`NodeIdentity::parse`] the node client uses, so normalisation (v1 flavor
//! table, `kairos` = `standard`, kernel arch spellings) and validation are
//! one code path.

use kairos_fleet_proto::fleet::v1 as pb;

use crate::fleet::identity::{IdentityError, NodeIdentity};
use crate::fleet::model::ImageFamily;

/// Longest accepted value of one identity field.
const MAX_FIELD: usize = 512;

/// A wire identity the server refuses; the message names the field and rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct IdentityFieldError {
    /// The field, e.g. `identity.release`.
    pub field: String,
    /// What is wrong.
    pub rule: String,
}

fn field_error(field: &str, rule: impl Into<String>) -> IdentityFieldError {
    IdentityFieldError { field: format!("identity.{field}"), rule: rule.into() }
}

/// Parses a wire identity into the domain's, with the node client's rules.
pub fn identity_from_pb(identity: &pb::NodeIdentity) -> Result<NodeIdentity, IdentityFieldError> {
    let fields: [(&str, &str, &str); 12] = [
        ("flavor", "KAIROS_FLAVOR", &identity.flavor),
        ("flavor_release", "KAIROS_FLAVOR_RELEASE", &identity.flavor_release),
        ("variant", "KAIROS_VARIANT", &identity.variant),
        ("model", "KAIROS_MODEL", &identity.model),
        ("arch", "KAIROS_ARCH", &identity.arch),
        ("release", "KAIROS_RELEASE", &identity.release),
        ("version", "KAIROS_VERSION", &identity.version),
        ("software_version", "KAIROS_SOFTWARE_VERSION", &identity.software_version),
        ("software_version_prefix", "KAIROS_SOFTWARE_VERSION_PREFIX", &identity.software_version_prefix),
        ("image_repo", "KAIROS_IMAGE_REPO", &identity.image_repo),
        ("image_label", "KAIROS_IMAGE_LABEL", &identity.image_label),
        ("release_file", "", &identity.release_file),
    ];
    let mut text = String::new();
    for (field, key, value) in fields {
        if value.len() > MAX_FIELD {
            return Err(field_error(field, format!("at most {MAX_FIELD} bytes, got {}", value.len())));
        }
        if let Some(bad) = value.chars().find(|c| c.is_control() || matches!(c, '"' | '\'' | '\\' | '`' | '$')) {
            return Err(field_error(field, format!("must not contain {bad:?}")));
        }
        if !key.is_empty() && !value.is_empty() {
            text.push_str(&format!("{key}=\"{value}\"\n"));
        }
    }
    if identity.trusted_boot {
        text.push_str("KAIROS_TRUSTED_BOOT=\"true\"\n");
    }
    if identity.fips {
        text.push_str("KAIROS_FIPS=\"true\"\n");
    }
    NodeIdentity::parse(&text).map_err(|e| {
        // Name the wire field the parser's complaint is about.
        let field = match &e {
            IdentityError::Invalid { key, error } => {
                fields.iter().find(|(_, k, _)| k == key).map_or(error.field, |(field, _, _)| *field)
            }
            IdentityError::Missing { field, .. } => *field,
            IdentityError::Syntax { .. } => "",
        };
        let field = if field.is_empty() { "identity".to_owned() } else { format!("identity.{field}") };
        IdentityFieldError { field, rule: e.to_string() }
    })
}

/// The wire form of a domain identity; `release_file` is the path it was
/// read from (as the node sees it, e.g. `/etc/kairos-release`).
///
/// The domain identity keeps parsed values, so two fields are rebuilt:
/// `version` is the release (`vX.Y.Z`), and `image_label` is the tag of the
/// image reference when it parses (what `KAIROS_IMAGE_LABEL` holds).
pub fn identity_to_pb(identity: &NodeIdentity, release_file: &str) -> pb::NodeIdentity {
    let software = identity.software.as_ref();
    pb::NodeIdentity {
        flavor: identity.flavor.clone(),
        flavor_release: identity.flavor_release.clone(),
        variant: identity.variant.as_str().to_string(),
        model: identity.model.clone(),
        arch: identity.arch.as_str().to_string(),
        release: format!("v{}", identity.release),
        version: format!("v{}", identity.release),
        software_version: software.map(|s| s.upstream()).unwrap_or_default(),
        software_version_prefix: software.map(|s| s.distro.as_str().to_string()).unwrap_or_default(),
        image_repo: image_ref_of(identity),
        trusted_boot: identity.trusted_boot,
        fips: identity.fips,
        image_label: identity.image_repo.as_ref().map(|i| i.tag()).unwrap_or_default(),
        release_file: release_file.to_string(),
    }
}

/// The running image's reference as the release file wrote it (or as parsed).
pub fn image_ref_of(identity: &NodeIdentity) -> String {
    match (&identity.image_repo_raw, &identity.image_repo) {
        (Some(raw), _) => raw.clone(),
        (None, Some(image)) => image.to_string(),
        (None, None) => String::new(),
    }
}

/// The wire form of an image family.
pub fn family_to_pb(family: &ImageFamily) -> pb::ImageFamily {
    pb::ImageFamily {
        flavor: family.flavor.clone(),
        flavor_release: family.flavor_release.clone(),
        variant: family.variant.as_str().to_string(),
        arch: family.arch.as_str().to_string(),
        model: family.model.clone(),
        trusted_boot: family.trusted_boot,
    }
}

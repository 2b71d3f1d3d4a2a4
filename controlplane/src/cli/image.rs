//! `kairosctl image inspect`: what the control plane reads from an image
//! reference, computed locally.

use serde::{Deserialize, Serialize};

use super::output::{Render, Table};
use super::CliError;
use crate::fleet::image::ImageRef;
use crate::fleet::matrix::init_system;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    /// The reference, rendered back.
    pub reference: String,
    /// Tag grammar.
    pub grammar: String,
    /// Registry and organisation, e.g. `quay.io/kairos`.
    pub registry_prefix: String,
    /// Flavor id.
    pub flavor: String,
    /// Upstream OS branch; empty for v1.x images.
    pub flavor_release: String,
    /// `core` or `standard`.
    pub variant: String,
    /// CPU architecture.
    pub arch: String,
    /// Board model.
    pub model: String,
    /// Kairos release, `vX.Y.Z`.
    pub release: String,
    /// Kubernetes software version; empty on core images.
    pub software: String,
    /// Trusted-boot (UKI) image.
    pub trusted_boot: bool,
    /// Raw disk artifact.
    pub disk_image: bool,
    /// Whether it may be an upgrade target (disk images may not).
    pub upgrade_target: bool,
    /// `systemd` or `openrc`.
    pub init_system: String,
}

/// Parses `reference`; a reference in no Kairos grammar is a usage error.
pub fn inspect(reference: &str) -> Result<ImageView, CliError> {
    let image = ImageRef::parse(reference).map_err(|e| CliError::Usage { message: e.to_string(), hint: None })?;
    let family = image.family();
    Ok(ImageView {
        reference: image.to_string(),
        grammar: image.grammar().as_str().to_string(),
        registry_prefix: image.registry_prefix().to_string(),
        flavor: family.flavor.clone(),
        flavor_release: family.flavor_release.clone(),
        variant: family.variant.to_string(),
        arch: family.arch.to_string(),
        model: family.model.clone(),
        release: format!("v{}", image.release()),
        software: image.software().map(|s| s.to_string()).unwrap_or_default(),
        trusted_boot: image.trusted_boot(),
        disk_image: image.is_disk_image(),
        upgrade_target: !image.is_disk_image(),
        init_system: format!("{:?}", init_system(&family.flavor)).to_lowercase(),
    })
}

impl Render for ImageView {
    fn table(&self, out: &mut String) {
        let mut table = Table::new(&["FIELD", "VALUE"]);
        let rows = [
            ("reference", self.reference.clone()),
            ("grammar", self.grammar.clone()),
            ("registry_prefix", self.registry_prefix.clone()),
            ("flavor", self.flavor.clone()),
            ("flavor_release", self.flavor_release.clone()),
            ("variant", self.variant.clone()),
            ("arch", self.arch.clone()),
            ("model", self.model.clone()),
            ("release", self.release.clone()),
            ("software", self.software.clone()),
            ("trusted_boot", self.trusted_boot.to_string()),
            ("disk_image", self.disk_image.to_string()),
            ("upgrade_target", self.upgrade_target.to_string()),
            ("init_system", self.init_system.clone()),
        ];
        for (field, value) in rows {
            table.row(vec![field.to_string(), value]);
        }
        table.write(out);
    }
}

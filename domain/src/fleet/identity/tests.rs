//! Node identity tests: real release files of every generation, shell
//! quoting, boot state and machine id.

use super::*;
use crate::fleet::image::TagGrammar;
use proptest::prelude::*;

const V3_CORE: &str = r#"KAIROS_ARCH="amd64"
KAIROS_FAMILY="ubuntu"
KAIROS_FIPS="false"
KAIROS_FLAVOR="ubuntu"
KAIROS_FLAVOR_RELEASE="24.04"
KAIROS_ID="kairos"
KAIROS_ID_LIKE="kairos-core-ubuntu-24.04"
KAIROS_IMAGE_LABEL="24.04-core-amd64-generic-v3.2.1"
KAIROS_IMAGE_REPO="quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.2.1"
KAIROS_MODEL="generic"
KAIROS_NAME="kairos-core-ubuntu-24.04"
KAIROS_RELEASE="v3.2.1"
KAIROS_SOFTWARE_VERSION=""
KAIROS_SOFTWARE_VERSION_PREFIX="k3s"
KAIROS_TARGETARCH="amd64"
KAIROS_TRUSTED_BOOT="false"
KAIROS_VARIANT="core"
KAIROS_VERSION="v3.2.1"
"#;

const V2_STANDARD: &str = r#"KAIROS_ARCH="amd64"
KAIROS_FAMILY="opensuse"
KAIROS_FLAVOR="opensuse"
KAIROS_FLAVOR_RELEASE="leap-15.5"
KAIROS_ID="kairos"
KAIROS_IMAGE_LABEL="leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1"
KAIROS_IMAGE_REPO="quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1"
KAIROS_MODEL="generic"
KAIROS_NAME="kairos-standard-opensuse-leap-15.5"
KAIROS_RELEASE="v2.4.2"
KAIROS_SOFTWARE_VERSION="v1.27.6+k3s1"
KAIROS_SOFTWARE_VERSION_PREFIX="k3s"
KAIROS_TARGETARCH="amd64"
KAIROS_VARIANT="standard"
KAIROS_VERSION="v2.4.2-v1.27.6+k3s1"
"#;

const V1_OS_RELEASE: &str = r#"NAME="openSUSE Leap"
VERSION="15.4"
ID="opensuse-leap"
ID_LIKE="suse opensuse"
VERSION_ID="15.4"
PRETTY_NAME="openSUSE Leap 15.4"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:opensuse:leap:15.4"
BUG_REPORT_URL="https://bugs.opensuse.org"
HOME_URL="https://www.opensuse.org/"
KAIROS_NAME="kairos-opensuse-arm-rpi"
KAIROS_VERSION="v1.5.0-k3sv1.26.1+k3s1"
KAIROS_ID="kairos"
KAIROS_FLAVOR="opensuse-arm-rpi"
KAIROS_IMAGE_REPO="quay.io/kairos/kairos-opensuse-arm-rpi:v1.5.0-k3sv1.26.1-k3s1"
KAIROS_GITHUB_REPO="kairos-io/kairos"
"#;

const V1_UNPREFIXED: &str = r#"NAME="Ubuntu"
VERSION="22.04.2 LTS (Jammy Jellyfish)"
ID=ubuntu
ID_LIKE=debian
VERSION_ID="22.04"
FLAVOR=ubuntu-22-lts
VARIANT=core
IMAGE_REPO=quay.io/kairos/core-ubuntu-22-lts:v1.6.0
"#;

fn identify(text: &str) -> NodeIdentity {
    NodeIdentity::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn without(text: &str, keys: &[&str]) -> String {
    text.lines().filter(|l| !keys.iter().any(|k| l.starts_with(&format!("{k}=")))).map(|l| format!("{l}\n")).collect()
}

#[test]
fn kairos_release_v3_core_names_family_release_and_image() {
    let id = identify(V3_CORE);
    assert_eq!(
        id.family(),
        ImageFamily {
            flavor: "ubuntu".into(),
            flavor_release: "24.04".into(),
            variant: Variant::Core,
            arch: Arch::Amd64,
            model: "generic".into(),
            trusted_boot: false,
        }
    );
    assert_eq!(id.release, Version::new(3, 2, 1));
    assert_eq!(id.software, None);
    assert!(!id.trusted_boot && !id.fips);
    let image = id.image_repo.as_ref().unwrap();
    assert_eq!(image.family(), id.family());
    assert_eq!(image.grammar(), TagGrammar::V2);
}

#[test]
fn kairos_release_wins_over_kairos_version_with_k3s_appended() {
    let id = identify(V2_STANDARD);
    assert_eq!(id.release, Version::new(2, 4, 2));
    assert_eq!(id.variant, Variant::Standard);
    let sw = id.software.unwrap();
    assert_eq!((sw.distro, sw.upstream()), (K8sDistro::K3s, "v1.27.6+k3s1".to_string()));
}

#[test]
fn kairos_version_counts_only_for_its_leading_release() {
    let id = identify(&without(V2_STANDARD, &["KAIROS_RELEASE"]));
    assert_eq!(id.release, Version::new(2, 4, 2));
    let rc = identify(&without(V3_CORE, &["KAIROS_RELEASE", "KAIROS_VERSION"]).replace("v3.2.1", "v3.0.0-rc1"));
    assert_eq!(rc.release, Version::parse("3.0.0-rc1").unwrap(), "from the image tag");
}

#[test]
fn v1_os_release_ignores_the_os_version_and_id() {
    let id = identify(V1_OS_RELEASE);
    assert_eq!(id.flavor, "opensuse-arm-rpi");
    assert_eq!(id.flavor_release, "");
    assert_eq!(id.release, Version::new(1, 5, 0), "not the OS's VERSION=15.4");
    assert_eq!((id.arch, id.model.as_str()), (Arch::Arm64, "rpi"));
    assert_eq!(id.variant, Variant::Standard, "kairos- repository");
    assert_eq!(id.software.as_ref().map(SoftwareVersion::upstream), Some("v1.26.1+k3s1".to_string()));
    assert_eq!(id.family(), matrix::seed_flavor("opensuse-arm-rpi").unwrap().family(Variant::Standard));
}

#[test]
fn v1_os_release_with_unprefixed_keys_fills_the_rest_from_image_and_seed_table() {
    let id = identify(V1_UNPREFIXED);
    assert_eq!(id.family(), matrix::seed_flavor("ubuntu-22-lts").unwrap().family(Variant::Core));
    assert_eq!(id.release, Version::new(1, 6, 0));
    assert_eq!(id.image_repo_raw.as_deref(), Some("quay.io/kairos/core-ubuntu-22-lts:v1.6.0"));

    let seed_only = identify("FLAVOR=alpine-arm-rpi\nVARIANT=core\nKAIROS_VERSION=v1.1.7\n");
    assert_eq!((seed_only.arch, seed_only.model.as_str()), (Arch::Arm64, "rpi"));
}

#[test]
fn os_release_variant_that_is_not_a_kairos_variant_is_the_oss_own() {
    let text = format!("VARIANT=\"Server Edition\"\n{}", without(V1_OS_RELEASE, &[]));
    assert_eq!(identify(&text).variant, Variant::Standard);
    let e = NodeIdentity::parse("KAIROS_VARIANT=server\nKAIROS_FLAVOR=ubuntu\n").unwrap_err();
    assert!(matches!(e, IdentityError::Invalid { key: "KAIROS_VARIANT", .. }), "{e}");
}

#[test]
fn image_repo_without_a_tag_takes_the_image_label() {
    let text = "KAIROS_FLAVOR=opensuse\nKAIROS_IMAGE_REPO=quay.io/kairos/core-opensuse\nKAIROS_IMAGE_LABEL=v1.5.1\n";
    let id = identify(text);
    assert_eq!(id.release, Version::new(1, 5, 1));
    assert_eq!(id.image_repo.unwrap().to_string(), "quay.io/kairos/core-opensuse:v1.5.1");
    assert_eq!(id.image_repo_raw.as_deref(), Some("quay.io/kairos/core-opensuse"));
}

#[test]
fn unparsable_image_repo_is_kept_raw() {
    let text = V3_CORE.replace("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.2.1", "my.registry/custom:latest");
    let id = identify(&text);
    assert_eq!(id.image_repo, None);
    assert_eq!(id.image_repo_raw.as_deref(), Some("my.registry/custom:latest"));
    assert_eq!(id.release, Version::new(3, 2, 1));
}

#[test]
fn trusted_boot_comes_from_the_key_or_the_uki_image() {
    let text = V3_CORE.replace("KAIROS_TRUSTED_BOOT=\"false\"", "KAIROS_TRUSTED_BOOT=\"true\"");
    assert!(identify(&text).trusted_boot);
    let uki = without(V3_CORE, &["KAIROS_TRUSTED_BOOT"]).replace("generic-v3.2.1\"", "generic-v3.2.1-uki\"");
    assert!(identify(&uki).trusted_boot);
}

#[test]
fn uki_node_runs_a_trusted_boot_family_matching_its_image() {
    let uki = without(V3_CORE, &["KAIROS_TRUSTED_BOOT"]).replace("generic-v3.2.1\"", "generic-v3.2.1-uki\"");
    let id = identify(&uki);
    assert!(id.family().trusted_boot);
    assert_eq!(id.image_repo.as_ref().map(ImageRef::family), Some(id.family()));
    assert_ne!(id.family(), identify(V3_CORE).family());
}

#[test]
fn shell_quoting_escapes_and_comments_follow_the_shell() {
    let text = r#"
# a comment
export KAIROS_FLAVOR='ubuntu'
KAIROS_FLAVOR_RELEASE=24.04   # trailing comment
KAIROS_VARIANT="co"'re'
KAIROS_MODEL=gen\eric
KAIROS_ARCH="amd64"
KAIROS_RELEASE=v3.5.0
PRETTY_NAME="Kairos \"quoted\" \$HOME \n"
"#;
    let id = identify(text);
    assert_eq!(id.flavor, "ubuntu");
    assert_eq!(id.flavor_release, "24.04");
    assert_eq!(id.variant, Variant::Core);
    assert_eq!(id.model, "generic");
    let vars = ReleaseVars::parse(text).unwrap();
    assert_eq!(vars.first(&["PRETTY_NAME"]), Some(("PRETTY_NAME", r#"Kairos "quoted" $HOME \n"#)));
}

#[test]
fn malformed_lines_name_their_line_number() {
    for (text, line) in [
        ("KAIROS_FLAVOR=ubuntu\nKAIROS_ARCH=\"amd64\n", 2),
        ("KAIROS_FLAVOR='ubuntu\n", 1),
        ("\n\nKAIROS FLAVOR=ubuntu\n", 3),
        ("just words\n", 1),
        ("KAIROS_NAME=two words\n", 1),
    ] {
        match NodeIdentity::parse(text) {
            Err(IdentityError::Syntax { line: got, .. }) => assert_eq!(got, line, "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn missing_field_names_every_place_looked() {
    let e = NodeIdentity::parse("KAIROS_VARIANT=core\n").unwrap_err();
    assert_eq!(e, IdentityError::Missing { field: "flavor", looked_for: FLAVOR_SOURCES });
    assert!(e.to_string().starts_with("flavor: not found; looked for KAIROS_FLAVOR, FLAVOR"), "{e}");
    let e =
        NodeIdentity::parse("KAIROS_FLAVOR=ubuntu\nKAIROS_FLAVOR_RELEASE=24.04\nKAIROS_VARIANT=core\n").unwrap_err();
    assert!(e.to_string().starts_with("arch: not found"), "v2 flavors get no seed defaults: {e}");
    let e = identify_err(&without(V3_CORE, &["KAIROS_RELEASE", "KAIROS_VERSION", "KAIROS_IMAGE_REPO"]));
    assert!(e.to_string().starts_with("release: not found; looked for KAIROS_RELEASE, KAIROS_VERSION"), "{e}");
}

fn identify_err(text: &str) -> IdentityError {
    NodeIdentity::parse(text).unwrap_err()
}

#[test]
fn malformed_values_name_their_key() {
    let cases = [
        (V3_CORE.replace("KAIROS_FIPS=\"false\"", "KAIROS_FIPS=\"yes\""), "KAIROS_FIPS"),
        (V3_CORE.replace("KAIROS_ARCH=\"amd64\"", "KAIROS_ARCH=\"riscv64\""), "KAIROS_ARCH"),
        (V3_CORE.replace("KAIROS_RELEASE=\"v3.2.1\"", "KAIROS_RELEASE=\"v3.2\""), "KAIROS_RELEASE"),
        (V2_STANDARD.replace("\"v1.27.6+k3s1\"", "\"1.27\""), "KAIROS_SOFTWARE_VERSION"),
        (V2_STANDARD.replace("PREFIX=\"k3s\"", "PREFIX=\"rke2\""), "KAIROS_SOFTWARE_VERSION_PREFIX"),
        (V3_CORE.replace("KAIROS_MODEL=\"generic\"", "KAIROS_MODEL=\"Generic\""), "KAIROS_MODEL"),
    ];
    for (text, key) in cases {
        match identify_err(&text) {
            IdentityError::Invalid { key: got, error } => {
                assert_eq!(got, key);
                assert!(!error.rule.is_empty());
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    let garbage_version = without(V3_CORE, &["KAIROS_RELEASE", "KAIROS_IMAGE_REPO"]).replace("v3.2.1\"", "latest\"");
    assert!(matches!(identify_err(&garbage_version), IdentityError::Invalid { key: "KAIROS_VERSION", .. }));
}

#[test]
fn software_version_without_prefix_is_named_by_its_build() {
    let k0s = without(V2_STANDARD, &["KAIROS_SOFTWARE_VERSION_PREFIX"]).replace("v1.27.6+k3s1\"", "v1.30.2+k0s.0\"");
    let sw = identify(&k0s).software.unwrap();
    assert_eq!((sw.distro, sw.build.as_str()), (K8sDistro::K0s, "k0s.0"));
}

#[test]
fn boot_state_follows_the_booted_image_file_then_the_labels() {
    let cases = [
        (
            "BOOT_IMAGE=/cOS/vmlinuz console=tty1 root=LABEL=COS_STATE cos-img/filename=/cOS/active.img panic=5",
            BootState::Active,
        ),
        ("root=LABEL=COS_STATE cos-img/filename=/cOS/passive.img rd.neednet=0", BootState::Passive),
        ("root=LABEL=COS_RECOVERY cos-img/filename=/cOS/recovery.img", BootState::Recovery),
        ("root=LABEL=COS_RECOVERY cos-img/filename=/cOS/recovery.squashfs", BootState::Recovery),
        ("root=LABEL=COS_ACTIVE quiet", BootState::Active),
        ("root=LABEL=COS_PASSIVE", BootState::Passive),
        ("root=LABEL=COS_ACTIVE rd.cos.label=COS_PASSIVE", BootState::Unknown),
        ("BOOT_IMAGE=/boot/vmlinuz root=/dev/sda2 ro", BootState::Unknown),
        ("", BootState::Unknown),
    ];
    for (cmdline, want) in cases {
        assert_eq!(boot_state_from_cmdline(cmdline), want, "{cmdline}");
    }
}

#[test]
fn failed_upgrade_shows_as_marker_or_passive_boot() {
    assert!(upgrade_failed(true, BootState::Active));
    assert!(upgrade_failed(false, BootState::Passive));
    assert!(!upgrade_failed(false, BootState::Active));
    assert!(!upgrade_failed(false, BootState::Recovery));
}

#[test]
fn machine_id_is_32_lowercase_hex_digits() {
    let id = parse_machine_id("  4c4c4544004d3510804ab4c04f4d3732\n").unwrap();
    assert_eq!(id.as_str(), "4c4c4544004d3510804ab4c04f4d3732");
    for bad in [
        "",
        "uninitialized",
        "4C4C4544004D3510804AB4C04F4D3732",
        "4c4c4544004d3510804ab4c04f4d373",
        "4c4c4544-004d-3510-804a-b4c04f4d3732",
        "00000000000000000000000000000000",
    ] {
        match parse_machine_id(bad) {
            Err(IdentityError::Invalid { key, error }) => {
                assert_eq!((key, error.field), (MACHINE_ID_PATH, "machine_id"), "{bad}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

/// Up to eight lines of printable ASCII, most shaped like `KEY=...`.
const RELEASE_FILE_LIKE: &str = "(([A-Z_]{1,8}=)?[\\x20-\\x7e\\t]{0,30}\n){0,8}";

proptest! {
    #[test]
    fn any_text_yields_an_identity_or_an_error_never_a_panic(text in RELEASE_FILE_LIKE) {
        let _ = NodeIdentity::parse(&text);
        let _ = boot_state_from_cmdline(&text);
        let _ = parse_machine_id(&text);
    }
}

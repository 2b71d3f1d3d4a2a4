//! Image reference tests: real tags of every generation, the rules each
//! part must satisfy, and round-trip properties.

use super::*;
use crate::fleet::model::K8sDistro;
use proptest::prelude::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn parse(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn k3s(version: &str, build: &str) -> SoftwareVersion {
    SoftwareVersion { distro: K8sDistro::K3s, version: Version::parse(version).unwrap(), build: build.into() }
}

fn family(flavor: &str, release: &str, variant: Variant, arch: Arch, model: &str) -> ImageFamily {
    ImageFamily {
        flavor: flavor.into(),
        flavor_release: release.into(),
        variant,
        arch,
        model: model.into(),
        trusted_boot: false,
    }
}

/// Real tags of every Kairos generation, plus mirrors; each is also tried pinned to a digest.
const CORPUS: &[&str] = &[
    "quay.io/kairos/core-opensuse:v1.5.0",
    "quay.io/kairos/kairos-opensuse:v1.5.1-k3sv1.26.1-k3s1",
    "quay.io/kairos/core-alpine-arm-rpi:v1.1.7.img",
    "quay.io/kairos/kairos-ubuntu-22-lts:v1.6.0-k3sv1.25.6-k3s1",
    "quay.io/kairos/core-ubuntu-20-lts:v1.4.0",
    "quay.io/kairos/core-opensuse-arm-rpi-img:v1.5.0",
    "quay.io/kairos/kairos-alpine-opensuse-leap:v1.6.1-k3sv1.26.1-k3s1",
    "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1",
    "quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.3",
    "quay.io/kairos/alpine:3.19-standard-arm64-rpi4-v3.0.0-k3sv1.29.0-k3s1",
    "quay.io/kairos/ubuntu:22.04-core-arm64-nvidia-jetson-agx-orin-v3.1.0",
    "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v3.0.6-k3sv1.29.3-k3s1",
    "quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.0-k3s-v1.33.2-k3s1",
    "quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0-uki",
    "quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.1-k0s-v1.33.3-k0s.0",
    "quay.io/kairos/opensuse:leap-15.6-core-amd64-generic-v3.5.0-img",
    "quay.io/kairos/rockylinux:9-core-amd64-generic-v3.0.0-rc1",
    "quay.io/kairos/core-opensuse:v2.5.0-beta.2",
    "registry.local:5000/mirror/kairos/core-opensuse:v1.5.0",
    "localhost:5000/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0",
    "core-opensuse:v1.5.0",
];

#[test]
fn real_tags_of_every_generation_render_byte_identically() {
    let pinned = CORPUS.iter().map(|s| format!("{s}@{DIGEST}"));
    for s in CORPUS.iter().map(|s| s.to_string()).chain(pinned) {
        let image = parse(&s);
        assert_eq!(image.to_string(), s);
        assert_eq!(ImageRef::parse(&image.to_string()), Ok(image));
    }
}

#[test]
fn v1_repository_names_the_variant_and_the_seed_table_names_the_platform() {
    let core = parse("quay.io/kairos/core-opensuse:v1.5.0");
    assert_eq!(core.grammar(), TagGrammar::V1);
    assert_eq!(core.family(), family("opensuse", "", Variant::Core, Arch::Amd64, "generic"));
    assert_eq!(core.release(), &Version::new(1, 5, 0));
    assert_eq!(core.software(), None);

    let standard = parse("quay.io/kairos/kairos-opensuse:v1.5.1-k3sv1.26.1-k3s1");
    assert_eq!(standard.family().variant, Variant::Standard);
    assert_eq!(standard.software(), Some(&k3s("1.26.1", "k3s1")));

    let rpi = parse("quay.io/kairos/kairos-opensuse-arm-rpi:v1.5.0-k3sv1.26.1-k3s1");
    assert_eq!(rpi.family(), family("opensuse-arm-rpi", "", Variant::Standard, Arch::Arm64, "rpi"));
    let unknown = parse("quay.io/kairos/core-debian:v1.5.0");
    assert_eq!((unknown.family().arch, unknown.family().model.as_str()), (Arch::Amd64, "generic"));
}

#[test]
fn v2_tag_anchors_on_variant_arch_and_release_so_dashed_parts_survive() {
    let leap = parse("quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1");
    assert_eq!(leap.grammar(), TagGrammar::V2);
    assert_eq!(leap.family(), family("opensuse", "leap-15.5", Variant::Standard, Arch::Amd64, "generic"));
    assert_eq!(leap.release(), &Version::new(2, 4, 2));
    assert_eq!(leap.software(), Some(&k3s("1.27.6", "k3s1")));

    let jetson = parse("quay.io/kairos/ubuntu:22.04-core-arm64-nvidia-jetson-agx-orin-v3.1.0");
    assert_eq!(jetson.family(), family("ubuntu", "22.04", Variant::Core, Arch::Arm64, "nvidia-jetson-agx-orin"));
    assert_eq!(jetson.grammar(), TagGrammar::V2);
}

#[test]
fn v35_tag_gives_the_distro_its_own_dash() {
    let k3s_image = parse("quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.0-k3s-v1.33.2-k3s1");
    assert_eq!(k3s_image.grammar(), TagGrammar::V35);
    assert_eq!(k3s_image.software(), Some(&k3s("1.33.2", "k3s1")));

    let k0s = parse("quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.1-k0s-v1.33.3-k0s.0");
    let sw = k0s.software().unwrap();
    assert_eq!((sw.distro, sw.build.as_str()), (K8sDistro::K0s, "k0s.0"));
    assert_eq!(k0s.release(), &Version::new(3, 5, 1));
}

#[test]
fn uki_suffix_marks_a_trusted_boot_family_of_its_own() {
    let uki = parse("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0-uki");
    let plain = parse("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0");
    assert!(uki.trusted_boot() && uki.family().trusted_boot);
    assert!(!plain.trusted_boot() && !plain.family().trusted_boot);
    assert_ne!(uki.family(), plain.family());
    assert_eq!(uki.family(), ImageFamily { trusted_boot: true, ..plain.family() });
    assert_eq!(uki.family().to_string(), "ubuntu:24.04/core/amd64/generic/uki");
    assert_eq!(plain.family().to_string(), "ubuntu:24.04/core/amd64/generic");
    assert_ne!(uki, plain);
}

#[test]
fn core_tags_take_the_v35_grammar_from_release_3_5_on() {
    assert_eq!(parse("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.4.2").grammar(), TagGrammar::V2);
    assert_eq!(parse("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0").grammar(), TagGrammar::V35);
    assert_eq!(parse("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0-rc2").grammar(), TagGrammar::V35);
    assert_eq!(TagGrammar::for_release(&Version::new(1, 6, 0)), TagGrammar::V1);
    assert_eq!(TagGrammar::for_release(&Version::new(2, 4, 0)), TagGrammar::V2);
    assert_eq!(TagGrammar::for_release(&Version::parse("3.5.0-beta.1").unwrap()), TagGrammar::V35);
}

#[test]
fn pre_release_ends_at_the_next_tag_word() {
    let rc = parse("quay.io/kairos/rockylinux:9-core-amd64-generic-v3.0.0-rc1");
    assert_eq!(rc.release(), &Version::parse("3.0.0-rc1").unwrap());
    let beta = parse("quay.io/kairos/kairos-opensuse:v2.5.0-beta.2-k3sv1.27.6-k3s1");
    assert_eq!(beta.release(), &Version::parse("2.5.0-beta.2").unwrap());
    assert_eq!(beta.software(), Some(&k3s("1.27.6", "k3s1")));
    let uki = parse("quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.0-rc-1-k3s-v1.33.2-k3s1-uki-img");
    assert_eq!(uki.release(), &Version::parse("3.5.0-rc-1").unwrap());
    assert!(uki.trusted_boot() && uki.is_disk_image());
}

#[test]
fn registry_prefix_is_kept_exactly_as_written() {
    let mirror = parse("registry.local:5000/mirror/kairos/core-opensuse:v1.5.0");
    assert_eq!(mirror.registry(), Some("registry.local:5000"));
    assert_eq!(mirror.registry_prefix(), "registry.local:5000/mirror/kairos");
    assert_eq!(mirror.repository(), "mirror/kairos/core-opensuse");
    let local = parse("localhost:5000/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0");
    assert_eq!(local.registry(), Some("localhost:5000"));
    let bare = parse("kairos/core-opensuse:v1.5.0");
    assert_eq!((bare.registry(), bare.repository().as_str()), (None, "kairos/core-opensuse"));
    assert_eq!(parse("quay.io/kairos/core-opensuse:v1.5.0").registry_prefix(), &RegistryPrefix::default());
}

#[test]
fn mirror_prefix_is_configuration_and_keeps_the_digest() {
    let upstream = parse(&format!("quay.io/kairos/kairos-opensuse:v1.5.1-k3sv1.26.1-k3s1@{DIGEST}"));
    let mirror = RegistryPrefix::parse("registry.local:5000/mirror/kairos/").unwrap();
    let moved = upstream.with_registry_prefix(&mirror);
    assert_eq!(
        moved.to_string(),
        format!("registry.local:5000/mirror/kairos/kairos-opensuse:v1.5.1-k3sv1.26.1-k3s1@{DIGEST}")
    );
    assert_eq!(moved.family(), upstream.family());
    assert_eq!(moved.with_registry_prefix(&RegistryPrefix::default()), upstream);
    assert_eq!(RegistryPrefix::default().to_string(), DEFAULT_REGISTRY_PREFIX);
}

#[test]
fn digest_pins_content_and_must_be_sha256_hex() {
    let pinned = parse("quay.io/kairos/core-opensuse:v1.5.0").with_digest(DIGEST).unwrap();
    assert_eq!(pinned.digest(), Some(DIGEST));
    assert_eq!(pinned.tag(), "v1.5.0");
    for bad in ["sha256:abc", "md5:0123", &DIGEST.to_uppercase()] {
        let e = ImageRef::parse(&format!("quay.io/kairos/core-opensuse:v1.5.0@{bad}")).unwrap_err();
        assert_eq!(e.field(), "digest", "{bad}");
    }
}

#[test]
fn disk_image_is_never_an_upgrade_target() {
    for (s, suffix) in [
        ("quay.io/kairos/core-alpine-arm-rpi:v1.1.7.img", ".img"),
        ("quay.io/kairos/opensuse:leap-15.6-core-amd64-generic-v3.5.0-img", "-img"),
        ("quay.io/kairos/core-opensuse-arm-rpi-img:v1.5.0", "-img"),
    ] {
        assert!(parse(s).is_disk_image());
        let e = ImageRef::upgrade_target(s).unwrap_err();
        assert_eq!(e.field(), "tag");
        let msg = e.to_string();
        assert!(msg.contains("raw disk artifacts are never upgrade targets"), "{msg}");
        assert!(msg.contains(&format!("use the container image tag without {suffix}")), "{msg}");
    }
    let e = ImageRef::upgrade_target("quay.io/kairos/core-alpine-arm-rpi:v1.1.7.img").unwrap_err();
    assert!(e.to_string().ends_with("quay.io/kairos/core-alpine-arm-rpi:v1.1.7"), "{e}");
    assert!(ImageRef::upgrade_target("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0-uki").is_ok());
}

#[test]
fn for_target_renders_the_tag_a_node_needs() {
    let seed = matrix::seed_flavor("opensuse").unwrap().family(Variant::Core);
    let v1 =
        ImageRef::for_target(&RegistryPrefix::default(), &seed, TagGrammar::V1, &Version::new(1, 5, 1), None).unwrap();
    assert_eq!(v1.to_string(), "quay.io/kairos/core-opensuse:v1.5.1");

    let leap = family("opensuse", "leap-15.5", Variant::Standard, Arch::Amd64, "generic");
    let sw = k3s("1.27.6", "k3s1");
    let v2 = ImageRef::for_target(&RegistryPrefix::default(), &leap, TagGrammar::V2, &Version::new(2, 4, 2), Some(&sw))
        .unwrap();
    assert_eq!(v2.to_string(), "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1");

    let mirror = RegistryPrefix::parse("localhost:5000/kairos").unwrap();
    let leap_uki = ImageFamily { trusted_boot: true, ..leap.clone() };
    let v35 = ImageRef::for_target(&mirror, &leap_uki, TagGrammar::V35, &Version::new(3, 5, 0), Some(&sw)).unwrap();
    assert_eq!(
        v35.to_string(),
        "localhost:5000/kairos/opensuse:leap-15.5-standard-amd64-generic-v3.5.0-k3s-v1.27.6-k3s1-uki"
    );
}

#[test]
fn for_target_refuses_combinations_no_tag_can_express() {
    use TagGrammar::{V1, V2, V35};
    let prefix = RegistryPrefix::default();
    let refused = |fam: &ImageFamily, grammar, release: &str, sw: Option<&SoftwareVersion>| {
        let release = Version::parse(release).unwrap();
        let e = ImageRef::for_target(&prefix, fam, grammar, &release, sw).unwrap_err();
        assert!(e.to_string().contains(&format!("{}: ", e.field())), "{e}");
        e.field()
    };
    let v1_core = matrix::seed_flavor("opensuse").unwrap().family(Variant::Core);
    let v1_standard = matrix::seed_flavor("opensuse").unwrap().family(Variant::Standard);
    let ubuntu = family("ubuntu", "24.04", Variant::Core, Arch::Amd64, "generic");
    let sw = k3s("1.27.6", "k3s1");

    let with_release = ImageFamily { flavor_release: "15.4".into(), ..v1_core.clone() };
    assert_eq!(refused(&with_release, V1, "1.5.0", None), "flavor_release");
    assert_eq!(refused(&v1_standard, V1, "1.5.0", None), "software");
    assert_eq!(refused(&v1_core, V1, "1.5.0", Some(&sw)), "software");
    let v1_uki = ImageFamily { trusted_boot: true, ..v1_core.clone() };
    assert_eq!(refused(&v1_uki, V1, "1.5.0", None), "trusted_boot");
    let on_arm = ImageFamily { arch: Arch::Arm64, ..v1_core.clone() };
    assert_eq!(refused(&on_arm, V1, "1.5.0", None), "arch");
    let no_release = ImageFamily { flavor_release: String::new(), ..ubuntu.clone() };
    assert_eq!(refused(&no_release, V2, "2.4.0", None), "flavor_release");
    assert_eq!(refused(&ubuntu, V2, "3.5.0", None), "grammar");
    assert_eq!(refused(&ubuntu, V35, "3.4.0", None), "grammar");
    assert_eq!(refused(&ubuntu, V2, "3.0.0+build5", None), "release");
    assert_eq!(refused(&ubuntu, V2, "3.0.0-img", None), "release");
    let model = ImageFamily { model: "rpi-v1.2.3".into(), ..ubuntu.clone() };
    assert_eq!(refused(&model, V2, "3.0.0", None), "model");
    let upper = ImageFamily { flavor: "Ubuntu".into(), ..ubuntu.clone() };
    assert_eq!(refused(&upper, V2, "3.0.0", None), "flavor");
    let odd_build = SoftwareVersion { build: "rke2".into(), ..sw.clone() };
    let standard = ImageFamily { variant: Variant::Standard, ..ubuntu.clone() };
    assert_eq!(refused(&standard, V2, "3.0.0", Some(&odd_build)), "software_version");
}

#[test]
fn missing_tag_is_an_error_naming_the_tag() {
    for s in [
        "quay.io/kairos/core-opensuse",
        "localhost:5000/kairos/ubuntu",
        "quay.io/kairos/core-opensuse:",
        &format!("quay.io/kairos/core-opensuse@{DIGEST}"),
    ] {
        let e = ImageRef::parse(s).unwrap_err();
        assert_eq!(e.field(), "tag", "{s}: {e}");
        assert!(e.to_string().contains("tag: missing"), "{e}");
    }
}

#[test]
fn garbage_tag_is_an_error_naming_the_tag_grammar() {
    for s in ["quay.io/kairos/core-opensuse:latest", "quay.io/kairos/ubuntu:24.04", "quay.io/kairos/x:a b"] {
        let e = ImageRef::parse(s).unwrap_err();
        assert_eq!(e.field(), "tag", "{s}: {e}");
    }
    let e = ImageRef::parse("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0-uki-extra").unwrap_err();
    assert!(e.to_string().contains("unexpected `extra` after the release"), "{e}");
}

#[test]
fn v1_tag_with_bad_semver_names_the_release() {
    for s in [
        "quay.io/kairos/core-opensuse:v1.5",
        "quay.io/kairos/core-opensuse:v01.5.0",
        "quay.io/kairos/core-opensuse:v1.5.0.1",
        "quay.io/kairos/kairos-ubuntu-22-lts:v1.6.0--k3sv1.25.6-k3s1",
    ] {
        let e = ImageRef::parse(s).unwrap_err();
        assert_eq!(e.field(), "release", "{s}: {e}");
        assert!(e.to_string().contains("semver"), "{e}");
    }
    let e = ImageRef::parse("quay.io/kairos/opensuse:v1.5.0").unwrap_err();
    assert_eq!(e.field(), "repository");
}

#[test]
fn unknown_arch_names_the_arch_field() {
    let e = ImageRef::parse("quay.io/kairos/ubuntu:24.04-core-riscv64-generic-v3.5.0").unwrap_err();
    assert_eq!(e.field(), "arch");
    assert!(e.to_string().contains("arch: must be `amd64` or `arm64`"), "{e}");
    let e = ImageRef::parse("quay.io/kairos/ubuntu:24.04-core-x86_64-generic-v3.5.0").unwrap_err();
    assert_eq!(e.field(), "arch", "kernel spellings never appear in tags: {e}");
}

#[test]
fn variant_and_engine_must_agree() {
    let e = ImageRef::parse("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0-k3s-v1.33.2-k3s1").unwrap_err();
    assert_eq!(e.field(), "software");
    let e = ImageRef::parse("quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.0").unwrap_err();
    assert_eq!(e.field(), "software");
    let e = ImageRef::parse("quay.io/kairos/kairos-opensuse:v1.5.0-k3s-v1.26.1-k3s1").unwrap_err();
    assert_eq!(e.field(), "software_version");
    let e = ImageRef::parse("quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.0-k3s-v1.33.2").unwrap_err();
    assert_eq!(e.field(), "software_version");
}

#[test]
fn registry_prefix_rejects_malformed_configuration() {
    for bad in ["Quay/Kairos", "quay.io//kairos", "quay.io:port/kairos", "-bad.io/kairos"] {
        let e = RegistryPrefix::parse(bad).unwrap_err();
        assert!(matches!(e, ImageRefError::InvalidPrefix { .. }), "{bad}: {e}");
    }
    assert!(RegistryPrefix::parse("").unwrap().is_empty());
    assert_eq!(RegistryPrefix::parse("localhost").unwrap().registry(), Some("localhost"));
    assert_eq!(RegistryPrefix::parse("kairos").unwrap().registry(), None);
}

#[test]
fn leading_release_ignores_a_trailing_engine_version() {
    assert_eq!(leading_release("v2.4.2-v1.27.6+k3s1"), Some(Version::new(2, 4, 2)));
    assert_eq!(leading_release("v1.5.0-k3sv1.26.1+k3s1"), Some(Version::new(1, 5, 0)));
    assert_eq!(leading_release("v3.2.1"), Some(Version::new(3, 2, 1)));
    assert_eq!(leading_release("v3.0.0-rc1"), Version::parse("3.0.0-rc1").ok());
    assert_eq!(leading_release("v3.0.0-rc1-v1.29.0+k3s1"), Version::parse("3.0.0-rc1").ok());
    assert_eq!(leading_release("latest"), None);
}

fn release_strategy() -> impl Strategy<Value = Version> {
    let pre = prop_oneof![Just(String::new()), "(rc|beta|alpha)[1-9]?", "(rc|beta|alpha)\\.[1-9]", "rc-[1-9]",];
    (0u64..6, 0u64..12, 0u64..20, pre).prop_map(|(major, minor, patch, pre)| {
        let text =
            if pre.is_empty() { format!("{major}.{minor}.{patch}") } else { format!("{major}.{minor}.{patch}-{pre}") };
        Version::parse(&text).unwrap_or_else(|_| Version::new(major, minor, patch))
    })
}

fn software_strategy() -> impl Strategy<Value = SoftwareVersion> {
    (prop::bool::ANY, 20u64..36, 0u64..16, 0u32..4).prop_map(|(k0s, minor, patch, n)| {
        let (distro, build) =
            if k0s { (K8sDistro::K0s, format!("k0s.{n}")) } else { (K8sDistro::K3s, format!("k3s{n}")) };
        SoftwareVersion { distro, version: Version::new(1, minor, patch), build }
    })
}

fn prefix_strategy() -> impl Strategy<Value = RegistryPrefix> {
    prop_oneof![
        Just("quay.io/kairos".to_string()),
        Just("registry.local:5000/mirror/kairos".to_string()),
        Just("localhost:5000".to_string()),
        Just("kairos".to_string()),
        Just(String::new()),
        "[a-z]{1,8}\\.[a-z]{2,3}(:[0-9]{2,5})?(/[a-z0-9]{1,6}){0,3}",
    ]
    .prop_map(|p| RegistryPrefix::parse(&p).unwrap_or_default())
}

/// Valid (prefix, family, grammar, release, software) combinations; v2+
/// families may be trusted-boot.
fn target_strategy(
) -> impl Strategy<Value = (RegistryPrefix, ImageFamily, TagGrammar, Version, Option<SoftwareVersion>)> {
    let v1_flavor = prop_oneof![
        prop::sample::select(matrix::SEED_FLAVORS.iter().map(|f| f.id.to_string()).collect::<Vec<_>>()),
        "[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?".prop_filter("reads as a disk repository", |f| !f.ends_with("-img")),
    ];
    let flavor_release = prop_oneof!["[0-9]{1,2}\\.[0-9]{2}", "leap-15\\.[0-9]", "[0-9]{1,2}", "tumbleweed"];
    let model = prop_oneof![
        Just("generic".to_string()),
        Just("nvidia-jetson-agx-orin".to_string()),
        "rpi[34]?",
        "[a-z][a-z0-9]{0,5}(-[a-z0-9]{1,5}){0,2}",
    ];
    let arch = prop_oneof![Just(Arch::Amd64), Just(Arch::Arm64)];
    let variant = prop_oneof![Just(Variant::Core), Just(Variant::Standard)];
    (
        prefix_strategy(),
        prop::sample::select(vec![TagGrammar::V1, TagGrammar::V2, TagGrammar::V35]),
        v1_flavor,
        "[a-z][a-z0-9]{1,9}",
        flavor_release,
        model,
        arch,
        variant,
        release_strategy(),
        software_strategy(),
        prop::bool::ANY,
    )
        .prop_map(
            |(prefix, grammar, v1_flavor, flavor, flavor_release, model, arch, variant, release, sw, uki)| {
                let software = (variant == Variant::Standard).then_some(sw);
                if grammar == TagGrammar::V1 {
                    let (arch, model) = v1_platform(&v1_flavor);
                    let fam = ImageFamily {
                        flavor: v1_flavor,
                        flavor_release: String::new(),
                        variant,
                        arch,
                        model,
                        trusted_boot: false,
                    };
                    (prefix, fam, grammar, release, software)
                } else {
                    let grammar = if variant == Variant::Core { v2_or_v35(&release) } else { grammar };
                    let fam = ImageFamily { flavor, flavor_release, variant, arch, model, trusted_boot: uki };
                    (prefix, fam, grammar, release, software)
                }
            },
        )
}

/// A corpus entry with a few characters replaced, inserted or removed.
fn mutated_reference() -> impl Strategy<Value = String> {
    let edit = (0usize..200, 0u8..3, prop::sample::select(b"0123456789abcdefgkmsuv.:-_/@+".to_vec()));
    (prop::sample::select(CORPUS.to_vec()), prop::collection::vec(edit, 1..4)).prop_map(|(s, edits)| {
        let mut bytes = s.as_bytes().to_vec();
        for (at, kind, byte) in edits {
            let at = at % (bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

proptest! {
    #[test]
    fn any_reference_that_parses_renders_back_byte_identically(s in mutated_reference()) {
        if let Ok(image) = ImageRef::parse(&s) {
            prop_assert_eq!(image.to_string(), s);
        }
    }

    #[test]
    fn rendered_targets_parse_back_identically(
        (prefix, fam, grammar, release, software) in target_strategy(),
        pin in prop::bool::ANY,
    ) {
        let image = ImageRef::for_target(&prefix, &fam, grammar, &release, software.as_ref())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let image = match pin {
            true => image.with_digest(DIGEST).map_err(|e| TestCaseError::fail(e.to_string()))?,
            false => image,
        };
        let rendered = image.to_string();
        let back = ImageRef::parse(&rendered).map_err(|e| TestCaseError::fail(format!("{rendered}: {e}")))?;
        prop_assert_eq!(&back, &image);
        prop_assert_eq!(back.trusted_boot(), fam.trusted_boot);
        prop_assert_eq!(back.family(), fam);
        prop_assert_eq!(back.release(), &release);
        prop_assert_eq!(back.software(), software.as_ref());
        prop_assert_eq!(back.grammar(), grammar);
        prop_assert_eq!(back.registry_prefix(), &prefix);
        prop_assert!(ImageRef::upgrade_target(&rendered).is_ok());
    }

    #[test]
    fn disk_suffix_on_any_target_reads_as_the_same_image_marked_disk(
        (prefix, fam, grammar, release, software) in target_strategy(),
        dot in prop::bool::ANY,
    ) {
        let image = ImageRef::for_target(&prefix, &fam, grammar, &release, software.as_ref())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let rendered = format!("{image}{}", if dot { ".img" } else { "-img" });
        let disk = ImageRef::parse(&rendered).map_err(|e| TestCaseError::fail(format!("{rendered}: {e}")))?;
        prop_assert!(disk.is_disk_image());
        prop_assert_eq!(disk.to_string(), rendered.clone());
        prop_assert_eq!(disk.family(), fam);
        prop_assert_eq!(disk.release(), &release);
        prop_assert!(ImageRef::upgrade_target(&rendered).is_err());
    }
}

//! Facts about architectures and machine types that QEMU does not report but that decide
//! parts of the document (which machines have a built-in IDE controller, which cannot
//! take a floppy drive, which are ARM `virt`...). Machine names are canonical names
//! (`pc-q35-7.2`), as `<machine>` prints them.

/// Evidence (`capsd explain`): the query's arch decided.
fn note_arch(arch: &str) {
    capsd_core::evidence::fact(|| capsd_core::evidence::Fact::Query { name: "arch".into(), value: arch.to_owned() });
}

/// Evidence (`capsd explain`): the query's (canonical) machine decided.
fn note_machine(machine: &str) {
    capsd_core::evidence::fact(|| capsd_core::evidence::Fact::Query {
        name: "machine".into(),
        value: machine.to_owned(),
    });
}

/// The 32- and 64-bit x86 guest architectures.
pub fn is_x86(arch: &str) -> bool {
    note_arch(arch);
    matches!(arch, "i686" | "x86_64")
}

/// The ARM guest architectures libvirt knows.
pub fn is_arm(arch: &str) -> bool {
    note_arch(arch);
    matches!(arch, "armv6l" | "armv7l" | "armv7b" | "aarch64")
}

/// 64-bit POWER.
pub fn is_ppc64(arch: &str) -> bool {
    note_arch(arch);
    matches!(arch, "ppc64" | "ppc64le")
}

/// s390 / s390x.
pub fn is_s390(arch: &str) -> bool {
    note_arch(arch);
    matches!(arch, "s390" | "s390x")
}

/// The i440FX PC family (`pc`, `pc-i440fx-*`, the old `pc-0.*`/`pc-1.*`, RHEL's `rhel*`).
pub fn is_i440fx(arch: &str, machine: &str) -> bool {
    note_machine(machine);
    is_x86(arch)
        && (machine == "pc"
            || machine.starts_with("pc-0.")
            || machine.starts_with("pc-1.")
            || machine.starts_with("pc-i440fx-")
            || machine.starts_with("rhel"))
}

/// The Q35 PC family (`q35`, `pc-q35-*`).
pub fn is_q35(arch: &str, machine: &str) -> bool {
    note_machine(machine);
    is_x86(arch) && (machine == "q35" || machine.starts_with("pc-q35"))
}

/// IBM pSeries (`pseries`, `pseries-*`) on 64-bit POWER.
pub fn is_pseries(arch: &str, machine: &str) -> bool {
    note_machine(machine);
    is_ppc64(arch) && (machine == "pseries" || machine.starts_with("pseries-"))
}

/// The ARM `virt` board (`virt`, `virt-*`).
pub fn is_arm_virt(arch: &str, machine: &str) -> bool {
    note_machine(machine);
    is_arm(arch) && (machine == "virt" || machine.starts_with("virt-"))
}

/// Machines with an IDE controller built into the board: i440FX PCs, MIPS Malta, SPARC
/// sun4u and the PowerMac G3 (`g3beige`).
pub fn has_builtin_ide(arch: &str, machine: &str) -> bool {
    note_machine(machine);
    is_i440fx(arch, machine) || matches!(machine, "malta" | "sun4u" | "g3beige")
}

/// Whether a floppy drive (and so the `fdc` bus) can be configured: everything but
/// pSeries, as far as libvirt 9.0 is concerned (it does not look for a floppy controller
/// type).
pub fn allows_floppy(arch: &str, machine: &str) -> bool {
    !is_pseries(arch, machine)
}

/// The architecture name a firmware descriptor uses for a guest architecture (`arm` for
/// 32-bit ARM, `i386` for i686); descriptors also name 64-bit ones as libvirt does.
pub fn descriptor_arch_matches(descriptor_arch: &str, arch: &str) -> bool {
    let normalized = match descriptor_arch {
        "arm" => "armv7l",
        "i386" => "i686",
        other => other,
    };
    normalized == arch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pc_families() {
        assert!(is_i440fx("x86_64", "pc-i440fx-7.2"));
        assert!(is_i440fx("i686", "pc"));
        assert!(!is_i440fx("x86_64", "pc-q35-7.2"));
        assert!(is_q35("x86_64", "pc-q35-7.2"));
        assert!(!is_q35("aarch64", "pc-q35-7.2"), "machine families are per architecture");
        assert!(has_builtin_ide("x86_64", "pc-i440fx-7.2"));
        assert!(!has_builtin_ide("x86_64", "pc-q35-7.2"));
        assert!(!has_builtin_ide("x86_64", "isapc"));
    }

    #[test]
    fn floppy_everywhere_but_pseries() {
        assert!(!allows_floppy("ppc64", "pseries-7.2"));
        assert!(!allows_floppy("ppc64le", "pseries"));
        assert!(allows_floppy("ppc64", "powernv9"));
        assert!(allows_floppy("aarch64", "virt-7.2"));
        assert!(allows_floppy("s390x", "s390-ccw-virtio-7.2"));
    }

    #[test]
    fn arm_virt() {
        assert!(is_arm_virt("aarch64", "virt-7.2"));
        assert!(is_arm_virt("armv7l", "virt"));
        assert!(!is_arm_virt("riscv64", "virt"));
        assert!(!is_arm_virt("aarch64", "sbsa-ref"));
    }

    #[test]
    fn descriptor_arch_names() {
        assert!(descriptor_arch_matches("arm", "armv7l"));
        assert!(descriptor_arch_matches("x86_64", "x86_64"));
        assert!(!descriptor_arch_matches("x86_64", "i686"));
        assert!(descriptor_arch_matches("i386", "i686"));
    }
}

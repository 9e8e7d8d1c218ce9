//! libvirt's architecture names (`x86_64`, `i686`, `aarch64`, `armv7l`, `ppc64le`, ...), from
//! the names the kernel and the Rust toolchain use. Pure naming: no host access here.

/// The libvirt arch for a kernel machine name (`uname -m`): the 32-bit x86 family becomes
/// `i686`, BSD-style `amd64`/`arm64` become `x86_64`/`aarch64`; other names are already
/// libvirt's.
pub fn from_uname_machine(machine: &str) -> String {
    match machine {
        "i386" | "i486" | "i586" | "i686" => "i686",
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        other => other,
    }
    .to_owned()
}

/// The libvirt arch this program was built for: the host's arch wherever the program runs
/// natively, without asking the kernel.
pub fn of_this_build() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "i686",
        "arm" => "armv7l",
        "powerpc" => "ppc",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_map_to_libvirt_names() {
        assert_eq!(from_uname_machine("i586"), "i686");
        assert_eq!(from_uname_machine("amd64"), "x86_64");
        assert_eq!(from_uname_machine("arm64"), "aarch64");
        assert_eq!(from_uname_machine("ppc64le"), "ppc64le");
        assert_eq!(from_uname_machine("s390x"), "s390x");
    }

    #[test]
    fn this_build_has_a_libvirt_name() {
        let arch = of_this_build();
        assert!(!["x86", "arm", "powerpc", "powerpc64"].contains(&arch), "{arch}");
    }
}

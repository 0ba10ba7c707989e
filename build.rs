//! Release builds place the functions listed in `link/code-order.txt` (what
//! start-up, idling and the hot requests run; `scripts/code-order.py` writes
//! it) side by side. The kernel maps code in 64 KiB windows around each page
//! touched, so the same functions scattered over the binary kept ~23 MiB of it
//! resident in an idle service; together they keep ~5 (docs/performance.md).
//!
//! Only where the linker is LLD (rustc's default on x86_64 Linux); a name the
//! binary no longer has is skipped. `ATELIER_CODE_ORDER=off` turns it off.

fn main() {
    println!("cargo:rerun-if-changed=link/code-order.txt");
    println!("cargo:rerun-if-env-changed=ATELIER_CODE_ORDER");
    let env = |key: &str| std::env::var(key).unwrap_or_default();
    let wanted = env("PROFILE") == "release"
        && env("TARGET") == "x86_64-unknown-linux-gnu"
        && env("ATELIER_CODE_ORDER") != "off";
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("link/code-order.txt");
    if wanted && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=atelier=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=atelier=-Wl,--no-warn-symbol-ordering");
        // Relative relocations packed (DT_RELR, glibc 2.36+): the loader
        // reads ~20 KiB of them instead of 1.6 MiB.
        println!("cargo:rustc-link-arg-bin=atelier=-Wl,-z,pack-relative-relocs");
    }
}

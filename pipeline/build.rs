//! Embeds `sql/migrations/*.sql` into the binary, so `journey migrate` needs no files at run time.

use std::fmt::Write;

fn main() {
    // Read at run time (cargo sets it for every build-script run): a compile-time `env!` would
    // keep the path of whichever checkout first built this script.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = std::path::Path::new(&manifest_dir).join("../sql/migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("sql/migrations exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut code = String::from("/// Migration files, sorted by name.\npub static MIGRATIONS: &[(&str, &str)] = &[\n");
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().expect("file name").to_string_lossy().to_string();
        writeln!(code, "    ({name:?}, include_str!({:?})),", f.canonicalize().expect("canonical path").display().to_string())
            .expect("write");
    }
    code.push_str("];\n");
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("migrations.rs");
    std::fs::write(out, code).expect("write migrations.rs");
}

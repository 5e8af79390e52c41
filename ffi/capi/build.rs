//! Derives two things from the bindgen output of the header (src/bindings.rs), so that the
//! header stays the single source of truth:
//! - checks.rs: a compile-time check that every function the header declares is defined by
//!   this crate with exactly the header's signature;
//! - exports.map: a linker version script exporting those functions and nothing else.

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/bindings.rs");
    let src = std::fs::read_to_string("src/bindings.rs").expect("src/bindings.rs");
    let mut fns: Vec<(String, usize)> = Vec::new();
    // bindgen writes each declaration as `pub fn NAME(` ... `) -> ...;` inside extern blocks.
    let mut rest = src.as_str();
    while let Some(i) = rest.find("pub fn ") {
        rest = &rest[i + 7..];
        let open = rest.find('(').expect("fn name");
        let name = rest[..open].trim().to_string();
        let close = open + rest[open..].find(')').expect("parameter list");
        // bindgen writes each parameter as `name: Type`; paths use `::`, never `: `.
        let arity = rest[open..close].matches(": ").count();
        fns.push((name, arity));
    }
    assert!(!fns.is_empty(), "no functions found in src/bindings.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut checks = String::from("const _: () = {\n");
    for (name, arity) in &fns {
        let args = vec!["_"; *arity].join(", ");
        writeln!(
            checks,
            "    let _ = [generated::{name} as unsafe extern \"C\" fn({args}) -> _, {name}];"
        )
        .unwrap();
    }
    checks.push_str("};\n");
    std::fs::write(out.join("checks.rs"), checks).unwrap();
    let mut map = String::from("{\n  global:\n");
    for (name, _) in &fns {
        writeln!(map, "    {name};").unwrap();
    }
    map.push_str("  local: *;\n};\n");
    let map_path = out.join("exports.map");
    std::fs::write(&map_path, map).unwrap();
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map_path.display()
    );
}

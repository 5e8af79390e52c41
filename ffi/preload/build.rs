//! Export exactly the hooked symbols and nothing else: the linker version script is written
//! from the shim's one symbol table (`src/table.rs`), every row but the `called` ones.

#[path = "src/table.rs"]
#[macro_use]
mod table;

macro_rules! rows {
    ($($sym:ident $name:ident $kind:ident,)*) => {
        [$((stringify!($name), stringify!($kind))),*]
    };
}

fn main() {
    let mut map = String::from("/* written by build.rs from src/table.rs */\n{\n  global:\n");
    for (name, kind) in symbol_table!(rows) {
        if kind != "called" {
            map.push_str(&format!("    {name};\n"));
        }
    }
    map.push_str("  local: *;\n};\n");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("exports.map");
    std::fs::write(&out, map).expect("writing the version script");
    println!("cargo:rerun-if-changed=src/table.rs");
    println!("cargo:rerun-if-changed=build.rs");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        out.display()
    );
}

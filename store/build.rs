//! `sqlx::migrate!` embeds `migrations/` when `store` compiles, and Cargo reruns a macro
//! only when a file it already knows changes: a new migration is a new file, so without
//! this the binary and every test would keep the migrations of the last build (what
//! `sqlx migrate build-script` generates).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

//! Tells the test code whether PostgreSQL tests can run: with
//! `TEST_POSTGRES_URL` set, the `postgres_tests` cfg is on; without it the
//! PostgreSQL variants are compiled as `#[ignore]`d tests, so `cargo test`
//! lists each as ignored, with the reason, and counts them in its summary.
//! It also rebuilds the crate when a migration is added.

fn main() {
    println!("cargo::rerun-if-env-changed=TEST_POSTGRES_URL");
    // `embed_migrations!` sees a changed migration file, not a new one: a
    // new migration directory must rebuild the crate too.
    println!("cargo::rerun-if-changed=migrations");
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    if std::env::var_os("TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}

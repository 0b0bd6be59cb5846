//! Decides at build time whether the PostgreSQL halves of the tests run: they are compiled
//! as `#[ignore]`d unless `TEST_DATABASE_URL` is set (or `REQUIRE_POSTGRES=1`, as in CI,
//! where a missing server must fail instead), so a run without PostgreSQL reports them as
//! ignored in its summary rather than as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(storefront_postgres_tests)");
    println!("cargo::rerun-if-env-changed=TEST_DATABASE_URL");
    println!("cargo::rerun-if-env-changed=REQUIRE_POSTGRES");
    let url_given = std::env::var("TEST_DATABASE_URL").is_ok_and(|url| !url.trim().is_empty());
    let required = std::env::var("REQUIRE_POSTGRES").is_ok_and(|value| value == "1");
    if url_given || required {
        println!("cargo::rustc-cfg=storefront_postgres_tests");
    }
}

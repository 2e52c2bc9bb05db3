//! Throwaway PostgreSQL databases for tests (this crate's and the CLI's): each test gets a fresh
//! database on the test server, dropped when it ends. Not used by the server itself.

use std::str::FromStr as _;

/// The server tests use unless `USHER_TEST_POSTGRES` names another (a `postgres://` URL of any
/// database on it; the user must be allowed to create databases).
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The test server's URL.
pub fn server_url() -> String {
    std::env::var("USHER_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A database created for one test and dropped (with any connections still open to it) when this
/// value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a database with a fresh name on the test server.
    ///
    /// # Panics
    /// If the server cannot be reached or refuses: a test cannot run without it.
    pub async fn create() -> Self {
        let admin_url = server_url();
        let name = format!("usher_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database on {admin_url}: {e}"));
        let mut url = url::Url::parse(&admin_url)
            .unwrap_or_else(|e| panic!("USHER_TEST_POSTGRES is not a URL: {e}"));
        url.set_path(&format!("/{name}"));
        Self {
            name,
            url: url.to_string(),
            admin_url,
        }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let config = tokio_postgres::Config::from_str(url)
        .unwrap_or_else(|e| panic!("bad test database URL {url}: {e}"));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach the test PostgreSQL server at {url} (run ./scripts/test, which starts one): {e}")
        });
    tokio::spawn(connection);
    client
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.admin_url.clone());
        // Dropped inside a runtime that may be single-threaded: the drop runs on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = admin(&url).await;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

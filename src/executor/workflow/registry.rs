//! The registry of workflow definitions: every version of every workflow
//! type, kept in memory and persisted in `workflows.db` (SQLite, WAL) in the
//! data directory, in the PostgreSQL store's `workflow_versions` table when
//! the store is PostgreSQL (so every replica, and a new leader, has them),
//! or only in memory when the store is.
//!
//! A version is written to disk before it can be used, so a run never pins a
//! version that a crash could lose. Versions are never changed or deleted:
//! a run finishes on the version it started with.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rusqlite::{params, Connection};

use super::definition::{self, DefinitionError, Workflow};
use crate::core::{CoreError, FieldViolation};
use crate::domain::now_micros;
use crate::executor::WorkflowRegistry;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The definition is invalid.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<DefinitionError>),
    /// The database failed.
    #[error("workflow registry database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The PostgreSQL store failed.
    #[error("workflow registry: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A definition file could not be read or is invalid.
    #[error("workflow definition file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl From<RegistryError> for CoreError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(errors) => CoreError::InvalidArgument(
                errors
                    .into_iter()
                    .map(|e| FieldViolation {
                        field: "definition".into(),
                        description: e.to_string(),
                    })
                    .collect(),
            ),
            RegistryError::File { path, message } => {
                CoreError::InvalidArgument(vec![FieldViolation {
                    field: format!("workflows.dir: {}", path.display()),
                    description: message,
                }])
            }
            RegistryError::Db(e) => {
                CoreError::Unavailable(format!("workflow registry database: {e}"))
            }
            RegistryError::Store(e) => CoreError::Unavailable(format!("workflow registry: {e}")),
        }
    }
}

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    versions: RwLock<HashMap<String, BTreeMap<u32, Arc<Workflow>>>>,
    /// The database; also serialises registrations.
    db: Mutex<Option<Db>>,
}

/// Where versions are written.
enum Db {
    Sqlite(Connection),
    Postgres {
        versions: crate::store::postgres::versions::Versions,
        fence: Option<crate::store::postgres::Fence>,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workflow_versions (
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    definition TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);";

impl Registry {
    /// A registry kept only in memory.
    pub fn in_memory() -> Registry {
        Registry {
            inner: Arc::new(Inner {
                versions: RwLock::new(HashMap::new()),
                db: Mutex::new(None),
            }),
        }
    }

    /// Opens (or creates) the registry database at `path` and loads every
    /// stored version.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let stored = {
            let mut stmt = conn.prepare(
                "SELECT name, version, definition FROM workflow_versions ORDER BY name, version",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let versions = compile_stored(stored);
        Ok(Registry {
            inner: Arc::new(Inner {
                versions: RwLock::new(versions),
                db: Mutex::new(Some(Db::Sqlite(conn))),
            }),
        })
    }

    /// Opens the registry in the PostgreSQL store of `store` and loads every
    /// stored version. Versions are written fenced by the store's term.
    pub fn open_postgres(
        store: &crate::store::postgres::PgStore,
    ) -> Result<Registry, RegistryError> {
        let versions = crate::store::postgres::versions::Versions::open(store.options())?;
        let stored = versions.all()?;
        Ok(Registry {
            inner: Arc::new(Inner {
                versions: RwLock::new(compile_stored(stored)),
                db: Mutex::new(Some(Db::Postgres {
                    versions,
                    fence: store.fence(),
                })),
            }),
        })
    }

    /// The latest version of a workflow type.
    pub fn latest(&self, name: &str) -> Option<Arc<Workflow>> {
        self.inner
            .versions
            .read()
            .get(name)
            .and_then(|v| v.values().next_back().cloned())
    }

    /// One version of a workflow type.
    pub fn get(&self, name: &str, version: u32) -> Option<Arc<Workflow>> {
        self.inner
            .versions
            .read()
            .get(name)
            .and_then(|v| v.get(&version).cloned())
    }

    /// Registers a compiled definition: a new version unless it is identical
    /// to the latest. Returns the version and whether it is new. Blocks on the
    /// database write.
    pub fn register_compiled(
        &self,
        mut w: Workflow,
    ) -> Result<(Arc<Workflow>, bool), RegistryError> {
        let db = self.inner.db.lock();
        if let Some(latest) = self.latest(&w.name) {
            if latest.json == w.json {
                return Ok((latest, false));
            }
            w.version = latest.version + 1;
        } else {
            w.version = 1;
        }
        match db.as_ref() {
            Some(Db::Sqlite(conn)) => {
                conn.execute(
                    "INSERT INTO workflow_versions (name, version, definition, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![w.name, w.version, w.json, now_micros()],
                )?;
            }
            Some(Db::Postgres { versions, fence }) => versions.insert(
                (w.name.clone(), w.version, w.json.clone()),
                now_micros(),
                fence.clone(),
            )?,
            None => {}
        }
        let w = Arc::new(w);
        self.inner
            .versions
            .write()
            .entry(w.name.clone())
            .or_default()
            .insert(w.version, w.clone());
        tracing::info!(workflow = %w.name, version = w.version, "workflow definition registered");
        Ok((w, true))
    }

    /// Parses, checks and registers a definition's text.
    pub fn register_text(
        &self,
        text: &str,
        format: &str,
    ) -> Result<(Arc<Workflow>, bool), RegistryError> {
        let w = definition::compile_text(text, format).map_err(RegistryError::Invalid)?;
        self.register_compiled(w)
    }

    /// Registers every `*.toml` and `*.json` file of `dir`, in name order.
    /// The first bad file stops the load with an error naming it.
    pub fn load_dir(&self, dir: &Path) -> Result<Vec<(String, u32, bool)>, RegistryError> {
        let file_err = |path: &Path, message: String| RegistryError::File {
            path: path.to_path_buf(),
            message,
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| file_err(dir, format!("cannot read the directory: {e}")))?;
        let mut files: Vec<(PathBuf, &'static str)> = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| file_err(dir, e.to_string()))?.path();
            let format = match path.extension().and_then(|e| e.to_str()) {
                Some("toml") => "toml",
                Some("json") => "json",
                _ => continue,
            };
            if path.is_file() {
                files.push((path, format));
            }
        }
        files.sort();
        let mut out = Vec::with_capacity(files.len());
        for (path, format) in files {
            let text =
                std::fs::read_to_string(&path).map_err(|e| file_err(&path, e.to_string()))?;
            let w = definition::compile_text(&text, format)
                .map_err(|e| file_err(&path, RegistryError::Invalid(e).to_string()))?;
            let (w, created) = self.register_compiled(w)?;
            tracing::info!(file = %path.display(), workflow = %w.name, version = w.version, created, "workflow definition loaded");
            out.push((w.name.clone(), w.version, created));
        }
        Ok(out)
    }

    /// The latest version of every workflow type, by name.
    pub fn list_latest(&self) -> Vec<Arc<Workflow>> {
        let mut out: Vec<Arc<Workflow>> = self
            .inner
            .versions
            .read()
            .values()
            .filter_map(|v| v.values().next_back().cloned())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Compiles stored versions; one that no longer compiles is skipped (runs
/// pinned to it fail with "version not found").
fn compile_stored(
    stored: Vec<(String, u32, String)>,
) -> HashMap<String, BTreeMap<u32, Arc<Workflow>>> {
    let mut versions: HashMap<String, BTreeMap<u32, Arc<Workflow>>> = HashMap::new();
    for (name, version, text) in stored {
        match definition::compile_text(&text, "json") {
            Ok(mut w) => {
                w.version = version;
                versions
                    .entry(name)
                    .or_default()
                    .insert(version, Arc::new(w));
            }
            Err(e) => {
                tracing::error!(
                    workflow = %name,
                    version,
                    cause = %RegistryError::Invalid(e),
                    "a stored workflow version no longer compiles; skipped"
                );
            }
        }
    }
    versions
}

#[async_trait::async_trait]
impl WorkflowRegistry for Registry {
    async fn register(&self, text: &str, format: &str) -> Result<(String, u32, bool), CoreError> {
        let w = definition::compile_text(text, format).map_err(RegistryError::Invalid)?;
        let this = self.clone();
        let (w, created) = tokio::task::spawn_blocking(move || this.register_compiled(w))
            .await
            .map_err(|e| CoreError::Unavailable(format!("workflow registry: {e}")))??;
        Ok((w.name.clone(), w.version, created))
    }

    async fn list(&self) -> Result<Vec<(String, u32, String)>, CoreError> {
        Ok(self
            .list_latest()
            .into_iter()
            .map(|w| (w.name.clone(), w.version, w.json.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"name":"pay","steps":[{"id":"a","task":"charge"}]}"#;
    const V2: &str =
        r#"{"name":"pay","steps":[{"id":"a","task":"charge"},{"id":"b","task":"mail"}]}"#;

    #[test]
    fn versions_are_kept_and_identical_definitions_make_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("workflows.db");
        {
            let r = Registry::open(&path).expect("open");
            let (w, created) = r.register_text(V1, "json").expect("v1");
            assert_eq!((w.version, created), (1, true));
            let (w, created) = r.register_text(V1, "json").expect("v1 again");
            assert_eq!((w.version, created), (1, false));
            let toml_v1 = "name = \"pay\"\n[[steps]]\nid = \"a\"\ntask = \"charge\"\n";
            let (w, created) = r.register_text(toml_v1, "toml").expect("v1 as TOML");
            assert_eq!(
                (w.version, created),
                (1, false),
                "TOML of the same definition is the same version"
            );
            let (w, created) = r.register_text(V2, "json").expect("v2");
            assert_eq!((w.version, created), (2, true));
        }
        // Reopened: both versions are there.
        let r = Registry::open(&path).expect("reopen");
        assert_eq!(r.latest("pay").map(|w| w.version), Some(2));
        assert_eq!(r.get("pay", 1).map(|w| w.steps.len()), Some(1));
        assert_eq!(r.list_latest().len(), 1);
        let (w, created) = r.register_text(V2, "json").expect("v2 again");
        assert_eq!((w.version, created), (2, false));
    }

    #[test]
    fn a_bad_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.json"), V1).expect("write");
        std::fs::write(
            dir.path().join("b.toml"),
            "name = \"x\"\n[[steps]]\nid = \"s\"\ntask = \"t\"\ndepends_on = [\"nope\"]\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let r = Registry::in_memory();
        let err = r
            .load_dir(dir.path())
            .expect_err("b.toml is bad")
            .to_string();
        assert!(err.contains("b.toml"), "{err}");
        assert!(err.contains("step \"s\""), "{err}");
        assert!(r.latest("pay").is_some(), "a.json came first and loaded");
    }
}

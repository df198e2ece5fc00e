//! The private runtime directory that holds the workers' internal sockets.
//!
//! A fresh `mcpgw.<pid>` directory, mode 0700, under the configured
//! `runtime_dir`, else `$XDG_RUNTIME_DIR`, else the system temp dir. It is
//! created new (never reused, so no other user can have planted sockets in
//! it) and removed when the supervisor stops.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot create the runtime directory {path}: {source}")]
pub struct RuntimeDirError {
    path: PathBuf,
    source: std::io::Error,
}

pub(crate) struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    pub(crate) fn create(base: Option<&Path>) -> Result<Self, RuntimeDirError> {
        let base = base.map(Path::to_owned).unwrap_or_else(|| {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
                .unwrap_or_else(std::env::temp_dir)
        });
        let path = base.join(format!("mcpgw.{}", std::process::id()));
        // A directory left by a crashed process with our pid: ours to reuse
        // only if we can remove it.
        if path.exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| RuntimeDirError {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

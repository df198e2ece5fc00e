//! The private runtime directory that holds the workers' internal sockets.
//!
//! A fresh directory with an unpredictable name (`mcpgw.XXXXXX`, made by
//! `mkdtemp`, so mode 0700 and never one that already existed) under the
//! configured `runtime_dir`, else `$XDG_RUNTIME_DIR`, else the system temp
//! dir. A predictable name would let another local user create it first and
//! stop the gateway from starting, or plant sockets in it. It is removed when
//! the supervisor stops; the sockets inside are protected by its mode.
//!
//! A configured `runtime_dir` is a directory the operator chose and may
//! reuse across runs: it must be ours and writable by no one else (else
//! whoever can write there could replace our directory), and is made 0700
//! when missing. The default parents are not checked: `$XDG_RUNTIME_DIR` is
//! the user's own, and the temp dir's sticky bit keeps others from renaming
//! or removing what we create there.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error("cannot create the runtime directory in {path}: {cause}")]
    Create {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "runtime_dir {path} is unsafe: {reason} (owner uid {owner}, mode {mode:04o}); \
         it must be a directory owned by uid {uid} (the gateway's) that group and others \
         cannot write to (e.g. mode 0700)"
    )]
    Unsafe {
        path: PathBuf,
        reason: &'static str,
        owner: u32,
        mode: u32,
        uid: u32,
    },
}

pub(crate) struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    pub(crate) fn create(configured: Option<&Path>) -> Result<Self, RuntimeDirError> {
        let base = match configured {
            Some(dir) => {
                ensure_private(dir)?;
                dir.to_owned()
            }
            None => std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
                .unwrap_or_else(std::env::temp_dir),
        };
        let path = nix::unistd::mkdtemp(&base.join("mcpgw.XXXXXX")).map_err(|errno| {
            RuntimeDirError::Create {
                path: base.clone(),
                cause: errno.into(),
            }
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

/// Create `dir` (mode 0700) if it is missing, then check it as it is now.
fn ensure_private(dir: &Path) -> Result<(), RuntimeDirError> {
    let create = |cause| RuntimeDirError::Create {
        path: dir.to_owned(),
        cause,
    };
    // Recursive: it tolerates a directory that appears meanwhile, which the
    // check below then judges like any other.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(create)?;
    let meta = std::fs::metadata(dir).map_err(create)?;
    let uid = nix::unistd::geteuid().as_raw();
    check_private(meta.is_dir(), meta.uid(), meta.mode(), uid).map_err(|reason| {
        RuntimeDirError::Unsafe {
            path: dir.to_owned(),
            reason,
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
            uid,
        }
    })
}

/// Whether a directory with this owner and mode is private enough to hold
/// our runtime directory; `Err` says why not.
fn check_private(is_dir: bool, owner: u32, mode: u32, uid: u32) -> Result<(), &'static str> {
    if !is_dir {
        return Err("not a directory");
    }
    if owner != uid {
        return Err("owned by another user");
    }
    if mode & 0o022 != 0 {
        return Err("writable by group or others");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_own_directories_closed_to_others_pass() {
        assert_eq!(check_private(true, 1000, 0o40700, 1000), Ok(()));
        assert_eq!(check_private(true, 1000, 0o40755, 1000), Ok(()));
        assert!(check_private(true, 1000, 0o40775, 1000).is_err());
        assert!(check_private(true, 1000, 0o41777, 1000).is_err());
        assert!(check_private(true, 0, 0o40700, 1000).is_err());
        assert!(check_private(false, 1000, 0o100600, 1000).is_err());
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mcpgw-runtime-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn fresh_private_directories_with_unpredictable_names() {
        let base = scratch("fresh");
        let a = RuntimeDir::create(Some(&base)).expect("first");
        let b = RuntimeDir::create(Some(&base)).expect("second");
        assert_ne!(a.path(), b.path());
        let base_mode = std::fs::metadata(&base).expect("base").mode() & 0o777;
        assert_eq!(base_mode, 0o700, "a missing runtime_dir is made private");
        for dir in [&a, &b] {
            assert_eq!(dir.path().parent(), Some(base.as_path()));
            let name = dir
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name");
            assert!(name.starts_with("mcpgw."), "{name}");
            assert_ne!(name, format!("mcpgw.{}", std::process::id()));
            let mode = std::fs::metadata(dir.path()).expect("dir").mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        a.remove();
        assert!(!a.path().exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn an_open_runtime_dir_is_refused() {
        let base = scratch("open");
        std::fs::create_dir(&base).expect("dir");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = RuntimeDir::create(Some(&base))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(&base.display().to_string()), "{e}");
        assert!(
            e.contains("mode 0777") && e.contains("writable by group"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}

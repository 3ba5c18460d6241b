//! A small filesystem seam so the same durable-state code runs on `std::fs` and on turmoil's
//! simulated filesystem (where writes not yet synced vanish when the host crashes).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file opened for appending.
pub trait AppendFile: Send {
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> io::Result<()>;
}

/// The file operations durable state needs.
pub trait FileSystem: Send + Sync + 'static {
    /// The whole file, or `None` when it does not exist.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Opens (creating if needed) `path` for appending.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Replaces `path` with `data` atomically and durably (temporary file, sync, rename).
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// `write_atomic` of whatever `write` writes, handed to the file as it comes (a large
    /// snapshot is never one buffer). The default gathers it first.
    fn write_atomic_with(
        &self,
        path: &Path,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut data = Vec::new();
        write(&mut data)?;
        self.write_atomic(path, &data)
    }
    /// The names of the entries of `dir` (in no particular order).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Cuts `path` to `len` bytes (used to drop a torn tail) and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Removes `path`; not an error when it does not exist.
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Takes the directory `dir` for this process for as long as the returned guard lives, so
    /// that two stores (two brokers) never write one directory at once. Fails with
    /// `ErrorKind::WouldBlock`, naming the directory and the holder's pid when known, while
    /// another holder has it.
    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock>;
}

/// A held directory lock (`FileSystem::lock_dir`); dropping it releases the directory.
#[derive(Debug)]
pub struct DirLock {
    _file: Option<std::fs::File>,
}

impl DirLock {
    /// A guard that holds nothing: for file systems with a single user, like a simulated host's.
    pub fn unshared() -> DirLock {
        DirLock { _file: None }
    }
}

/// The name of the lock file `StdFs::lock_dir` keeps in a data directory (it holds the pid).
pub const LOCK_FILE: &str = "lock";

/// `flock(2)` on `dir/lock`: released by the kernel when the process ends, however it ends
/// (kill -9 included), so a stale lock never outlives its broker. The file holds the holder's
/// pid, for the error the next broker prints.
fn std_lock_dir(dir: &Path) -> io::Result<DirLock> {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;

    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(error);
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim().parse::<u32>() {
            Ok(pid) => format!(" (pid {pid})"),
            Err(_) => String::new(),
        };
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "data directory {} is locked by another process{holder}: another simqtt \
                 broker is using it ({} is held)",
                dir.display(),
                path.display()
            ),
        ));
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(DirLock { _file: Some(file) })
}

pub type SharedFs = Arc<dyn FileSystem>;

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

macro_rules! fs_impl {
    ($name:ident, $doc:literal, $fs:path, $sync_dir:path, $lock_dir:path) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl FileSystem for $name {
            fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
                use $fs as f;
                match f::read(path) {
                    Ok(data) => Ok(Some(data)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            }

            fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
                use $fs as f;
                let file = f::OpenOptions::new().create(true).append(true).open(path)?;
                struct Appender(f::File);
                impl AppendFile for Appender {
                    fn append(&mut self, data: &[u8]) -> io::Result<()> {
                        self.0.write_all(data)
                    }
                    fn sync(&mut self) -> io::Result<()> {
                        self.0.sync_all()
                    }
                }
                Ok(Box::new(Appender(file)))
            }

            fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
                self.write_atomic_with(path, &mut |w| w.write_all(data))
            }

            fn write_atomic_with(
                &self,
                path: &Path,
                write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
            ) -> io::Result<()> {
                use $fs as f;
                let tmp = temp_path(path);
                {
                    let mut file = io::BufWriter::with_capacity(1 << 20, f::File::create(&tmp)?);
                    write(&mut file)?;
                    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                }
                f::rename(&tmp, path)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    // Make the rename itself durable.
                    $sync_dir(dir)?;
                }
                Ok(())
            }

            fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
                use $fs as f;
                let file = f::OpenOptions::new().write(true).open(path)?;
                file.set_len(len)?;
                file.sync_all()
            }

            fn remove(&self, path: &Path) -> io::Result<()> {
                use $fs as f;
                match f::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }

            fn create_dir_all(&self, path: &Path) -> io::Result<()> {
                use $fs as f;
                // A directory entry is only durable once its parent is synced (and turmoil
                // drops unsynced entries on crash), so every directory created here is synced
                // together with its parent: a store opened in a fresh data dir must not lose
                // the dir itself on the first crash.
                let missing: Vec<PathBuf> = path
                    .ancestors()
                    .filter(|a| !a.as_os_str().is_empty() && f::metadata(a).is_err())
                    .map(Path::to_path_buf)
                    .collect();
                f::create_dir_all(path)?;
                for dir in missing.iter().rev() {
                    $sync_dir(dir)?;
                    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                        $sync_dir(parent)?;
                    }
                }
                Ok(())
            }

            fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
                $lock_dir(dir)
            }

            fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
                use $fs as f;
                let mut names = Vec::new();
                for entry in f::read_dir(dir)? {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
                Ok(names)
            }
        }
    };
}

fn std_sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A simulated host's disk belongs to its one broker.
fn sim_lock_dir(_dir: &Path) -> io::Result<DirLock> {
    Ok(DirLock::unshared())
}

fs_impl!(
    StdFs,
    "The real filesystem.",
    std::fs,
    std_sync_dir,
    std_lock_dir
);
fs_impl!(
    SimFs,
    "turmoil's per-host simulated filesystem (inside a simulation only).",
    turmoil::fs::shim::std::fs,
    turmoil::fs::shim::std::fs::sync_dir,
    sim_lock_dir
);

/// A file system that fills up: for tests of what the store and the broker do on a full disk.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// `StdFs` holding at most `capacity` bytes of files per directory (the data directory is
    /// flat). An append beyond it writes what fits and fails with ENOSPC, as a real disk does;
    /// a whole-file write beyond it fails before writing. Raise `capacity` to free space.
    #[derive(Clone)]
    pub(crate) struct LimitedFs {
        pub capacity: Arc<AtomicU64>,
    }

    impl LimitedFs {
        pub fn new(capacity: u64) -> LimitedFs {
            LimitedFs {
                capacity: Arc::new(AtomicU64::new(capacity)),
            }
        }

        fn room(capacity: &AtomicU64, path: &Path) -> u64 {
            let dir = path.parent().unwrap_or(Path::new("."));
            let used: u64 = std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.metadata().ok())
                        .filter(|m| m.is_file())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            capacity.load(Ordering::SeqCst).saturating_sub(used)
        }
    }

    fn no_space() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOSPC)
    }

    struct LimitedAppend {
        inner: Box<dyn AppendFile>,
        path: PathBuf,
        capacity: Arc<AtomicU64>,
    }

    impl AppendFile for LimitedAppend {
        fn append(&mut self, data: &[u8]) -> io::Result<()> {
            let room = LimitedFs::room(&self.capacity, &self.path) as usize;
            if data.len() > room {
                self.inner.append(&data[..room])?;
                return Err(no_space());
            }
            self.inner.append(data)
        }
        fn sync(&mut self) -> io::Result<()> {
            self.inner.sync()
        }
    }

    impl FileSystem for LimitedFs {
        fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
            StdFs.read(path)
        }
        fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
            Ok(Box::new(LimitedAppend {
                inner: StdFs.open_append(path)?,
                path: path.to_path_buf(),
                capacity: self.capacity.clone(),
            }))
        }
        fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            if data.len() as u64 > LimitedFs::room(&self.capacity, path) {
                return Err(no_space());
            }
            StdFs.write_atomic(path, data)
        }
        fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
            StdFs.truncate(path, len)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            StdFs.remove(path)
        }
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            StdFs.create_dir_all(path)
        }
        fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
            StdFs.lock_dir(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            StdFs.list(dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_fs_append_read_atomic_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs;
        let log = dir.path().join("log");
        assert_eq!(fs.read(&log).unwrap(), None);
        let mut file = fs.open_append(&log).unwrap();
        file.append(b"hello ").unwrap();
        file.append(b"world").unwrap();
        file.sync().unwrap();
        assert_eq!(fs.read(&log).unwrap().unwrap(), b"hello world");
        fs.truncate(&log, 5).unwrap();
        assert_eq!(fs.read(&log).unwrap().unwrap(), b"hello");
        let snap = dir.path().join("snapshot");
        fs.write_atomic(&snap, b"one").unwrap();
        fs.write_atomic(&snap, b"two").unwrap();
        assert_eq!(fs.read(&snap).unwrap().unwrap(), b"two");
        fs.remove(&snap).unwrap();
        fs.remove(&snap).unwrap();
        assert_eq!(fs.read(&snap).unwrap(), None);
    }

    #[test]
    fn a_locked_dir_cannot_be_locked_again_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = StdFs.lock_dir(dir.path()).unwrap();
        // flock belongs to the open file, so a second open in this process conflicts too.
        let error = StdFs.lock_dir(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        let text = error.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("(pid {})", std::process::id())),
            "{text}"
        );
        drop(held);
        StdFs.lock_dir(dir.path()).unwrap();
    }
}

//! The files one load reads, each read once: the bytes that are parsed are the bytes that
//! are hashed, so a file changed between two reads can never leave old bytes in force under
//! a new hash (the reload's "nothing changed" test compares these hashes).
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Reads files for one load and keeps their list and the hash of what was read.
#[derive(Default)]
pub struct Gather {
    files: Vec<PathBuf>,
    hasher: Sha256,
}

impl Gather {
    pub fn new() -> Self {
        Gather::default()
    }

    /// Reads `path` as text. The path is listed (to be watched) whether or not it can be
    /// read; the hash takes the path and then exactly the bytes returned, or a marker.
    pub fn read(&mut self, path: &Path) -> Result<String, String> {
        self.files.push(path.to_path_buf());
        let name = path.as_os_str().as_bytes();
        self.hasher.update((name.len() as u64).to_le_bytes());
        self.hasher.update(name);
        match std::fs::read_to_string(path) {
            Ok(text) => {
                self.hasher.update((text.len() as u64).to_le_bytes());
                self.hasher.update(text.as_bytes());
                Ok(text)
            }
            Err(e) => {
                self.hasher.update(u64::MAX.to_le_bytes());
                Err(format!("cannot read: {e}"))
            }
        }
    }

    /// The files read, in order, and the hex SHA-256 of everything read.
    pub fn finish(self) -> (Vec<PathBuf>, String) {
        (self.files, hex::encode(self.hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_follows_the_bytes_read_and_where_they_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "xy").unwrap();
        std::fs::write(&b, "").unwrap();
        let hash = |paths: &[&Path]| {
            let mut g = Gather::new();
            let texts: Vec<_> = paths.iter().map(|p| g.read(p)).collect();
            (texts, g.finish())
        };
        let (texts, (files, h1)) = hash(&[&a, &b]);
        assert_eq!(texts, vec![Ok("xy".to_string()), Ok(String::new())]);
        assert_eq!(files, vec![a.clone(), b.clone()]);
        assert_eq!(hash(&[&a, &b]).1 .1, h1, "same bytes, same hash");
        // The same bytes split differently between files hash differently.
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "y").unwrap();
        assert_ne!(hash(&[&a, &b]).1 .1, h1);
        // A missing file is listed, refused, and hashed apart from an empty one.
        let missing = dir.path().join("gone");
        let (texts, (files, h_missing)) = hash(&[&missing]);
        assert!(texts[0].as_ref().unwrap_err().starts_with("cannot read:"));
        assert_eq!(files, vec![missing.clone()]);
        std::fs::write(&missing, "").unwrap();
        assert_ne!(hash(&[&missing]).1 .1, h_missing);
    }
}

//! The file backend of the credential store: the credentials file read as a [`View`] with
//! a [`Version`] (the SHA-256 of its bytes), and written under a lock on its directory,
//! atomically (a temporary file, fsync, rename, fsync of the directory), with its owner and
//! mode kept, after the loader's own validation, and only in place of exactly the version
//! that was read: a write whose version is stale is refused.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::change::{self, Change};
use super::{Store, StoreError};
use crate::config::raw::CredentialsRaw;
use crate::config::{self, parent_dir, CredentialStore, Environment};

/// Which content of the file a [`View`] was read from: the SHA-256 of its bytes (of no
/// bytes, with a marker, when the file did not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version([u8; 32]);

impl Version {
    fn of(text: Option<&str>) -> Version {
        let mut h = Sha256::new();
        match text {
            Some(t) => {
                h.update(b"file\0");
                h.update(t.as_bytes());
            }
            None => h.update(b"absent\0"),
        }
        Version(h.finalize().into())
    }

    /// The version of a database store at `generation`.
    pub fn from_generation(generation: i64) -> Version {
        let mut h = Sha256::new();
        h.update(b"generation\0");
        h.update(generation.to_be_bytes());
        Version(h.finalize().into())
    }

    /// As an HTTP entity tag (for `If-Match`).
    pub fn etag(&self) -> String {
        format!("\"{}\"", hex::encode(&self.0[..16]))
    }
}

/// The file as read: its text, parsed both ways, and its version.
pub struct View {
    /// `None` when the file does not exist yet.
    pub text: Option<String>,
    pub raw: CredentialsRaw,
    pub value: Value,
    pub version: Version,
}

/// The credentials file of one config.
pub struct FileStore {
    /// As the user named it (for messages).
    pub shown: PathBuf,
    /// The real file (symlinks resolved, so that a link is written through, not replaced).
    pub real: PathBuf,
    /// The environment of the main config (production rules apply to writes).
    pub env: Environment,
}

/// An exclusive lock on the file's directory, held for one read-modify-write.
struct Lock {
    dir: File,
    path: PathBuf,
}

impl FileStore {
    /// The store of the file at `shown` (which need not exist yet: its directory must).
    pub fn resolve(shown: PathBuf, env: Environment) -> Result<FileStore, String> {
        let real = match fs::canonicalize(&shown) {
            Ok(p) => p,
            Err(_) => {
                // Not there yet (create makes it): resolve the directory instead.
                let dir = parent_dir(&shown);
                let dir = fs::canonicalize(&dir)
                    .map_err(|e| format!("{}: cannot use the directory {}: {e}", shown.display(), dir.display()))?;
                dir.join(shown.file_name().ok_or_else(|| format!("{} is not a file name", shown.display()))?)
            }
        };
        Ok(FileStore { shown, real, env })
    }

    pub fn label(&self) -> String {
        self.shown.display().to_string()
    }

    /// Reads the file with the loader's own parser, so it means here what it means to the
    /// sidecar. A missing file is an empty store unless `must_exist`.
    pub fn read(&self, must_exist: bool) -> Result<View, String> {
        let text = match fs::read_to_string(&self.real) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => None,
            Err(e) => return Err(format!("{}: cannot read: {e}", self.label())),
        };
        let version = Version::of(text.as_deref());
        let body = text.as_deref().unwrap_or("");
        let value: Value = if body.trim().is_empty() {
            Value::Null
        } else {
            config::parse(&self.shown, body).map_err(|e| e.to_string())?
        };
        if value.is_null() {
            // Empty, or comments only: a file to add to.
            return Ok(View { text, raw: CredentialsRaw::default(), value: Value::Object(Default::default()), version });
        }
        let raw: CredentialsRaw = config::parse(&self.shown, body).map_err(|e| e.to_string())?;
        Ok(View { text, raw, value, version })
    }

    /// Locks the file's directory for one read-modify-write.
    fn lock(&self) -> Result<Lock, String> {
        let path = parent_dir(&self.real);
        let dir = File::open(&path).map_err(|e| format!("cannot open the directory {}: {e}", path.display()))?;
        dir.lock().map_err(|e| format!("cannot lock the directory {}: {e}", path.display()))?;
        Ok(Lock { dir, path })
    }

    /// Validates `new_text` as the sidecar would, then writes it atomically in place of
    /// the version `old` was read at. Returns the validated store and the load's warnings.
    fn commit(
        &self,
        lock: &Lock,
        old: &View,
        new_text: &str,
        now: i64,
    ) -> Result<(CredentialStore, Vec<String>), StoreError> {
        let validated = config::credentials_from_text(&self.shown, new_text, self.env, now).map_err(StoreError::Invalid)?;
        self.write_atomic(lock, old.version, new_text).map_err(|e| match e {
            StoreError::Other(e) => StoreError::Other(format!("cannot write {}: {e}; the file is unchanged", self.label())),
            e => e,
        })?;
        Ok(validated)
    }

    fn write_atomic(&self, lock: &Lock, expected: Version, text: &str) -> Result<(), StoreError> {
        let path = &self.real;
        let meta = fs::metadata(path).ok();
        let mode = meta.as_ref().map_or(0o600, |m| m.permissions().mode() & 0o7777);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = lock.path.join(format!(".{name}.{:08x}.tmp", OsRng.next_u32()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| format!("cannot create a temporary file in {}: {e}", lock.path.display()))?;
        let result = (|| {
            f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
            f.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", tmp.display()))?;
            if let Some(m) = &meta {
                // Keep the owner, so a sidecar running as another user can still read it.
                // Only root may give a file away; for anyone else this is already the owner.
                let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
            }
            f.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))?;
            // Someone (an editor, a deploy) changed the file since it was read: the version
            // is stale, and their change is not overwritten.
            if Version::of(fs::read_to_string(path).ok().as_deref()) != expected {
                return Err(StoreError::Stale(format!(
                    "{} was changed by someone else while this command ran; run the command again",
                    self.label()
                )));
            }
            fs::rename(&tmp, path).map_err(|e| format!("cannot rename {} over it: {e}", tmp.display()))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
            return result;
        }
        lock.dir.sync_all().map_err(|e| StoreError::Other(format!("written, but the directory could not be synced: {e}")))
    }
}

/// What a write did.
#[derive(Debug)]
pub struct Applied {
    /// The credentials as the loader now reads them.
    pub store: CredentialStore,
    /// The load's warnings.
    pub warnings: Vec<String>,
    /// The file was edited in place (comments and layout kept), not re-rendered.
    pub comments_kept: bool,
    /// The version written.
    pub version: Version,
}

impl Store for FileStore {
    fn load(&self) -> Result<(CredentialsRaw, Version), String> {
        self.read(false).map(|v| (v.raw, v.version))
    }

    /// Under the directory lock: reads the file, refuses a stale `expected` version,
    /// applies the change, validates the result as the loader would, and writes it
    /// atomically.
    fn apply(&self, change: &Change, expected: Option<Version>, now: i64) -> Result<Applied, StoreError> {
        let lock = self.lock()?;
        let view = self.read(!matches!(change, Change::Create { .. }))?;
        if expected.is_some_and(|v| v != view.version) {
            return Err(StoreError::Stale(format!("{} changed since it was read (stale version); read it again", self.label())));
        }
        if !matches!(change, Change::Create { .. }) && change::locate(&view.raw, change.name()).is_none() {
            return Err(StoreError::NotFound(format!("no client or API key named {:?}", change.name())));
        }
        let (value, text) = change::apply(&view, change, now)?;
        let (new_text, comments_kept) = settle(&value, text)?;
        let (store, warnings) = self.commit(&lock, &view, &new_text, now)?;
        Ok(Applied { store, warnings, comments_kept, version: Version::of(Some(&new_text)) })
    }
}

/// The text to write for one change: `value` is the parsed document after the change,
/// `text` the edited text (`None` when it could not be edited in place). The edited text
/// is kept (comments and all) when it parses to exactly `value`; otherwise the document is
/// rendered from `value`. Returns the text and whether the comments were kept.
pub fn settle(value: &Value, text: Option<String>) -> Result<(String, bool), String> {
    if let Some(t) = text {
        if config::parse::<Value>(Path::new(""), &t).ok().as_ref() == Some(value) {
            return Ok((t, true));
        }
    }
    let t = serde_saphyr::to_string(value).map_err(|e| format!("cannot render the file: {e}"))?;
    Ok((t, false))
}

/// Replaces the sidecar's own state file at `path` (last-use times, the approval queue)
/// with `text`: a temp file beside it, fsynced, renamed over it, then the directory
/// fsynced. The mode of the file it replaces is kept (new: 0644 under the umask: it holds
/// names and times, which the operator's CLI reads). Unlike a credentials write there is
/// no lock or version: one writer, this process, under its own lock.
pub fn replace_file(path: &Path, text: &str) -> io::Result<()> {
    let dir = parent_dir(path);
    let mode = fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    // The rename is done; a directory that cannot be synced only risks this write.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "api_keys:\n  - name: k\n    key_hash: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n    expires: 2099-01-01\n";

    #[test]
    fn writes_the_version_read_and_refuses_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.yaml");
        let store = FileStore::resolve(path.clone(), Environment::Sandbox).unwrap();
        let absent = store.read(false).unwrap();
        assert!(absent.text.is_none());
        assert!(store.read(true).is_err(), "must_exist");
        let lock = store.lock().unwrap();
        store.commit(&lock, &absent, FILE, 0).expect("first write");
        drop(lock);
        let v1 = store.read(true).unwrap();
        assert_ne!(v1.version, absent.version);
        assert_eq!(v1.version, store.read(true).unwrap().version, "same bytes, same version");
        // Someone else writes after our read: our write is refused and theirs kept.
        let theirs = FILE.replace("2099-01-01", "2098-01-01");
        fs::write(&path, &theirs).unwrap();
        let lock = store.lock().unwrap();
        let e = store.commit(&lock, &v1, &FILE.replace("k\n", "k2\n"), 0).unwrap_err().to_string();
        assert!(e.contains("changed by someone else"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), theirs);
        // A file the loader would refuse is never written.
        let v2 = store.read(true).unwrap();
        let e = store.commit(&lock, &v2, "api_keys:\n  - name: k\n", 0).unwrap_err().to_string();
        assert!(e.contains("would refuse"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), theirs);
        assert!(v2.version.etag().starts_with('"'));
    }

    #[test]
    fn applies_typed_changes_and_refuses_a_stale_expected_version() {
        use super::super::change::NewEntry;
        use super::super::Kind;
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::resolve(dir.path().join("credentials.yaml"), Environment::Sandbox).unwrap();
        fs::write(&store.real, format!("# keep me\n{FILE}")).unwrap();
        let (_, v0) = store.load().unwrap();
        let hash = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let entry = NewEntry { name: "new".into(), hash: hash.into(), permissions: vec!["balances:read".into()], expires: "2099-01-01".into(), ..Default::default() };
        let a = store.apply(&Change::Create { kind: Kind::ApiKey, entry }, Some(v0), 0).unwrap();
        assert!(a.comments_kept);
        assert!(a.store.all.iter().any(|c| &*c.id == "new"));
        assert!(fs::read_to_string(&store.real).unwrap().starts_with("# keep me\n"));
        // v0 is stale now.
        let e = store.apply(&Change::Delete { name: "k".into() }, Some(v0), 0).unwrap_err().to_string();
        assert!(e.contains("stale"), "{e}");
        let a = store.apply(&Change::SetDisabled { name: "k".into(), disabled: true }, Some(a.version), 0).unwrap();
        assert!(a.store.all.iter().find(|c| &*c.id == "k").unwrap().disabled);
        let a = store.apply(&Change::Rotate { name: "k".into(), hash: hash.replace('1', "2"), overlap_until: Some(3600) }, None, 0).unwrap();
        assert_eq!(a.store.previous_key_hashes.len(), 1, "the old hash works until the overlap ends");
        store.apply(&Change::Delete { name: "k".into() }, Some(a.version), 0).unwrap();
        let (raw, _) = store.load().unwrap();
        assert_eq!(raw.api_keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["new"]);
        assert!(matches!(store.apply(&Change::Delete { name: "gone".into() }, None, 0), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn edits_the_editable_fields_in_place_and_refuses_a_bad_edit() {
        use super::super::change::EntryEdit;
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::resolve(dir.path().join("credentials.yaml"), Environment::Sandbox).unwrap();
        let file = FILE.replace("    expires", "    # who asked\n    roles:\n      - wallets\n    expires");
        fs::write(&store.real, &file).unwrap();
        let edit = EntryEdit {
            roles: Some(vec!["transactions".into()]),
            permissions: Some(vec!["balances:read@vault/v-1".into()]),
            allowed_ips: Some(Some(vec!["192.0.2.0/24".into()])),
            notes: Some(Some("ops: \"rotate\" yearly".into())),
            ..Default::default()
        };
        let a = store.apply(&Change::Edit { name: "k".into(), edit }, None, 0).unwrap();
        assert!(a.comments_kept);
        let k = a.store.all.iter().find(|c| &*c.id == "k").unwrap();
        assert_eq!(&*k.roles, [std::sync::Arc::<str>::from("transactions")]);
        assert!(k.grants.iter().any(|g| g.as_str() == "balances:read@vault/v-1"));
        assert_eq!(k.allowed_ips.as_ref().map(|l| l.len()), Some(1));
        assert_eq!(k.notes.as_deref(), Some("ops: \"rotate\" yearly"));
        let text = fs::read_to_string(&store.real).unwrap();
        assert!(text.contains("# who asked\n") && !text.contains("wallets"), "{text}");
        // Back to every address, no notes; the other fields stay.
        let edit = EntryEdit { allowed_ips: Some(None), notes: Some(None), ..Default::default() };
        let a = store.apply(&Change::Edit { name: "k".into(), edit }, Some(a.version), 0).unwrap();
        let k = a.store.all.iter().find(|c| &*c.id == "k").unwrap();
        assert!(k.allowed_ips.is_none() && k.notes.is_none() && &*k.roles == [std::sync::Arc::<str>::from("transactions")]);
        // An edit the loader refuses is not written.
        let before = fs::read_to_string(&store.real).unwrap();
        let edit = EntryEdit { roles: Some(vec!["no-such-role".into()]), ..Default::default() };
        let e = store.apply(&Change::Edit { name: "k".into(), edit }, None, 0).unwrap_err().to_string();
        assert!(e.contains("unknown role"), "{e}");
        assert_eq!(fs::read_to_string(&store.real).unwrap(), before);
    }
}

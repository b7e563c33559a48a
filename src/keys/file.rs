//! Finding, reading and editing the keys file. An edit holds a lock file beside it, so
//! two `switchyard keys add` at once both land, and replaces the file atomically (a
//! temporary file in the same folder, synced, then renamed), so the gateway's reload
//! never sees half a file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{parse, render, KeyEntries, KeysError};

/// The keys file a configuration names: `auth.keys_file`, or its environment override
/// `SWITCHYARD__AUTH__KEYS_FILE`. Read without checking the rest of the configuration,
/// so that managing keys does not need, say, every upstream's key in the environment.
pub fn configured_path(config: Option<&Path>) -> Result<PathBuf, KeysError> {
    if let Some(path) = std::env::var_os("SWITCHYARD__AUTH__KEYS_FILE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let Some(config) = config else {
        return Err(KeysError(
            "no configuration file (and so no auth.keys_file): write one with [auth] keys_file = \"config/keys.json\", or name it with --config".to_owned(),
        ));
    };
    let settings = config::Config::builder()
        .add_source(config::File::from(config).format(config::FileFormat::Toml))
        .build()
        .map_err(|e| KeysError(format!("{}: {e}", config.display())))?;
    match settings.get_string("auth.keys_file") {
        Ok(path) => Ok(PathBuf::from(path)),
        Err(_) => Err(KeysError(format!(
            "{} has no auth.keys_file: add [auth] keys_file = \"config/keys.json\" to it",
            config.display()
        ))),
    }
}

/// Reads the file; a missing file is an empty one, so the first `keys add` creates it.
pub fn load(path: &Path) -> Result<KeyEntries, KeysError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            parse(&text).map_err(|e| KeysError(format!("keys file {}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyEntries::new()),
        Err(e) => Err(KeysError(format!("keys file {}: {e}", path.display()))),
    }
}

/// Reads the file, lets `change` edit its entries, and writes them back, all under the
/// file's lock. `change` may refuse, and then nothing is written.
pub fn edit<T>(
    path: &Path,
    change: impl FnOnce(&mut KeyEntries) -> Result<T, KeysError>,
) -> Result<T, KeysError> {
    let io = |what: &str, e: std::io::Error| KeysError(format!("{what} {}: {e}", path.display()));
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&folder).map_err(|e| io("cannot create the folder of", e))?;
    let lock_path = sibling(path, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io("cannot open the lock of", e))?;
    // Held until `lock` is dropped at the end of this function.
    lock.lock().map_err(|e| io("cannot lock", e))?;
    let mut entries = load(path)?;
    let outcome = change(&mut entries)?;
    let text = render(&entries);
    let temporary = sibling(path, &format!(".tmp-{}", std::process::id()));
    // The replacement keeps the file's owner, group and mode: a keys file made readable
    // to the service's group must stay so when an administrator edits it with sudo.
    let existing = std::fs::metadata(path).ok();
    let written = (|| {
        let mut file = File::create(&temporary)?;
        match &existing {
            Some(metadata) => keep_ownership(&file, metadata)?,
            None => restrict(&file)?,
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        // The rename itself is durable once the folder is synced.
        File::open(&folder)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io("cannot write", e));
    }
    Ok(outcome)
}

/// `keys.json` → `keys.json.lock`, in the same folder.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Keys are secrets: a file the tool creates is readable by its owner and group only.
#[cfg(unix)]
fn restrict(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o640))
}

#[cfg(not(unix))]
fn restrict(_: &File) -> std::io::Result<()> {
    Ok(())
}

/// Gives the new file the old one's mode, owner and group.
#[cfg(unix)]
fn keep_ownership(file: &File, old: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
    match std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid())) {
        Ok(()) => Ok(()),
        // Only root may give a file away; anyone else editing their own file keeps it.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn keep_ownership(_: &File, _: &std::fs::Metadata) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyEntry;

    #[test]
    fn concurrent_edits_all_land() {
        let dir = std::env::temp_dir().join(format!("switchyard-keyedit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("keys.json");
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let path = path.clone();
                std::thread::spawn(move || {
                    edit(&path, |entries| {
                        entries.insert(
                            format!("sk-thread-key-{n:04}"),
                            KeyEntry {
                                user: format!("user{n}"),
                                ..KeyEntry::default()
                            },
                        );
                        Ok(())
                    })
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(load(&path).unwrap().len(), 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn an_edit_keeps_the_files_mode_and_group() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("switchyard-keymode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        let before = std::fs::metadata(&path).unwrap();
        edit(&path, |entries| {
            entries.insert(
                "sk-mode-0123456789".into(),
                KeyEntry {
                    user: "m".into(),
                    ..KeyEntry::default()
                },
            );
            Ok(())
        })
        .unwrap();
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(after.mode() & 0o777, 0o604);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! File-system side of the installer: finding the runtime's config, replacing files atomically.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The extensions libcni loads from the conf dir, in the order it treats them.
const CONF_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Every CNI config file in `dir`, sorted by name: the runtime uses the first one. A missing
/// dir has none (the primary CNI may not have created it yet).
pub fn conf_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        other => other?,
    };
    for dirent in entries {
        let path = dirent?.path();
        let ext_ok = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONF_EXTENSIONS.contains(&e));
        // metadata() follows symlinks: a link to a config file counts, a dangling one does not.
        if ext_ok && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Replaces `path` with `contents` so readers see the old or the new file, never a partial one:
/// a temp file in the same directory (same file system) is synced and renamed over it.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // The leading dot and .tmp suffix keep a leftover temp file out of conf_files().
    let mut tmp = tempfile::Builder::new()
        .prefix(".meshtunnel-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The permission bits of `path`, or `default` if it cannot be read.
pub fn mode_of(path: &Path, default: u32) -> u32 {
    fs::metadata(path).map_or(default, |m| m.permissions().mode() & 0o7777)
}

/// Copies the plugin binary into place unless an identical one is there. Renaming over the old
/// file (rather than writing into it) is what lets this succeed while a runtime is executing it.
pub fn install_binary(src: &Path, dst: &Path) -> io::Result<bool> {
    let new = fs::read(src)?;
    if let Ok(mut old) = fs::File::open(dst) {
        let mut existing = Vec::with_capacity(new.len());
        if old.read_to_end(&mut existing).is_ok() && existing == new {
            return Ok(false);
        }
    }
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir)?;
    }
    write_atomic(dst, &new, 0o755)?;
    Ok(true)
}

/// Cheap staleness check for the watcher: re-copying a multi-megabyte binary needs a reason.
pub fn binary_looks_current(src: &Path, dst: &Path) -> bool {
    match (fs::metadata(src), fs::metadata(dst)) {
        (Ok(s), Ok(d)) => s.len() == d.len(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_files_sorted_with_known_extensions_only() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "20-b.conflist",
            "10-a.conf",
            "05-x.json",
            "00-readme.txt",
            ".meshtunnel-1.tmp",
        ] {
            fs::write(d.path().join(f), "{}").unwrap();
        }
        fs::create_dir(d.path().join("01-dir.conf")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", d.path().join("02-dangling.conf")).unwrap();
        let names: Vec<_> = conf_files(d.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["05-x.json", "10-a.conf", "20-b.conflist"]);
    }

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.conflist");
        fs::write(&p, "old").unwrap();
        write_atomic(&p, b"new", 0o640).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(mode_of(&p, 0), 0o640);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn binary_copied_once() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src-bin");
        fs::write(&src, b"\x7fELF...").unwrap();
        let dst = d.path().join("bin/meshtunnel-cni");
        assert!(install_binary(&src, &dst).unwrap());
        assert!(!install_binary(&src, &dst).unwrap());
        assert_eq!(mode_of(&dst, 0), 0o755);
        assert!(binary_looks_current(&src, &dst));
        fs::write(&src, b"\x7fELF v2").unwrap();
        assert!(install_binary(&src, &dst).unwrap());
        assert_eq!(fs::read(&dst).unwrap(), b"\x7fELF v2");
    }
}

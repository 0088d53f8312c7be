//! File-system helpers: atomic output files and safe names.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file written under a temporary name beside its destination and renamed
/// into place by [`AtomicFile::commit`]. Dropped without commit, the
/// temporary is removed, so an interrupted writer leaves no partial output.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates the temporary file for `dest` (its parent folder must exist).
    pub fn create(dest: &Path) -> Result<AtomicFile> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(Error::io(
                "creating",
                dest,
                std::io::Error::new(std::io::ErrorKind::NotFound, "parent folder does not exist"),
            ));
        }
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
        let f = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        Ok(AtomicFile { tmp, dest: dest.to_path_buf(), writer: Some(BufWriter::new(f)) })
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes, syncs and renames the temporary onto the destination.
    pub fn commit(mut self) -> Result<()> {
        let w = self.writer.take().expect("not committed twice");
        let f = w.into_inner().map_err(|e| Error::io("writing", &self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io("syncing", &self.tmp, e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io("renaming into place", &self.dest, e))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().expect("open").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("open").flush()
    }
}

impl std::io::Seek for AtomicFile {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.writer.as_mut().expect("open").seek(pos)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dest` atomically.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes).map_err(|e| Error::io("writing", dest, e))?;
    f.commit()
}

/// A class name made safe as one path component: `/`, `\`, control
/// characters and `:` become `_`; `.` and `..` and the empty name get a prefix.
pub fn safe_component(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c == '/' || c == '\\' || c == ':' || c.is_control() { '_' } else { c }).collect();
    if s.is_empty() || s == "." || s == ".." {
        format!("_{s}")
    } else {
        s
    }
}

/// True when a zip member name is a safe relative path: not absolute, no
/// drive prefix, no backslash, no `..` or empty component.
pub fn is_safe_member(name: &str) -> bool {
    if name.is_empty() || name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return false;
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' {
        return false;
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    trimmed.split('/').all(|c| !c.is_empty() && c != ".." && c != ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_safety() {
        for ok in ["train/a/x.png", "manifest.json", "train/a/"] {
            assert!(is_safe_member(ok), "{ok}");
        }
        for bad in ["../x", "a/../../x", "/etc/passwd", "C:/x", "a\\..\\x", "a//b", "", "./a"] {
            assert!(!is_safe_member(bad), "{bad}");
        }
    }

    #[test]
    fn atomic_file_leaves_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.zip");
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&dest, b"done").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"done");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn safe_component_strips_separators() {
        assert_eq!(safe_component("T-shirt/top"), "T-shirt_top");
        assert_eq!(safe_component(".."), "_..");
    }
}

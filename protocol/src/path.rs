//! Path rules shared by both ends: absolute, `/`-separated, no `.`/`..`/empty components, no NUL, bounded lengths.
//! The server enforces them on every request; the client checks early to give a clear error, and checks every name
//! a server lists with [`check_name`].

use crate::{MAX_NAME, MAX_PATH};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("name longer than {MAX_NAME} bytes")]
    NameTooLong,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path contains an empty, '.' or '..' component")]
    BadComponent,
    #[error("a name contains '/'")]
    Slash,
}

/// Splits a path into its names, validating it. `/` gives no names (the root).
pub fn components(path: &str) -> Result<Vec<&str>, PathError> {
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/').map(|name| check_name(name).map(|()| name)).collect()
}

/// Checks one name (a path component): not empty, `.` or `..`, no `/`, no NUL, at most [`MAX_NAME`] bytes.
pub fn check_name(name: &str) -> Result<(), PathError> {
    if name.is_empty() || name == "." || name == ".." {
        Err(PathError::BadComponent)
    } else if name.len() > MAX_NAME {
        Err(PathError::NameTooLong)
    } else if name.contains('\0') {
        Err(PathError::Nul)
    } else if name.contains('/') {
        Err(PathError::Slash)
    } else {
        Ok(())
    }
}

/// Joins a directory path and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_paths() {
        assert_eq!(components("/").unwrap(), Vec::<&str>::new());
        assert_eq!(components("/a").unwrap(), vec!["a"]);
        assert_eq!(components("/a/b c/d.txt").unwrap(), vec!["a", "b c", "d.txt"]);
        assert_eq!(components("/a/b/").unwrap(), vec!["a", "b"]);
        assert_eq!(components("/...").unwrap(), vec!["..."]);
    }

    #[test]
    fn hostile_paths() {
        let long_name = format!("/{}", "x".repeat(MAX_NAME + 1));
        let long_path = "/abc".repeat(MAX_PATH / 4 + 1);
        let cases: Vec<(&str, PathError)> = vec![
            ("", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("/..", PathError::BadComponent),
            ("/a/../../etc/passwd", PathError::BadComponent),
            ("/a/./b", PathError::BadComponent),
            ("//a", PathError::BadComponent),
            ("/a//b", PathError::BadComponent),
            ("/a\0b", PathError::Nul),
            (&long_name, PathError::NameTooLong),
            (&long_path, PathError::TooLong),
        ];
        for (path, want) in cases {
            assert_eq!(components(path).unwrap_err(), want, "{path:?}");
        }
    }

    #[test]
    fn names() {
        for name in ["a", "...", ".a", "a b", "\u{e9}", &"x".repeat(MAX_NAME)] {
            assert_eq!(check_name(name), Ok(()), "{name:?}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        let cases: Vec<(&str, PathError)> = vec![
            ("", PathError::BadComponent),
            (".", PathError::BadComponent),
            ("..", PathError::BadComponent),
            ("a/b", PathError::Slash),
            ("/", PathError::Slash),
            ("a\0", PathError::Nul),
            (&long, PathError::NameTooLong),
        ];
        for (name, want) in cases {
            assert_eq!(check_name(name), Err(want), "{name:?}");
        }
    }
}

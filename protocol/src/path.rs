//! Path rules shared by both ends: absolute, `/`-separated, no `.`/`..`/empty components, no NUL, bounded lengths
//! (`MAX_PATH` bytes, `MAX_DEPTH` names of `MAX_NAME` bytes each).
//! The server enforces them on every request; the client checks early to give a clear error, and checks every name
//! a server lists with [`check_name`].

use crate::{MAX_DEPTH, MAX_NAME, MAX_PATH};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("name longer than {MAX_NAME} bytes")]
    NameTooLong,
    #[error("path of more than {MAX_DEPTH} names")]
    TooDeep,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path contains an empty, '.' or '..' component")]
    BadComponent,
    #[error("a name contains '/'")]
    Slash,
}

/// Splits a path into its names, validating it. `/` gives no names (the root). At most [`MAX_DEPTH`] names: so no
/// path makes the server walk further than that, and none names anything deeper than a directory may lie.
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
    let mut names = Vec::new();
    for name in rest.split('/') {
        if names.len() == MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        check_name(name)?;
        names.push(name);
    }
    Ok(names)
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
        // Short enough in bytes, too many names; the count is checked before the names past it are looked at.
        let too_deep = "/x".repeat(MAX_DEPTH + 1);
        let too_deep_and_bad = format!("{too_deep}/../{}", "x".repeat(MAX_NAME + 1));
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
            (&too_deep, PathError::TooDeep),
            (&too_deep_and_bad, PathError::TooDeep),
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

    /// A path of `len` bytes made of names of `MAX_NAME` bytes (the last one shorter; `len % 256` must not be 1).
    fn path_of_len(len: usize) -> String {
        let mut path = String::new();
        while path.len() < len {
            let name = (len - path.len() - 1).min(MAX_NAME);
            assert!(name > 0, "no path of {len} bytes ends in a whole name here");
            path.push('/');
            path.push_str(&"n".repeat(name));
        }
        path
    }

    #[test]
    fn paths_up_to_the_limits_pass() {
        // Far past a local PATH_MAX: a 4095-byte relative path below a directory 28 KiB deep in the mount.
        const { assert!(MAX_PATH >= 4096 + 28 * 1024) };
        for len in [4095, 4096, 4098, 6000, MAX_PATH - 1, MAX_PATH] {
            let path = path_of_len(len);
            let names = components(&path).unwrap_or_else(|e| panic!("{len} bytes: {e}"));
            assert_eq!(names.len(), len.div_ceil(MAX_NAME + 1), "{len} bytes");
            assert!(names.iter().all(|n| n.len() <= MAX_NAME));
        }
        assert_eq!(components(&path_of_len(MAX_PATH + 2)).unwrap_err(), PathError::TooLong);
        assert_eq!(components(&format!("{}/", path_of_len(MAX_PATH))).unwrap_err(), PathError::TooLong);
        // Exactly MAX_DEPTH names of any length is a valid path (4096 bytes of one-byte names, or longer ones).
        for name in ["x", "name"] {
            let deepest = format!("/{name}").repeat(MAX_DEPTH);
            assert_eq!(components(&deepest).unwrap().len(), MAX_DEPTH);
            assert_eq!(components(&format!("{deepest}/")).unwrap().len(), MAX_DEPTH, "a trailing slash adds no name");
            assert_eq!(components(&format!("{deepest}/{name}")).unwrap_err(), PathError::TooDeep);
        }
    }
}

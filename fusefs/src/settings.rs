//! Everything a mount is told, from three places, strongest first: the command line (flags and `-o` options, in
//! the form mount(8) and fstab use), a TOML config file, then the defaults. Also the mount-helper calling
//! convention (`mount.fuse.netdisk SOURCE MOUNTPOINT -o OPTIONS`), and the password (never on the command line).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

pub const DEFAULT_CACHE_SIZE_MIB: u64 = 1024;
pub const DEFAULT_TIMEOUT: u64 = 30;
pub const DEFAULT_ATTR_TIMEOUT: f64 = 1.0;
pub const DEFAULT_CONNECTIONS: usize = 8;

/// The config file: the same settings as the command line, by the flags' names with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub server: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub cache_size_mib: Option<u64>,
    pub timeout: Option<u64>,
    pub attr_timeout: Option<f64>,
    pub connections: Option<usize>,
    pub log_file: Option<PathBuf>,
}

/// What the command line said (flags and `-o` options merged; `None`: not given).
#[derive(Debug, Default)]
pub struct Given {
    pub server: Option<String>,
    pub user: Option<String>,
    pub local: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub config: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub cache_size_mib: Option<u64>,
    pub timeout: Option<u64>,
    pub attr_timeout: Option<f64>,
    pub connections: Option<usize>,
    pub log_file: Option<PathBuf>,
    pub daemon: bool,
    pub read_only: bool,
    pub allow_other: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `-o suid` / `-o dev`: honour setuid/setgid bits and device files from the store (root mounts only).
    pub suid: bool,
    pub dev: bool,
    /// `-o noexec`: programs on the mount cannot be run.
    pub noexec: bool,
}

/// The resolved settings of one mount.
#[derive(Debug)]
pub struct Settings {
    /// `Some`: run a local server on this data directory; else `server` and `user` are set.
    pub local: Option<PathBuf>,
    pub server: String,
    pub user: String,
    pub mountpoint: PathBuf,
    pub password_file: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub cache_size_mib: u64,
    pub timeout: u64,
    pub attr_timeout: f64,
    pub connections: usize,
    pub log_file: Option<PathBuf>,
    pub daemon: bool,
    pub read_only: bool,
    pub allow_other: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Honour setuid/setgid bits of files from the store (`-o suid`; off by default: `nosuid`).
    pub suid: bool,
    /// Honour device files from the store (`-o dev`; off by default: `nodev`).
    pub dev: bool,
    /// Refuse to run programs from the mount (`-o noexec`).
    pub noexec: bool,
}

impl Given {
    /// Applies `-o` options (comma-separated, as in fstab). Options mount(8) and systemd handle, or that
    /// netdisk always applies, are accepted and ignored.
    pub fn apply_options(&mut self, list: &str) -> anyhow::Result<()> {
        for option in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (option, None),
            };
            let need = || value.with_context(|| format!("mount option {key} needs a value ({key}=...)"));
            let number = |what: &str| -> anyhow::Result<u64> {
                need()?.parse().with_context(|| format!("mount option {what} must be a number"))
            };
            match key {
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "allow_other" => self.allow_other = true,
                // Whoever can write to the store (the owner from another machine, a stolen password, a fake server)
                // chooses the modes and device numbers it serves: honouring them is an explicit choice.
                "suid" => self.suid = true,
                "nosuid" => self.suid = false,
                "dev" => self.dev = true,
                "nodev" => self.dev = false,
                "exec" => self.noexec = false,
                "noexec" => self.noexec = true,
                "uid" => self.uid = Some(number("uid")? as u32),
                "gid" => self.gid = Some(number("gid")? as u32),
                "config" => self.config = Some(need()?.into()),
                "password_file" => self.password_file = Some(need()?.into()),
                "cache_dir" => self.cache_dir = Some(need()?.into()),
                "log_file" => self.log_file = Some(need()?.into()),
                "cache_size_mib" => self.cache_size_mib = Some(number("cache_size_mib")?),
                "timeout" => self.timeout = Some(number("timeout")?),
                "connections" => self.connections = Some(number("connections")? as usize),
                "attr_timeout" => {
                    self.attr_timeout = Some(need()?.parse().context("mount option attr_timeout must be a number")?)
                }
                // Always on, or for mount(8), systemd and fstab only.
                "default_permissions"
                | "_netdev"
                | "auto"
                | "noauto"
                | "nofail"
                | "user"
                | "users"
                | "nouser"
                | "owner"
                | "defaults"
                | "atime"
                | "noatime"
                | "relatime"
                | "strictatime"
                | "async"
                | "sync" => {}
                k if k.starts_with("x-") || k.starts_with("comment") => {}
                _ => bail!("unknown mount option {option:?}"),
            }
        }
        Ok(())
    }

    /// The mount-helper convention of mount(8): `SOURCE MOUNTPOINT [-o OPTIONS] [-n] [-s] [-f] [-v] [-t TYPE]`,
    /// where SOURCE is `USER@HOST:PORT` or `local:DIR`. A helper always returns once the mount is live.
    pub fn from_helper_args(args: &[String]) -> anyhow::Result<Given> {
        let mut given = Given { daemon: true, ..Given::default() };
        let mut positional = Vec::new();
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "-o" => {
                    i += 1;
                    let list = args.get(i).context("-o needs options")?;
                    given.apply_options(list)?;
                }
                "-t" => i += 1,
                "-n" | "-s" | "-f" | "-v" | "-r" | "-w" => {}
                o if o.starts_with("-o") => given.apply_options(&o[2..])?,
                other if other.starts_with('-') => bail!("unknown option {other}"),
                other => positional.push(other.to_string()),
            }
            i += 1;
        }
        let [source, mountpoint] = positional.as_slice() else {
            bail!("usage: mount.fuse.netdisk USER@HOST:PORT|local:DIR MOUNTPOINT [-o OPTIONS]");
        };
        given.mountpoint = mountpoint.into();
        match source.strip_prefix("local:") {
            Some(dir) => given.local = Some(dir.into()),
            None => {
                let (user, server) =
                    source.split_once('@').with_context(|| format!("source {source:?} is not USER@HOST:PORT"))?;
                given.user = Some(user.to_string());
                given.server = Some(server.to_string());
            }
        }
        Ok(given)
    }

    /// Merges the config file (the one named, else `$XDG_CONFIG_HOME/netdisk/mount.toml` if it exists) under
    /// what was given, then the defaults.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let file = match self.config.clone().or_else(default_config).filter(|p| self.config.is_some() || p.exists()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
            None => FileSettings::default(),
        };
        let local = self.local;
        let server = self.server.or(file.server);
        let user = self.user.or(file.user);
        let (server, user) = match (&local, server, user) {
            (Some(_), _, _) => (String::new(), String::new()),
            (None, Some(s), Some(u)) => (s, u),
            (None, None, _) => {
                bail!("no server: give --server HOST:PORT (or server = in the config file), or --local DIR")
            }
            (None, _, None) => bail!("no user: give --user NAME (or user = in the config file)"),
        };
        Ok(Settings {
            local,
            server,
            user,
            mountpoint: self.mountpoint,
            password_file: self.password_file.or(file.password_file),
            cache_dir: self.cache_dir.or(file.cache_dir),
            cache_size_mib: self.cache_size_mib.or(file.cache_size_mib).unwrap_or(DEFAULT_CACHE_SIZE_MIB),
            timeout: self.timeout.or(file.timeout).unwrap_or(DEFAULT_TIMEOUT),
            attr_timeout: self.attr_timeout.or(file.attr_timeout).unwrap_or(DEFAULT_ATTR_TIMEOUT),
            connections: self.connections.or(file.connections).unwrap_or(DEFAULT_CONNECTIONS),
            log_file: self.log_file.or(file.log_file),
            daemon: self.daemon,
            read_only: self.read_only,
            allow_other: self.allow_other,
            uid: self.uid,
            gid: self.gid,
            suid: self.suid,
            dev: self.dev,
            noexec: self.noexec,
        })
    }
}

fn default_config() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("netdisk").join("mount.toml"))
}

impl Settings {
    /// The password: `NETDISK_PASSWORD`, else the first line of the password file, which nobody but its owner
    /// may read.
    pub fn password(&self) -> anyhow::Result<String> {
        if let Ok(p) = std::env::var("NETDISK_PASSWORD") {
            return Ok(p);
        }
        let Some(path) = &self.password_file else {
            bail!("no password: set NETDISK_PASSWORD, or give --password-file (password_file = in the config file)");
        };
        read_password_file(path)
    }
}

fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read the password file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("the password file {} is readable by others: chmod 600 {0}", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let password = text.lines().next().unwrap_or_default().to_string();
    if password.is_empty() {
        bail!("the password file {} is empty", path.display());
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn helper_arguments_and_options() {
        let g = Given::from_helper_args(&args(&[
            "alice@192.0.2.1:7420",
            "/mnt/n",
            "-o",
            "rw,allow_other,uid=1000,gid=100,_netdev,x-systemd.automount,timeout=5,attr_timeout=0.5",
            "-n",
        ]))
        .unwrap();
        assert_eq!((g.user.as_deref(), g.server.as_deref()), (Some("alice"), Some("192.0.2.1:7420")));
        assert_eq!(g.mountpoint, PathBuf::from("/mnt/n"));
        assert!(g.daemon && g.allow_other && !g.read_only);
        assert_eq!((g.uid, g.gid, g.timeout, g.attr_timeout), (Some(1000), Some(100), Some(5), Some(0.5)));
        let local = Given::from_helper_args(&args(&["local:/srv/d", "/mnt/l", "-oro"])).unwrap();
        assert_eq!(local.local, Some(PathBuf::from("/srv/d")));
        assert!(local.read_only);
        assert!(!g.suid && !g.dev, "setuid bits and devices from the store are off unless asked for");
        let opted = Given::from_helper_args(&args(&["a@b:1", "/m", "-o", "suid,dev,nodev"])).unwrap();
        assert!(opted.suid && !opted.dev, "the last of dev/nodev wins");
        assert!(Given::from_helper_args(&args(&["x@y:1", "/m", "-o", "bogus"])).is_err());
        assert!(Given::from_helper_args(&args(&["no-at-sign", "/m"])).is_err());
        assert!(Given::from_helper_args(&args(&["a@b:1"])).is_err());
    }

    #[test]
    fn the_command_line_wins_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mount.toml");
        std::fs::write(&config, "server = \"10.0.0.1:7420\"\nuser = \"bob\"\ntimeout = 9\nconnections = 3\n").unwrap();
        let given = Given {
            config: Some(config.clone()),
            server: Some("127.0.0.1:1".into()),
            connections: Some(5),
            ..Given::default()
        };
        let s = given.resolve().unwrap();
        assert_eq!((s.server.as_str(), s.user.as_str()), ("127.0.0.1:1", "bob"));
        assert_eq!((s.timeout, s.connections, s.cache_size_mib), (9, 5, DEFAULT_CACHE_SIZE_MIB));
        std::fs::write(&config, "sever = \"typo\"\n").unwrap();
        let err = Given { config: Some(config), ..Given::default() }.resolve().unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn password_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(format!("{:#}", read_password_file(&file).unwrap_err()).contains("chmod 600"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&file).unwrap(), "s3cret");
    }
}

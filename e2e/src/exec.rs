//! The container side of a pod process: `dduomq-test-kubelet exec-container SPEC`.
//!
//! The kubelet spawns its own binary with this subcommand; before `execve` of
//! the container's command it
//!
//! 1. joins the pod's network namespace (`setns`), so the process sees only the
//!    pod's `eth0` and `lo`;
//! 2. enters a new mount namespace (`unshare(CLONE_NEWNS)`, everything a slave
//!    of the host's, so nothing leaks back to the host);
//! 3. builds a root file system in a tmpfs:
//!
//! ```text
//!   /            tmpfs (the pod container's own)
//!   /bin /lib…   the host's symlinks (usr-merged systems)
//!   /usr         overlay: host /usr + a per-container upper dir;
//!                /usr/local/bin/<name> bind-mounts the image's binaries
//!   /etc         overlay: host /etc + upper dir; /etc/hosts, /etc/resolv.conf
//!                and /etc/hostname bind-mount the pod's files
//!   /dev /proc   the host's (recursive bind); /sys read-only
//!   /tmp /run    fresh tmpfs
//!   <mounts>     the pod's volumes at their mountPaths
//! ```
//! 4. `chroot`s into it, changes to the working directory and execs the command
//!    with exactly the container's environment (PATH from that environment).
//!
//! Everything here runs in a fresh single-threaded process, before any runtime.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// What the kubelet hands to `exec-container` (as a JSON file).
#[derive(Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// `/run/netns/<name>` of the pod's network namespace.
    pub netns: PathBuf,
    /// Scratch dir of this container on the host (rootfs mount point, overlay
    /// upper and work dirs).
    pub dir: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    /// Host files bind-mounted at `/usr/local/bin/<name>`.
    pub binaries: Vec<(String, PathBuf)>,
    /// The pod's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
    pub etc_files: Vec<(String, PathBuf)>,
    pub mounts: Vec<Mount>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Sets the process up as `spec` says and execs; returns only on error.
pub fn exec_container(spec_path: &Path) -> Result<()> {
    let spec: ContainerSpec = serde_json::from_slice(
        &fs::read(spec_path).with_context(|| format!("read {}", spec_path.display()))?,
    )?;
    let ns = fs::File::open(&spec.netns)
        .with_context(|| format!("open network namespace {}", spec.netns.display()))?;
    // SAFETY: setns/unshare on a valid fd, in a single-threaded process.
    unsafe {
        use std::os::fd::AsRawFd;
        check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET), "setns")?;
        check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?;
    }
    drop(ns);
    // Slave, not private: nothing mounted here leaks to the host, but unmounts
    // on the host still reach this copy — above all `ip netns del` of other
    // pods' namespaces, which would otherwise stay alive (with their
    // addresses answering) as long as this container runs.
    mount(None, "/", None, libc::MS_REC | libc::MS_SLAVE, None)?;

    let root = spec.dir.join("rootfs");
    fs::create_dir_all(&root)?;
    mount(Some("tmpfs"), &root, Some("tmpfs"), 0, Some("mode=755"))?;
    for entry in ["bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
        if let Ok(target) = fs::read_link(Path::new("/").join(entry)) {
            std::os::unix::fs::symlink(target, root.join(entry))?;
        }
    }
    for dir in ["usr", "etc"] {
        let upper = spec.dir.join(format!("{dir}-upper"));
        let work = spec.dir.join(format!("{dir}-work"));
        fs::create_dir_all(&upper)?;
        fs::create_dir_all(&work)?;
        fs::create_dir_all(root.join(dir))?;
        let opts = format!(
            "lowerdir=/{dir},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            root.join(dir),
            Some("overlay"),
            0,
            Some(&opts),
        )?;
    }
    for dir in ["dev", "proc", "sys"] {
        fs::create_dir_all(root.join(dir))?;
        bind(Path::new(&format!("/{dir}")), &root.join(dir), dir == "sys")?;
    }
    for dir in ["tmp", "run"] {
        fs::create_dir_all(root.join(dir))?;
        mount(
            Some("tmpfs"),
            root.join(dir),
            Some("tmpfs"),
            0,
            Some("mode=1777"),
        )?;
    }
    fs::create_dir_all(root.join("var"))?;
    for (name, source) in &spec.binaries {
        let target = root.join("usr/local/bin").join(name);
        fs::create_dir_all(target.parent().unwrap())?;
        fs::write(&target, b"")?;
        bind(source, &target, true)?;
    }
    for (name, source) in &spec.etc_files {
        let target = root.join("etc").join(name);
        if !target.exists() {
            fs::write(&target, b"")?;
        }
        bind(source, &target, true)?;
    }
    for m in &spec.mounts {
        let target = root.join(m.target.trim_start_matches('/'));
        if m.source.is_dir() {
            fs::create_dir_all(&target)
                .with_context(|| format!("mount point {}", target.display()))?;
        } else {
            fs::create_dir_all(target.parent().unwrap())?;
            if !target.exists() {
                fs::write(&target, b"")?;
            }
        }
        bind(&m.source, &target, m.read_only).with_context(|| format!("volume at {}", m.target))?;
    }

    let root_c = cstr(&root)?;
    // SAFETY: plain syscalls with valid C strings.
    unsafe {
        check(libc::chroot(root_c.as_ptr()), "chroot")?;
    }
    let wd = if spec.working_dir.is_empty() {
        "/"
    } else {
        &spec.working_dir
    };
    fs::create_dir_all(wd).ok();
    std::env::set_current_dir(wd).with_context(|| format!("chdir {wd}"))?;

    let Some((program, args)) = spec.argv.split_first() else {
        bail!("the container has no command and its image no entrypoint");
    };
    let err = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .exec();
    bail!("exec {program}: {err}")
}

fn cstr(p: &Path) -> Result<CString> {
    Ok(CString::new(p.as_os_str().as_bytes())?)
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        bail!("{what}: {}", std::io::Error::last_os_error())
    }
}

fn mount(
    source: Option<&str>,
    target: impl AsRef<Path>,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let target = target.as_ref();
    let source = source.map(CString::new).transpose()?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    let t = cstr(target)?;
    // SAFETY: every pointer is a valid C string or null.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            t.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    check(rc, &format!("mount {}", target.display()))
}

/// Recursive bind mount, then (if asked) a read-only remount of its top.
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    let s = source.to_str().context("non-UTF-8 path")?;
    mount(Some(s), target, None, libc::MS_BIND | libc::MS_REC, None)?;
    if read_only {
        mount(
            None,
            target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
            None,
        )?;
    }
    Ok(())
}

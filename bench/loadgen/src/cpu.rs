//! CPU time used by processes, read from `/proc/<pid>/stat` (user + system
//! time of all their threads). When several servers share the machine's cores,
//! CPU-seconds per message is the figure that does not depend on how the
//! scheduler placed them, so every run records it for the servers it was
//! given and for the load generator itself.

use std::sync::OnceLock;

use anyhow::{Context, Result};

/// Kernel clock ticks per second, the unit of `utime` and `stime`.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 { ticks as f64 } else { 100.0 }
    })
}

/// User + system CPU-seconds used so far by process `pid`.
fn process_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count
    // fields after its closing parenthesis, which is followed by field 3.
    let after_name = stat
        .rsplit_once(')')
        .with_context(|| format!("no command name in {path}"))?
        .1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> Result<u64> {
        fields
            .get(number - 3)
            .with_context(|| format!("{path} has no field {number}"))?
            .parse()
            .with_context(|| format!("field {number} of {path}"))
    };
    let (utime, stime) = (field(14)?, field(15)?);
    Ok((utime + stime) as f64 / ticks_per_second())
}

/// The processes whose CPU time a run reports.
#[derive(Debug, Clone)]
pub struct Processes {
    pub servers: Vec<u32>,
}

/// CPU-seconds used so far, servers summed, and the load generator's own.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    pub servers: f64,
    pub load_generator: f64,
}

impl Processes {
    pub fn read(&self) -> Result<CpuReading> {
        let mut servers = 0.0;
        for pid in &self.servers {
            servers += process_seconds(*pid)?;
        }
        Ok(CpuReading {
            servers,
            load_generator: process_seconds(std::process::id())?,
        })
    }
}

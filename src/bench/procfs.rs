//! What the bench reads about a process (the broker under test, or itself) from Linux's /proc,
//! and the file-descriptor limit it raises to hold many connections.

use std::io;

/// CPU time and resident memory of a process at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat). The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted from the
/// last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace();
    // after_name starts at field 3 (state); utime is field 14, i.e. the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The `VmRSS:` line of /proc/PID/status, in bytes.
pub fn parse_status_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let unit = parts.next().unwrap_or("kB");
    let scale = match unit {
        "kB" => 1024,
        "mB" | "MB" => 1024 * 1024,
        "B" => 1,
        _ => return None,
    };
    Some(value * scale)
}

/// Reads `/proc/{pid}/stat` and `/proc/{pid}/status` (`pid` None: this process).
pub fn sample(pid: Option<u32>) -> io::Result<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let bad = |what| io::Error::new(io::ErrorKind::InvalidData, format!("{dir}/{what}"));
    Ok(ProcSample {
        cpu_ticks: parse_stat_cpu_ticks(&stat).ok_or_else(|| bad("stat"))?,
        rss_bytes: parse_status_rss_bytes(&status).ok_or_else(|| bad("status"))?,
    })
}

/// Clock ticks per second for /proc CPU times (USER_HZ, almost always 100).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Raises this process's RLIMIT_NOFILE soft limit to at least `wanted` descriptors if the hard
/// limit allows (and the hard limit too when privileged). Returns the soft limit in force.
pub fn raise_nofile_limit(wanted: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    // Try the hard limit first (works as root), then settle for the existing hard limit.
    let attempts = [
        libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        },
        libc::rlimit {
            rlim_cur: wanted.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        },
    ];
    for attempt in attempts {
        // SAFETY: `attempt` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &attempt) } == 0 {
            return Ok(attempt.rlim_cur);
        }
    }
    Err(io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_counted_after_the_name() {
        // A name with spaces and a ')' must not shift the fields; utime 1234, stime 56.
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 \
                    3 0 999 123456 789 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1290));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("no name here"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\tmosquitto\nVmPeak:\t  10000 kB\nVmRSS:\t    7340 kB\nThreads:\t1\n";
        assert_eq!(parse_status_rss_bytes(status), Some(7340 * 1024));
        assert_eq!(parse_status_rss_bytes("Name:\tzombie\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = sample(None).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(clock_ticks_per_sec() > 0);
        assert!(raise_nofile_limit(64).unwrap() >= 64);
    }
}

//! The process's file descriptor limit, raised at start: every connection holds a descriptor,
//! and the soft `RLIMIT_NOFILE` that a shell or a service manager hands out is often 1,024,
//! which a few hundred browsers exhaust. The hard limit is what the operator allows; the soft
//! one is only a default that a process may raise up to it, as Go's runtime and nginx's
//! `worker_rlimit_nofile` do.

use crate::logging;

/// Raises the soft descriptor limit to the hard limit, and logs the limit in force.
pub fn raise_limit() {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            logging::warn(format_args!("cannot read the descriptor limit: {error}"));
            return;
        }
    };
    if soft >= hard {
        logging::info(format_args!("descriptor limit: {soft} (the hard limit)"));
        return;
    }
    // `increase_nofile_limit` stays within the hard limit (and within macOS's per-process
    // maximum, which the hard limit may exceed).
    match rlimit::increase_nofile_limit(hard) {
        Ok(raised) => logging::info(format_args!(
            "descriptor limit: raised from {soft} to {raised} (hard limit {hard})"
        )),
        Err(error) => logging::warn(format_args!(
            "descriptor limit: {soft}; cannot raise it to the hard limit {hard}: {error}"
        )),
    }
}

//! The endpoints every peer serves, checked on each peer's server before a smoke run measures it:
//! `/` answers `ok`, `/block?ms=N` and `/work?us=N` take at least their N, and every answer names
//! its worker (`x-hermes-worker`). The smoke's scenarios send only `/`, so a peer whose heavy
//! routes were missing or did nothing would pass them.

use std::time::{Duration, Instant};

use crate::bench::Bench;
use crate::load;
use crate::peer::{Peer, Server};

/// Each endpoint asked for, and the least time its answer may take.
const PROBES: [(&str, Duration); 3] = [
    ("/", Duration::ZERO),
    ("/block?ms=20", Duration::from_millis(20)),
    ("/work?us=5000", Duration::from_micros(5000)),
];

/// How long an answer may take.
const LIMIT: Duration = Duration::from_secs(5);

impl Bench {
    /// Starts each peer's server (as it starts for the scenarios, without a scenario's mode) and
    /// asks it for each endpoint; returns what went wrong, one line per failure.
    pub fn check_endpoints(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for &peer in &self.peers {
            if let Err(e) = self.check_peer(peer) {
                failures.push(format!("{peer}: {e}"));
            }
        }
        failures
    }

    fn check_peer(&self, peer: Peer) -> Result<(), String> {
        let bin = self.binary(peer)?;
        let logs = self.out.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let log = logs.join(format!("endpoints-{peer}.log"));
        let server = Server::start(bin, peer, self.workers, &log, &[], self.server_cpus.as_ref())
            .map_err(|e| e.to_string())?;
        self.rt.block_on(async {
            for (path, least) in PROBES {
                let started = Instant::now();
                let (body, worker) =
                    load::get_once(server.addr, path, LIMIT).await.map_err(|e| format!("{path}: {e}"))?;
                check(path, &body, worker.as_deref(), started.elapsed(), least)?;
            }
            Ok(())
        })
    }
}

/// One answer: the worker named, `/`'s body, and no heavy route answered sooner than its work.
fn check(
    path: &str,
    body: &str,
    worker: Option<&str>,
    took: Duration,
    least: Duration,
) -> Result<(), String> {
    if worker.is_none_or(str::is_empty) {
        return Err(format!("{path}: no x-hermes-worker header"));
    }
    if path == "/" && body.trim() != "ok" {
        return Err(format!("/: answered {body:?}, not ok"));
    }
    if took < least {
        return Err(format!("{path}: answered in {took:?}, sooner than the work asked for"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_without_its_worker_body_or_work_is_refused() {
        let ms = Duration::from_millis;
        assert!(check("/", "ok\n", Some("0"), ms(1), Duration::ZERO).is_ok());
        assert!(check("/", "ok", None, ms(1), Duration::ZERO).unwrap_err().contains("x-hermes-worker"));
        assert!(check("/", "nope", Some("1"), ms(1), Duration::ZERO).is_err());
        assert!(check("/block?ms=20", "unblocked", Some("1"), ms(25), ms(20)).is_ok());
        assert!(
            check("/block?ms=20", "blocked 20 ms", Some("1"), ms(2), ms(20)).unwrap_err().contains("sooner")
        );
    }
}

//! `veltix ping`: PING frames and their round-trip times, as ping(8) shows them.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::driver::AnyClient;
use clap::Args;

use crate::common::{millis, parse_positive_secs, parse_secs, stop_channel, ConnectArgs};
use crate::exit::{CliError, FAILURE, TIMEOUT};

/// Arguments of `veltix ping`.
#[derive(Debug, Clone, Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Stop after N pings (default: until Ctrl-C).
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Seconds between pings.
    #[arg(short = 'i', long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    pub interval: Duration,
    /// Seconds to wait for each PONG.
    #[arg(short = 'W', long, value_name = "SECS", default_value = "5", value_parser = parse_positive_secs)]
    pub timeout: Duration,
}

/// Round-trip statistics (ping(8)'s summary).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RttStats {
    /// Pings sent.
    pub transmitted: u64,
    /// Round-trip times of the PONGs received, in milliseconds.
    pub rtts_ms: Vec<f64>,
}

impl RttStats {
    /// Records one ping's outcome.
    pub fn record(&mut self, rtt: Option<Duration>) {
        self.transmitted += 1;
        if let Some(d) = rtt {
            self.rtts_ms.push(d.as_secs_f64() * 1e3);
        }
    }

    /// PONGs received.
    pub fn received(&self) -> u64 {
        self.rtts_ms.len() as u64
    }

    /// `3 transmitted, 3 received, 0% packet loss`.
    pub fn counts_line(&self) -> String {
        let loss = if self.transmitted == 0 {
            0.0
        } else {
            100.0 * (self.transmitted - self.received()) as f64 / self.transmitted as f64
        };
        let loss = if loss.fract() == 0.0 {
            format!("{loss:.0}")
        } else {
            format!("{loss:.1}")
        };
        format!(
            "{} transmitted, {} received, {loss}% packet loss",
            self.transmitted,
            self.received()
        )
    }

    /// `rtt min/avg/max/mdev = 0.081/0.102/0.123/0.017 ms`, if any PONG came back.
    pub fn rtt_line(&self) -> Option<String> {
        let n = self.rtts_ms.len() as f64;
        if self.rtts_ms.is_empty() {
            return None;
        }
        let min = self.rtts_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rtts_ms.iter().copied().fold(0.0, f64::max);
        let avg = self.rtts_ms.iter().sum::<f64>() / n;
        let sq = self.rtts_ms.iter().map(|x| x * x).sum::<f64>() / n;
        let mdev = (sq - avg * avg).max(0.0).sqrt();
        Some(format!(
            "rtt min/avg/max/mdev = {min:.3}/{avg:.3}/{max:.3}/{mdev:.3} ms"
        ))
    }
}

/// Pings until `-c N` or Ctrl-C, then prints the summary.
pub fn run(args: &PingArgs) -> Result<(), CliError> {
    let (_tx, stop) = stop_channel();
    let client = args.connect.connect()?;
    let peer = args.connect.peer_name(&client);
    let result = ping_loop(args, &client, &peer, &stop);
    client.disconnect();
    result
}

fn ping_loop(
    args: &PingArgs,
    client: &AnyClient,
    peer: &str,
    stop: &std::sync::mpsc::Receiver<()>,
) -> Result<(), CliError> {
    let target = &args.connect.target;
    match client.tls_info() {
        Some(tls) => println!("PING {target} ({peer}): Veltix PING frames over {tls}"),
        None => println!("PING {target} ({peer}): Veltix PING frames"),
    }
    let started = Instant::now();
    let mut stats = RttStats::default();
    let mut lost_connection = false;
    for seq in 1.. {
        let rtt = client.ping(Some(args.timeout)).ok();
        stats.record(rtt);
        match rtt {
            Some(d) => println!("reply from {peer}: seq={seq} time={} ms", millis(d)),
            None if !client.is_connected() => {
                println!("connection to {peer} lost: seq={seq}");
                lost_connection = true;
                break;
            }
            None => println!(
                "no reply from {peer}: seq={seq} (timeout after {})",
                crate::common::secs(args.timeout)
            ),
        }
        if args.count.is_some_and(|c| seq >= c) {
            break;
        }
        match stop.recv_timeout(args.interval) {
            Err(RecvTimeoutError::Timeout) => {}
            // Ctrl-C / SIGTERM (or no handler at all): stop and summarise.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    println!();
    println!("--- {target} veltix ping statistics ---");
    println!(
        "{}, time {}ms",
        stats.counts_line(),
        started.elapsed().as_millis()
    );
    if let Some(line) = stats.rtt_line() {
        println!("{line}");
    }
    if lost_connection {
        return Err(CliError::new(
            FAILURE,
            format!("connection to {peer} closed"),
        ));
    }
    if stats.received() == 0 {
        return Err(CliError::new(TIMEOUT, format!("no PONG from {peer}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines() {
        let mut s = RttStats::default();
        s.record(Some(Duration::from_micros(100)));
        s.record(None);
        s.record(Some(Duration::from_micros(300)));
        assert_eq!(
            s.counts_line(),
            "3 transmitted, 2 received, 33.3% packet loss"
        );
        assert_eq!(
            s.rtt_line().unwrap(),
            "rtt min/avg/max/mdev = 0.100/0.200/0.300/0.100 ms"
        );
        assert!(RttStats::default().rtt_line().is_none());
        assert_eq!(
            RttStats::default().counts_line(),
            "0 transmitted, 0 received, 0% packet loss"
        );
    }
}

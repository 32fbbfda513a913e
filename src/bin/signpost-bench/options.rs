//! The command line. Every run is bounded: by `--duration` (or the work it is given) and by
//! `--max-messages`, and it only accepts a server on the loopback interface.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use lexopt::prelude::*;

pub const USAGE: &str = "\
usage: signpost-bench <relay|idle|churn|storm|abuse> [options]

common:
  --url URL            server (loopback only)          [http://127.0.0.1:8000]
  --receive-url URL    relay: where receivers open their streams and polls, e.g. a second
                       instance sharing a Redis store   [--url]
  --json               print the report as JSON instead of a summary
  --threads N          generator worker threads         [2]
  --server-pid PID     read the server's memory from /proc/PID/status

relay:
  --transport sse|poll receive on SSE or by long-polling [sse]
  --broadcast          send to the whole room (to=null) instead of one peer
  --rooms N            rooms                            [200]
  --peers N            peers per room                   [2]
  --senders N          peers that send (spread over rooms) [64]
  --in-flight K        POSTs in flight per sender       [1]
  --batch B            messages per POST                [1]
  --size BYTES         bytes of data per message (about: with its sequence number and time stamp) [100]
  --rate R             messages/s offered in all (open loop); 0 = as fast as possible [0]
  --warmup SECS        sent but not measured            [2]
  --duration SECS      measured                         [10]
  --max-messages N     stop sending after N messages    [20000000]

idle:
  --streams N          SSE streams to hold              [1000]
  --peers N            peers per room                   [16]
  --concurrency C      streams opening at once          [256]
  --hold SECS          how long to hold them open       [5]

churn:
  --rooms N            rooms                            [100]
  --workers N          concurrent join+leave loops      [32]
  --duration SECS      how long                         [10]

storm (starts and restarts the server itself, on the port of --url):
  --peers N            peers, in rooms of 4, streams open [2000]
  --server-bin PATH    the signpost binary to run with ROCKET_PROFILE=bench
                       [signpost, next to this program]

abuse (a server on its default profile; one attack shape per run, see docs/BENCHMARKS.md):
  --shape S            memory, connections, rooms or listing   [memory]
  --addresses N        attacking client addresses, 127.0.0.2 … [1]
  --duration SECS      how long the attack is held, once set up [40]
  --peers N            memory, rooms: peers per address         [1000]
  --connections N      connections: trickling connections per address [2000]
  --rss-cap-mib M      stop the shape when the server's RSS passes this [6144]
  --max-rooms N        the server's max_rooms, to say how many addresses exhaust it [10000]
  --room ROOM          listing: the invite-only room to look at  [abuse-listing]
  --join-token TOKEN   listing: a join token for ROOM, so that it has a peer to look at
  --server-pid PID     is needed for RSS and descriptors
";

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// The server's address; always a loopback address.
    pub server: SocketAddr,
    /// Where relay receivers connect: the same server, or another instance on the same store.
    pub receive_server: SocketAddr,
    pub json: bool,
    pub threads: usize,
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum Mode {
    Relay(Relay),
    Idle(Idle),
    Churn(Churn),
    Storm(Storm),
    Abuse(Abuse),
}

/// The attack an abuse run reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Messages sent to peers that never acknowledge them, and answers never read.
    Memory,
    /// Connections that trickle a request body a byte at a time.
    Connections,
    /// One peer in each of as many rooms as the server lets one address open.
    Rooms,
    /// An invite-only room's listing, asked for without a credential.
    Listing,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Memory => "memory",
            Shape::Connections => "connections",
            Shape::Rooms => "rooms",
            Shape::Listing => "listing",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Abuse {
    pub shape: Shape,
    /// Attacking client addresses, 127.0.0.2 onwards (at most 200: the fresh client that
    /// measures latency is 127.0.1.1).
    pub addresses: usize,
    pub duration: Duration,
    pub peers: usize,
    pub connections: usize,
    /// Server RSS in MiB past which the shape stops, so that a run cannot take the machine down.
    pub rss_cap_mib: u64,
    pub max_rooms: u64,
    pub room: String,
    pub join_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Poll,
}

#[derive(Debug, Clone)]
pub struct Relay {
    pub transport: Transport,
    pub broadcast: bool,
    pub rooms: usize,
    pub peers: usize,
    pub senders: usize,
    pub in_flight: usize,
    pub batch: usize,
    pub size: usize,
    /// Messages per second offered in all; `None` is closed-loop (as fast as answers come).
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_messages: u64,
}

#[derive(Debug, Clone)]
pub struct Idle {
    pub streams: usize,
    pub peers: usize,
    pub concurrency: usize,
    pub hold: Duration,
}

#[derive(Debug, Clone)]
pub struct Churn {
    pub rooms: usize,
    pub workers: usize,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct Storm {
    pub peers: usize,
    /// The server binary the storm starts, stops with SIGTERM and starts again.
    pub server_bin: PathBuf,
}

pub fn parse() -> Result<Options, String> {
    parse_from(std::env::args_os().skip(1)).map_err(|error| error.to_string())
}

fn parse_from(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<Options, lexopt::Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut mode_name: Option<String> = None;
    let mut url = String::from("http://127.0.0.1:8000");
    let mut receive_url = None;
    let mut json = false;
    let mut threads = 2;
    let mut server_pid = None;

    let mut relay = Relay {
        transport: Transport::Sse,
        broadcast: false,
        rooms: 200,
        peers: 2,
        senders: 64,
        in_flight: 1,
        batch: 1,
        size: 100,
        rate: None,
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(10),
        max_messages: 20_000_000,
    };
    let mut idle = Idle {
        streams: 1000,
        peers: 16,
        concurrency: 256,
        hold: Duration::from_secs(5),
    };
    let mut churn = Churn {
        rooms: 100,
        workers: 32,
        duration: Duration::from_secs(10),
    };
    let mut server_bin = None;
    let mut abuse = Abuse {
        shape: Shape::Memory,
        addresses: 1,
        duration: Duration::from_secs(40),
        peers: 1000,
        connections: 2000,
        rss_cap_mib: 6144,
        max_rooms: 10_000,
        room: "abuse-listing".into(),
        join_token: None,
    };
    let mut rooms = None;
    let mut peers = None;
    let mut duration = None;

    while let Some(arg) = parser.next()? {
        match arg {
            Value(value) if mode_name.is_none() => mode_name = Some(value.string()?),
            Long("url") => url = parser.value()?.string()?,
            Long("receive-url") => receive_url = Some(parser.value()?.string()?),
            Long("json") => json = true,
            Long("threads") => threads = parser.value()?.parse()?,
            Long("server-pid") => server_pid = Some(parser.value()?.parse()?),
            Long("transport") => {
                relay.transport = match parser.value()?.string()?.as_str() {
                    "sse" => Transport::Sse,
                    "poll" => Transport::Poll,
                    other => return Err(format!("--transport is sse or poll, not {other}").into()),
                }
            }
            Long("broadcast") => relay.broadcast = true,
            Long("rooms") => rooms = Some(parser.value()?.parse()?),
            Long("peers") => peers = Some(parser.value()?.parse()?),
            Long("senders") => relay.senders = parser.value()?.parse()?,
            Long("in-flight") => relay.in_flight = parser.value()?.parse()?,
            Long("batch") => relay.batch = parser.value()?.parse()?,
            Long("size") => relay.size = parser.value()?.parse()?,
            Long("rate") => {
                let rate: f64 = parser.value()?.parse()?;
                relay.rate = (rate > 0.0).then_some(rate);
            }
            Long("warmup") => relay.warmup = seconds(parser.value()?.parse()?)?,
            Long("duration") => duration = Some(seconds(parser.value()?.parse()?)?),
            Long("max-messages") => relay.max_messages = parser.value()?.parse()?,
            Long("streams") => idle.streams = parser.value()?.parse()?,
            Long("concurrency") => idle.concurrency = parser.value()?.parse()?,
            Long("hold") => idle.hold = seconds(parser.value()?.parse()?)?,
            Long("workers") => churn.workers = parser.value()?.parse()?,
            Long("server-bin") => server_bin = Some(PathBuf::from(parser.value()?)),
            Long("shape") => {
                abuse.shape = match parser.value()?.string()?.as_str() {
                    "memory" => Shape::Memory,
                    "connections" => Shape::Connections,
                    "rooms" => Shape::Rooms,
                    "listing" => Shape::Listing,
                    other => {
                        return Err(format!(
                            "--shape is memory, connections, rooms or listing, not {other}"
                        )
                        .into())
                    }
                }
            }
            Long("addresses") => abuse.addresses = parser.value()?.parse()?,
            Long("connections") => abuse.connections = parser.value()?.parse()?,
            Long("rss-cap-mib") => abuse.rss_cap_mib = parser.value()?.parse()?,
            Long("max-rooms") => abuse.max_rooms = parser.value()?.parse()?,
            Long("room") => abuse.room = parser.value()?.string()?,
            Long("join-token") => abuse.join_token = Some(parser.value()?.string()?),
            Long("help") | Short('h') => return Err(USAGE.into()),
            _ => return Err(arg.unexpected()),
        }
    }

    let mode = match mode_name.as_deref() {
        Some("relay") => {
            relay.rooms = rooms.unwrap_or(relay.rooms);
            relay.peers = peers.unwrap_or(relay.peers);
            relay.duration = duration.unwrap_or(relay.duration);
            check(relay.rooms >= 1, "--rooms must be at least 1")?;
            check(relay.peers >= 2, "--peers must be at least 2")?;
            check(
                (1..=relay.rooms * relay.peers).contains(&relay.senders),
                "--senders must be between 1 and rooms × peers",
            )?;
            check(relay.in_flight >= 1, "--in-flight must be at least 1")?;
            check((1..=64).contains(&relay.batch), "--batch is 1 to 64")?;
            Mode::Relay(relay)
        }
        Some("idle") => {
            idle.peers = peers.unwrap_or(idle.peers);
            check(idle.streams >= 1, "--streams must be at least 1")?;
            check(idle.peers >= 1, "--peers must be at least 1")?;
            check(idle.concurrency >= 1, "--concurrency must be at least 1")?;
            Mode::Idle(idle)
        }
        Some("churn") => {
            churn.rooms = rooms.unwrap_or(churn.rooms);
            churn.duration = duration.unwrap_or(churn.duration);
            check(churn.rooms >= 1, "--rooms must be at least 1")?;
            check(churn.workers >= 1, "--workers must be at least 1")?;
            Mode::Churn(churn)
        }
        Some("storm") => {
            let peers = peers.unwrap_or(2000);
            check(peers >= 1, "--peers must be at least 1")?;
            let server_bin = match server_bin {
                Some(path) => path,
                None => std::env::current_exe()
                    .map_err(|error| format!("where is this program? {error}"))?
                    .with_file_name("signpost"),
            };
            Mode::Storm(Storm { peers, server_bin })
        }
        Some("abuse") => {
            abuse.peers = peers.unwrap_or(abuse.peers);
            abuse.duration = duration.unwrap_or(abuse.duration);
            check(
                (1..=200).contains(&abuse.addresses),
                "--addresses is 1 to 200",
            )?;
            check(
                abuse.peers >= 2 && abuse.peers.is_multiple_of(2),
                "--peers is an even number, at least 2",
            )?;
            check(abuse.connections >= 1, "--connections must be at least 1")?;
            check(abuse.rss_cap_mib >= 1, "--rss-cap-mib must be at least 1")?;
            Mode::Abuse(abuse)
        }
        Some(other) => return Err(format!("unknown mode {other:?}").into()),
        None => return Err("a mode is required: relay, idle, churn, storm or abuse".into()),
    };
    check(threads >= 1, "--threads must be at least 1")?;
    Ok(Options {
        mode,
        server: loopback(&url)?,
        receive_server: loopback(receive_url.as_deref().unwrap_or(&url))?,
        json,
        threads,
        server_pid,
    })
}

fn check(condition: bool, message: &str) -> Result<(), lexopt::Error> {
    if condition {
        Ok(())
    } else {
        Err(message.into())
    }
}

/// A bounded, non-negative number of seconds: no run goes on for more than an hour.
fn seconds(value: f64) -> Result<Duration, lexopt::Error> {
    check(
        value.is_finite() && (0.0..=3600.0).contains(&value),
        "a duration is 0 to 3600 seconds",
    )?;
    Ok(Duration::from_secs_f64(value))
}

/// The socket address of `url`, which must be `http://` on a loopback address: a load
/// generator never sends its traffic anywhere else.
fn loopback(url: &str) -> Result<SocketAddr, lexopt::Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let address = authority
        .to_socket_addrs()
        .map_err(|error| format!("--url {url}: {error}"))?
        .next()
        .ok_or_else(|| format!("--url {url} resolves to nothing"))?;
    match address.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Ok(address),
        IpAddr::V6(ip) if ip.is_loopback() => Ok(address),
        other => Err(format!("--url must be a loopback address, not {other}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Options, String> {
        parse_from(args.split_whitespace().map(Into::into)).map_err(|e| e.to_string())
    }

    /// Only loopback servers are accepted, so a typo cannot aim the load at another machine.
    #[test]
    fn only_loopback_servers_are_accepted() {
        assert!(parse("relay --url http://127.0.0.1:9000").is_ok());
        assert!(parse("relay --url http://localhost:9000").is_ok());
        let error = parse("relay --url http://10.0.0.1:8000").unwrap_err();
        assert!(error.contains("loopback"), "{error}");
    }

    /// Shared flags land in the mode that was chosen, and a rate of 0 means closed-loop.
    #[test]
    fn flags_apply_to_the_chosen_mode() {
        let options = parse("relay --rooms 5 --peers 3 --senders 4 --rate 0 --duration 1").unwrap();
        let Mode::Relay(relay) = options.mode else {
            panic!("relay mode")
        };
        assert_eq!((relay.rooms, relay.peers, relay.senders), (5, 3, 4));
        assert_eq!(relay.rate, None);
        assert!(
            parse("relay --senders 1000").is_err(),
            "more senders than peers"
        );
        assert!(parse("relay --duration 99999").is_err(), "unbounded run");
    }

    /// A storm has 2,000 peers unless told otherwise, and runs the server binary that sits
    /// next to the generator unless given another.
    #[test]
    fn a_storm_defaults_to_2000_peers_and_the_neighbouring_server() {
        let Mode::Storm(storm) = parse("storm").unwrap().mode else {
            panic!("storm mode")
        };
        assert_eq!(storm.peers, 2000);
        assert_eq!(storm.server_bin.file_name().unwrap(), "signpost");
        let Mode::Storm(storm) = parse("storm --peers 8 --server-bin /opt/signpost")
            .unwrap()
            .mode
        else {
            panic!("storm mode")
        };
        assert_eq!((storm.peers, storm.server_bin), (8, "/opt/signpost".into()));
        assert!(parse("storm --peers 0").is_err());
    }

    /// An abuse run attacks from 1 address for 40 s with 1,000 peers unless told otherwise,
    /// and refuses more addresses than it has loopback addresses set aside for.
    #[test]
    fn abuse_defaults_and_bounds() {
        let Mode::Abuse(abuse) = parse("abuse").unwrap().mode else {
            panic!("abuse mode")
        };
        assert_eq!(abuse.shape, Shape::Memory);
        assert_eq!((abuse.addresses, abuse.peers), (1, 1000));
        assert_eq!(abuse.duration, Duration::from_secs(40));
        let Mode::Abuse(abuse) = parse("abuse --shape rooms --addresses 10").unwrap().mode else {
            panic!("abuse mode")
        };
        assert_eq!((abuse.shape, abuse.addresses), (Shape::Rooms, 10));
        assert!(parse("abuse --addresses 201").is_err());
        assert!(parse("abuse --shape everything").is_err());
    }
}

//! The built-in STUN server (RFC 5389 Binding over UDP), opt-in with `stun_bind`: it tells each
//! client the address and port its request came from, which is all a browser needs to gather
//! server-reflexive ICE candidates. Self-hosters then need one binary for signaling and STUN;
//! relaying (TURN) stays with coturn.
//!
//! Every datagram that is not a well-formed Binding request (with the magic cookie, consistent
//! lengths and, when present, a correct FINGERPRINT) is dropped without an answer. An answer is
//! about as large as the request (a 20-byte header plus 20 bytes of attributes), so the server
//! cannot be used to amplify traffic towards a spoofed source.

use std::net::{IpAddr, SocketAddr};

use parking_lot::Mutex;
use rocket::fairing::AdHoc;
use rocket::tokio::{self, net::UdpSocket, select};

use crate::config::Config;
use crate::logging;
use crate::metrics::Metrics;

const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ERROR_CODE: u16 = 0x0009;
const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
const SOFTWARE: u16 = 0x8022;
const FINGERPRINT: u16 = 0x8028;
/// FINGERPRINT is the CRC-32 of the message XORed with this ("STUN" in ASCII).
const FINGERPRINT_XOR: u32 = 0x5354_554E;
const SOFTWARE_NAME: &[u8] = b"signpost";

/// The running STUN server's socket address, managed as Rocket state while it runs.
pub struct StunServer {
    local_addr: SocketAddr,
    /// Bound at ignite so that a taken port fails the launch; moved into the serving task at
    /// liftoff. A `Mutex` only because `take` needs `&mut` through shared state, once.
    socket: Mutex<Option<std::net::UdpSocket>>,
}

impl StunServer {
    /// The address the socket is bound to (the real port when `stun_bind` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Binds the STUN socket at ignite (failing the launch if it cannot) and serves from liftoff until
/// the server shuts down. Does nothing without `stun_bind`.
pub fn stage() -> AdHoc {
    AdHoc::try_on_ignite("signpost STUN server", |rocket| async {
        let Some(bind) = rocket.state::<Config>().and_then(|config| config.stun_bind) else {
            return Ok(rocket);
        };
        let bound = std::net::UdpSocket::bind(bind).and_then(|socket| {
            socket.set_nonblocking(true)?;
            Ok((socket.local_addr()?, socket))
        });
        let (local_addr, socket) = match bound {
            Ok(bound) => bound,
            Err(error) => {
                // Rocket's own word for this is only "launch fairing(s) failed".
                tracing::error!(target: "signpost", "cannot bind the STUN server to udp {bind}: {error}");
                return Err(rocket);
            }
        };
        let server = StunServer {
            local_addr,
            socket: Mutex::new(Some(socket)),
        };
        Ok(rocket
            .manage(server)
            .attach(AdHoc::on_liftoff("STUN serving", |rocket| {
                Box::pin(async move {
                    let (Some(server), Some(metrics)) =
                        (rocket.state::<StunServer>(), rocket.state::<Metrics>())
                    else {
                        return;
                    };
                    let Some(socket) = server.socket.lock().take() else {
                        return;
                    };
                    match UdpSocket::from_std(socket) {
                        Ok(socket) => {
                            logging::info(format_args!("STUN on udp {}", server.local_addr));
                            tokio::spawn(serve(socket, metrics.clone(), rocket.shutdown()));
                        }
                        Err(error) => {
                            logging::warn(format_args!("STUN server not started: {error}"))
                        }
                    }
                })
            })))
    })
}

/// Answers Binding requests until `shutdown`.
async fn serve(socket: UdpSocket, metrics: Metrics, mut shutdown: rocket::Shutdown) {
    // Larger than any path MTU: a longer datagram is truncated, fails the length check, and is
    // ignored like any other garbage.
    let mut buffer = [0u8; 1500];
    loop {
        let received = select! {
            received = socket.recv_from(&mut buffer) => received,
            _ = &mut shutdown => break,
        };
        let Ok((length, source)) = received else {
            // ICMP errors from an earlier send surface here on Linux; they concern one client.
            continue;
        };
        match answer(&buffer[..length], source) {
            Some(response) => {
                metrics.stun_answered();
                // A failed send concerns that one client; it can retry.
                let _ = socket.send_to(&response, source).await;
            }
            None => metrics.stun_ignored(),
        }
    }
}

/// The response to one datagram from `source`, or `None` if it is not a Binding request.
pub fn answer(request: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    if request.len() < HEADER_LEN || request[0] & 0xC0 != 0 {
        return None;
    }
    let message_type = u16::from_be_bytes([request[0], request[1]]);
    let length = usize::from(u16::from_be_bytes([request[2], request[3]]));
    let cookie = u32::from_be_bytes([request[4], request[5], request[6], request[7]]);
    if message_type != BINDING_REQUEST
        || cookie != MAGIC_COOKIE
        || length % 4 != 0
        || HEADER_LEN + length != request.len()
    {
        return None;
    }
    let transaction: [u8; 12] = request[8..20].try_into().ok()?;

    // Walk the attributes: they must tile the body exactly, and FINGERPRINT, if present, must be
    // last and correct. Comprehension-required ones (below 0x8000) are all unknown to us.
    let mut unknown = Vec::new();
    let mut offset = HEADER_LEN;
    while offset < request.len() {
        let header = request.get(offset..offset + 4)?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let value_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let padded = value_len.div_ceil(4) * 4;
        let end = offset + 4 + padded;
        if end > request.len() {
            return None;
        }
        if kind == FINGERPRINT {
            if value_len != 4 || end != request.len() {
                return None;
            }
            let expected = u32::from_be_bytes(request[offset + 4..end].try_into().ok()?);
            if crc32fast::hash(&request[..offset]) ^ FINGERPRINT_XOR != expected {
                return None;
            }
        } else if kind < 0x8000 && unknown.len() < 16 {
            unknown.push(kind);
        }
        offset = end;
    }

    let mut response = Message::new(transaction);
    if unknown.is_empty() {
        response.xor_mapped_address(source);
        response.attribute(SOFTWARE, SOFTWARE_NAME);
        Some(response.finish(BINDING_SUCCESS))
    } else {
        // 420 Unknown Attribute, naming them (RFC 5389 §7.3.1).
        let mut error = vec![0, 0, 4, 20];
        error.extend_from_slice(b"Unknown Attribute");
        response.attribute(ERROR_CODE, &error);
        let list: Vec<u8> = unknown.iter().flat_map(|kind| kind.to_be_bytes()).collect();
        response.attribute(UNKNOWN_ATTRIBUTES, &list);
        Some(response.finish(BINDING_ERROR))
    }
}

/// A response under construction: header placeholder, then attributes.
struct Message {
    bytes: Vec<u8>,
    transaction: [u8; 12],
}

impl Message {
    fn new(transaction: [u8; 12]) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&[0; HEADER_LEN]);
        Self { bytes, transaction }
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) {
        self.bytes.extend_from_slice(&kind.to_be_bytes());
        self.bytes
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(value);
        let padding = value.len().div_ceil(4) * 4 - value.len();
        self.bytes.extend(std::iter::repeat_n(0, padding));
    }

    /// The source address XORed with the magic cookie (and, for IPv6, the transaction id), so
    /// that NATs rewriting addresses they spot in payloads cannot corrupt it.
    fn xor_mapped_address(&mut self, source: SocketAddr) {
        let port = source.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let ip = match source.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let mut value = Vec::with_capacity(20);
        match ip {
            IpAddr::V4(v4) => {
                value.extend_from_slice(&[0, 0x01]);
                value.extend_from_slice(&port.to_be_bytes());
                let xored = u32::from(v4) ^ MAGIC_COOKIE;
                value.extend_from_slice(&xored.to_be_bytes());
            }
            IpAddr::V6(v6) => {
                value.extend_from_slice(&[0, 0x02]);
                value.extend_from_slice(&port.to_be_bytes());
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                key[4..].copy_from_slice(&self.transaction);
                value.extend(v6.octets().iter().zip(key).map(|(byte, k)| byte ^ k));
            }
        }
        self.attribute(XOR_MAPPED_ADDRESS, &value);
    }

    /// Fills in the header and appends FINGERPRINT.
    fn finish(mut self, message_type: u16) -> Vec<u8> {
        let with_fingerprint = (self.bytes.len() - HEADER_LEN + 8) as u16;
        self.bytes[0..2].copy_from_slice(&message_type.to_be_bytes());
        self.bytes[2..4].copy_from_slice(&with_fingerprint.to_be_bytes());
        self.bytes[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        self.bytes[8..20].copy_from_slice(&self.transaction);
        let crc = crc32fast::hash(&self.bytes) ^ FINGERPRINT_XOR;
        self.attribute(FINGERPRINT, &crc.to_be_bytes());
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Binding request with SOFTWARE and FINGERPRINT, built by our own encoder; the test
    /// against a client we did not write is `tests/stun.rs`.
    fn request(transaction: [u8; 12]) -> Vec<u8> {
        let mut message = Message::new(transaction);
        message.attribute(SOFTWARE, b"STUN test client");
        message.finish(BINDING_REQUEST)
    }

    /// RFC 5769 §2.2's sample response encodes 192.0.2.1:32853 as this XOR-MAPPED-ADDRESS value.
    #[test]
    fn xor_mapped_address_matches_rfc_5769() {
        let transaction = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let source: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let response = answer(&request(transaction), source).expect("answered");
        assert_eq!(&response[0..2], &BINDING_SUCCESS.to_be_bytes());
        assert_eq!(&response[8..20], &transaction);
        assert_eq!(
            &response[20..32],
            &[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        let fingerprint_at = response.len() - 8;
        let crc = crc32fast::hash(&response[..fingerprint_at]) ^ FINGERPRINT_XOR;
        assert_eq!(&response[fingerprint_at + 4..], &crc.to_be_bytes());
    }

    /// RFC 5769 §2.3's IPv6 sample: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
    #[test]
    fn xor_mapped_ipv6_matches_rfc_5769() {
        let transaction = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let source: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let response = answer(&request(transaction), source).expect("answered");
        assert_eq!(
            &response[20..44],
            &[
                0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3,
                0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
    }

    #[test]
    fn garbage_and_damaged_requests_get_no_answer() {
        let source: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let good = request([7; 12]);
        assert!(answer(&good, source).is_some());
        assert!(answer(b"", source).is_none());
        assert!(answer(b"GET / HTTP/1.1\r\n\r\n", source).is_none());
        for cut in 0..good.len() {
            assert!(answer(&good[..cut], source).is_none(), "truncated to {cut}");
        }
        let mut bad_fingerprint = good.clone();
        *bad_fingerprint.last_mut().unwrap() ^= 1;
        assert!(answer(&bad_fingerprint, source).is_none());
        let mut response_type = good.clone();
        response_type[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
        assert!(answer(&response_type, source).is_none());
        let mut no_cookie = good;
        no_cookie[4] ^= 0xff;
        assert!(answer(&no_cookie, source).is_none());
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_a_420() {
        let mut message = Message::new([1; 12]);
        message.attribute(0x0003, &[0, 0, 0, 6]); // CHANGE-REQUEST (RFC 5780)
        let request = message.finish(BINDING_REQUEST);
        let response = answer(&request, "127.0.0.1:9".parse().unwrap()).unwrap();
        assert_eq!(&response[0..2], &BINDING_ERROR.to_be_bytes());
        assert_eq!(&response[24..28], &[0, 0, 4, 20]);
    }
}

//! HAProxy PROXY protocol v1 (text) and v2 (binary) header at the start of a connection.
//!
//! Parsing is done by the [`ppp`] crate; this module adds the bounds (a header longer than
//! [`PROXY_V1_MAX_BYTES`] or [`PROXY_V2_MAX_BYTES`] is refused before it is buffered), checks
//! the TLVs of a v2 header (a header that lies about its length shows up here), and reduces
//! the result to the two addresses the broker uses.

use std::net::SocketAddr;

use ppp::{v1, v2, HeaderResult, PartialResult};

/// Longest v1 (text) header, CRLF included (fixed by the PROXY protocol specification).
pub const PROXY_V1_MAX_BYTES: usize = 107;
/// Longest v2 (binary) header we accept: 16 fixed bytes, the addresses and every TLV.
pub const PROXY_V2_MAX_BYTES: usize = 1024;
/// Longest header of either version: a connection buffers at most this much before the
/// header is complete.
pub const PROXY_MAX_BYTES: usize = PROXY_V2_MAX_BYTES;

const _: () = assert!(PROXY_V1_MAX_BYTES <= PROXY_MAX_BYTES);
/// Fixed part of a v2 header (signature, version/command, family/protocol, length).
const V2_FIXED_BYTES: usize = 16;

/// The addresses a proxy reported for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyInfo {
    /// The client's address (`None` for LOCAL, UNKNOWN, UNIX or unspecified families).
    pub source: Option<SocketAddr>,
    /// The address the client connected to (`None` likewise).
    pub destination: Option<SocketAddr>,
}

// ppp's v1 and v2 share these address types.
impl ProxyInfo {
    fn v4(a: &v1::IPv4) -> Self {
        Self {
            source: Some(SocketAddr::from((a.source_address, a.source_port))),
            destination: Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        }
    }

    fn v6(a: &v1::IPv6) -> Self {
        Self {
            source: Some(SocketAddr::from((a.source_address, a.source_port))),
            destination: Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        }
    }
}

/// Why a PROXY header was refused. Every variant closes the connection.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProxyError {
    /// The connection does not start with a PROXY v1 or v2 signature.
    #[error("connection does not start with a PROXY protocol header")]
    NotProxy,
    /// A v1 header that does not parse.
    #[error("invalid PROXY v1 header: {0}")]
    V1(#[source] v1::BinaryParseError),
    /// A v2 header that does not parse (or whose TLVs do not fit its stated length).
    #[error("invalid PROXY v2 header: {0}")]
    V2(#[source] v2::ParseError),
    /// A header longer than the limit for its version.
    #[error("PROXY header of {len_bytes} bytes exceeds the limit of {max_bytes}")]
    TooLong {
        /// Length the header has or announces.
        len_bytes: usize,
        /// The limit for its version.
        max_bytes: usize,
    },
}

impl ProxyError {
    /// A short, static description for logs and metrics.
    pub fn description(&self) -> &'static str {
        match self {
            ProxyError::NotProxy => "not a PROXY header",
            ProxyError::V1(_) => "invalid PROXY v1 header",
            ProxyError::V2(_) => "invalid PROXY v2 header",
            ProxyError::TooLong { .. } => "PROXY header too long",
        }
    }
}

/// PROXY protocol header parsing.
#[derive(Debug)]
pub struct ProxyHeader;

impl ProxyHeader {
    /// Parses a PROXY v1 or v2 header at the start of `buf`.
    ///
    /// `Ok(None)`: the header is incomplete, call again with more bytes (the caller never
    /// needs to buffer more than [`PROXY_MAX_BYTES`]). `Ok(Some((info, consumed)))`: the header
    /// took the first `consumed` bytes; what follows belongs to the next layer.
    pub fn parse(buf: &[u8]) -> Result<Option<(ProxyInfo, usize)>, ProxyError> {
        if let Some(&first) = buf.first() {
            // v2 starts with '\r', v1 with 'P'; anything else is not a PROXY header at all.
            if first != b'\r' && first != b'P' {
                return Err(ProxyError::NotProxy);
            }
        }
        // Bound v2 before ppp asks for more: the length field sits at bytes 14..16.
        if buf.len() >= V2_FIXED_BYTES && buf.starts_with(v2::PROTOCOL_PREFIX) {
            let len = V2_FIXED_BYTES + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            if len > PROXY_V2_MAX_BYTES {
                return Err(ProxyError::TooLong {
                    len_bytes: len,
                    max_bytes: PROXY_V2_MAX_BYTES,
                });
            }
        }
        // Dispatch on the first byte ourselves: ppp's combined parser retries a failed v2
        // header as v1, which would hide the v2 error behind "not a PROXY header".
        let result = if buf.first() == Some(&b'P') {
            // ppp's v1 parser is not safe on a prefix that ends just after a separator
            // ("... 56324 " reads as an empty port): give it the line only once the LF is in.
            match buf
                .iter()
                .take(PROXY_V1_MAX_BYTES)
                .position(|&b| b == b'\n')
            {
                Some(lf) => HeaderResult::V1(v1::Header::try_from(&buf[..=lf])),
                None if buf.len() >= PROXY_V1_MAX_BYTES => {
                    return Err(ProxyError::TooLong {
                        len_bytes: buf.len(),
                        max_bytes: PROXY_V1_MAX_BYTES,
                    })
                }
                None if b"PROXY ".starts_with(&buf[..buf.len().min(6)]) => return Ok(None),
                None => return Err(ProxyError::NotProxy),
            }
        } else {
            HeaderResult::V2(v2::Header::try_from(buf))
        };
        if result.is_incomplete() {
            if buf.len() >= PROXY_MAX_BYTES {
                return Err(ProxyError::TooLong {
                    len_bytes: buf.len(),
                    max_bytes: PROXY_MAX_BYTES,
                });
            }
            return Ok(None);
        }
        match result {
            HeaderResult::V1(Ok(header)) => {
                let consumed = header.header.len();
                debug_assert!(consumed <= PROXY_V1_MAX_BYTES);
                let info = match header.addresses {
                    v1::Addresses::Unknown => ProxyInfo::default(),
                    v1::Addresses::Tcp4(a) => ProxyInfo::v4(&a),
                    v1::Addresses::Tcp6(a) => ProxyInfo::v6(&a),
                };
                Ok(Some((info, consumed)))
            }
            HeaderResult::V1(Err(v1::BinaryParseError::Parse(v1::ParseError::InvalidPrefix))) => {
                Err(ProxyError::NotProxy)
            }
            HeaderResult::V1(Err(e)) => Err(ProxyError::V1(e)),
            HeaderResult::V2(Err(v2::ParseError::Prefix)) => Err(ProxyError::NotProxy),
            HeaderResult::V2(Err(e)) => Err(ProxyError::V2(e)),
            HeaderResult::V2(Ok(header)) => {
                let consumed = header.len();
                assert!(consumed <= PROXY_V2_MAX_BYTES, "v2 length checked above");
                // The TLVs must exactly fill the rest of the announced length.
                for tlv in header.tlvs() {
                    tlv.map_err(ProxyError::V2)?;
                }
                let info = match header.command {
                    v2::Command::Local => ProxyInfo::default(),
                    v2::Command::Proxy => match header.addresses {
                        v2::Addresses::IPv4(a) => ProxyInfo::v4(&a),
                        v2::Addresses::IPv6(a) => ProxyInfo::v6(&a),
                        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => ProxyInfo::default(),
                    },
                };
                Ok(Some((info, consumed)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v2_header(command: u8, addrs: impl Into<v2::Addresses>) -> Vec<u8> {
        v2::Builder::with_addresses(0x20 | command, v2::Protocol::Stream, addrs)
            .build()
            .unwrap()
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let h = v1::Addresses::new_tcp4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            5000,
            1883,
        );
        let text = h.to_string();
        let mut buf = text.clone().into_bytes();
        buf.extend_from_slice(b"\x10rest");
        let (info, n) = ProxyHeader::parse(&buf).unwrap().unwrap();
        assert_eq!(n, text.len());
        assert_eq!(info.source, Some("10.0.0.1:5000".parse().unwrap()));
        assert_eq!(info.destination, Some("10.0.0.2:1883".parse().unwrap()));

        let h = v1::Addresses::new_tcp6(
            Ipv6Addr::LOCALHOST,
            "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
            65535,
            8883,
        )
        .to_string();
        let text = h.as_bytes();
        let (info, n) = ProxyHeader::parse(text).unwrap().unwrap();
        assert_eq!(n, text.len());
        assert_eq!(info.source, Some("[::1]:65535".parse().unwrap()));
        assert_eq!(
            info.destination,
            Some("[2001:db8::2]:8883".parse().unwrap())
        );

        let unknown = v1::Addresses::Unknown.to_string();
        let text = unknown.as_bytes();
        let (info, n) = ProxyHeader::parse(text).unwrap().unwrap();
        assert_eq!((info, n), (ProxyInfo::default(), text.len()));
    }

    #[test]
    fn v1_every_prefix_is_incomplete() {
        let text = b"PROXY TCP4 192.168.1.10 10.0.0.2 56324 1883\r\n";
        for end in 0..text.len() {
            assert_eq!(ProxyHeader::parse(&text[..end]), Ok(None), "prefix {end}");
        }
        assert!(ProxyHeader::parse(text).unwrap().is_some());
    }

    #[test]
    fn v2_tcp4_tcp6_local() {
        let src: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let dst: SocketAddr = "192.0.2.8:8883".parse().unwrap();
        let mut buf = v2_header(1, (src, dst));
        let len = buf.len();
        buf.extend_from_slice(b"\x16\x03\x01");
        let (info, n) = ProxyHeader::parse(&buf).unwrap().unwrap();
        assert_eq!(n, len);
        assert_eq!(
            info,
            ProxyInfo {
                source: Some(src),
                destination: Some(dst)
            }
        );
        for end in 0..len {
            assert_eq!(ProxyHeader::parse(&buf[..end]), Ok(None), "prefix {end}");
        }

        let src6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 1);
        let dst6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let buf = v2_header(1, (src6, dst6));
        let (info, n) = ProxyHeader::parse(&buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(
            info,
            ProxyInfo {
                source: Some(src6),
                destination: Some(dst6)
            }
        );

        // LOCAL (health checks from the proxy itself): no addresses even if some are sent.
        let buf = v2_header(0, (src, dst));
        let (info, _) = ProxyHeader::parse(&buf).unwrap().unwrap();
        assert_eq!(info, ProxyInfo::default());
        let buf = v2_header(0, v2::Addresses::Unspecified);
        assert_eq!(
            ProxyHeader::parse(&buf).unwrap().unwrap().0,
            ProxyInfo::default()
        );
    }

    #[test]
    fn v2_with_tlvs() {
        let src: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let dst: SocketAddr = "192.0.2.8:8883".parse().unwrap();
        let buf = v2::Builder::with_addresses(0x21, v2::Protocol::Stream, (src, dst))
            .write_tlv(v2::Type::Authority, b"broker.example")
            .unwrap()
            .write_tlv(v2::Type::NoOp, &[0; 40])
            .unwrap()
            .build()
            .unwrap();
        let (info, n) = ProxyHeader::parse(&buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(info.source, Some(src));
    }

    #[test]
    fn lying_and_oversized_headers() {
        let src: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let dst: SocketAddr = "192.0.2.8:8883".parse().unwrap();
        // Length claims 4 extra bytes that are not a valid TLV (an MQTT CONNECT's start).
        let mut buf = v2_header(1, (src, dst));
        let len = u16::from_be_bytes([buf[14], buf[15]]) + 4;
        buf[14..16].copy_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&[0x10, 0xff, 0x00, 0x04]);
        assert!(matches!(ProxyHeader::parse(&buf), Err(ProxyError::V2(_))));

        // Length too small for the address family.
        let mut buf = v2_header(1, (src, dst));
        buf[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert!(matches!(ProxyHeader::parse(&buf), Err(ProxyError::V2(_))));

        // Announced length over the limit: refused at once, before the bytes arrive.
        let mut buf = v2_header(1, (src, dst));
        buf[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            ProxyHeader::parse(&buf[..16]),
            Err(ProxyError::TooLong { .. })
        ));

        // v1 without CRLF within 107 bytes.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert!(ProxyHeader::parse(&long).is_err());
        // v1 with a bad address or port.
        assert!(ProxyHeader::parse(b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n").is_err());
        assert!(ProxyHeader::parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n").is_err());
        assert!(ProxyHeader::parse(b"PROXY TCP9 1.2.3.4 1.2.3.4 1 2\r\n").is_err());
    }

    #[test]
    fn not_proxy() {
        // An MQTT CONNECT, a TLS ClientHello, an HTTP request.
        assert_eq!(
            ProxyHeader::parse(&[0x10, 0x0c, 0, 4]),
            Err(ProxyError::NotProxy)
        );
        assert_eq!(
            ProxyHeader::parse(&[0x16, 0x03, 0x01]),
            Err(ProxyError::NotProxy)
        );
        assert_eq!(
            ProxyHeader::parse(b"GET /mqtt HTTP/1.1\r\n"),
            Err(ProxyError::NotProxy)
        );
        assert_eq!(ProxyHeader::parse(b"PRIXY"), Err(ProxyError::NotProxy));
        assert!(ProxyHeader::parse(b"\r\n\r\n\0\r\nQUIX\n").is_err());
        assert_eq!(ProxyHeader::parse(b""), Ok(None));
    }
}

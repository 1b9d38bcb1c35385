//! A raw Veltix client on a blocking `std::net::TcpStream`: it does the
//! handshake by hand and then reads and writes frames only when told to, so
//! a test can make a peer that never reads (backpressure) or hold thousands
//! of idle connections without a driver client (thread, task) per socket.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use veltix_proto::frame::{Header, HEADER_LEN};
use veltix_proto::handshake::{encode_hello, parse_body};
use veltix_proto::{Frame, LocalHello, MessageType};

/// One raw connection after a completed handshake.
#[derive(Debug)]
pub struct RawPeer {
    /// The socket (blocking).
    pub stream: TcpStream,
}

fn read_handshake_message(
    s: &mut TcpStream,
) -> io::Result<serde_json::Map<String, serde_json::Value>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut body)?;
    parse_body(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl RawPeer {
    /// Connects and does the handshake (server hello, our hello, ack), with
    /// `timeout` on each read. A server that refuses (`{"error": ..}`)
    /// gives an `io::Error` of kind `ConnectionRefused` carrying the reason.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<RawPeer> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        let hello = read_handshake_message(&mut s)?;
        if let Some(e) = hello.get("error") {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                e.to_string(),
            ));
        }
        s.write_all(&encode_hello(&LocalHello::default()))?;
        let ack = read_handshake_message(&mut s)?;
        if ack.get("result").and_then(|v| v.as_str()) != Some("ok") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no ack: {ack:?}"),
            ));
        }
        Ok(RawPeer { stream: s })
    }

    /// Writes one frame.
    pub fn send(&mut self, t: MessageType, request_id: u16, payload: &[u8]) -> io::Result<()> {
        let bytes = Frame::new(t, request_id, payload.to_vec())
            .to_vec()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.stream.write_all(&bytes)
    }

    /// Reads one frame (blocking, up to the socket's read timeout).
    pub fn recv(&mut self) -> io::Result<Frame> {
        let mut h = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut h)?;
        let header = Header::parse(&h)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad frame magic"))?;
        let mut payload = vec![0u8; header.payload_len as usize];
        self.stream.read_exact(&mut payload)?;
        let mut f = Frame::new(header.message_type, header.request_id, payload);
        f.flags = header.flags;
        Ok(f)
    }

    /// Reads frames until one is not a PING (answering each PING with a
    /// PONG of the same id, as a Veltix peer must).
    pub fn recv_user(&mut self) -> io::Result<Frame> {
        loop {
            let f = self.recv()?;
            if f.message_type == MessageType::PING {
                self.send(MessageType::PONG, f.request_id, &[])?;
                continue;
            }
            return Ok(f);
        }
    }
}

/// The server half of the handshake on an accepted socket: our hello, the
/// client's hello (read and checked for JSON), the ack. The socket is then
/// left to the caller, which may never read it again (a stalled server).
pub fn serve_handshake(s: &mut TcpStream, timeout: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(timeout))?;
    s.write_all(&encode_hello(&LocalHello::default()))?;
    read_handshake_message(s)?;
    s.write_all(&veltix_proto::handshake::encode_ack())
}
